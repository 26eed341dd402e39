"""Where the project's own files live: conf/ and the shipped models.

The project is installed editable (``pip install -e``), so paths are resolved from the
source tree. ``DICOMNODE_CONF_DIR`` and ``DICOMNODE_MODELS_DIR`` override them for sites
that keep their configuration elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The folder with node.yaml, rules.yaml and scanners/*.yaml."""
    return Path(os.environ.get("DICOMNODE_CONF_DIR", REPO_ROOT / "conf"))


def models_dir() -> Path:
    """The folder that holds one sub-folder per shipped harmonization model."""
    return Path(os.environ.get("DICOMNODE_MODELS_DIR", REPO_ROOT / "harmonizers" / "models"))
