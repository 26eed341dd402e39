"""Weights as a small JSON file, for methods whose model is a handful of numbers.

The file names the method and a format version, so a model folder of another method or an
older format is refused rather than misread; the source and target domains travel with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harmonizers.base import Harmonizer
from harmonizers.domain import ScannerDomain


def save_json_weights(
    harmonizer: Harmonizer, folder: Path, format_version: int, fields: dict[str, Any]
) -> None:
    """Write ``fields`` with the method, format version and domains to the weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        "format_version": format_version,
        "method": harmonizer.method,
        **fields,
        "source_domain": harmonizer.source_domain.name if harmonizer.source_domain else None,
        "target_domain": harmonizer.target_domain.name if harmonizer.target_domain else None,
    }
    (folder / harmonizer.weights_file).write_text(json.dumps(weights, indent=2) + "\n")


def load_json_weights(
    cls: type[Harmonizer], folder: Path, format_version: int
) -> tuple[dict[str, Any], ScannerDomain | None, ScannerDomain | None]:
    """The weights file's fields and its (source, target) domains; ValueError names the file."""
    path = folder / cls.weights_file
    try:
        weights = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if weights.get("format_version") != format_version or weights.get("method") != cls.method:
        raise ValueError(
            f"{path}: expected format_version {format_version} of method {cls.method!r}, "
            f"got {weights.get('format_version')!r} of {weights.get('method')!r}"
        )
    try:
        source, target = (
            ScannerDomain.parse(name) if name is not None else None
            for name in (weights.get("source_domain"), weights.get("target_domain"))
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return weights, source, target
