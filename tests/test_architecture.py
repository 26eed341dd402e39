"""Data flows one way: harmonizers and evaluation never import the network code."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["harmonizers.registry", "harmonizers.train", "evaluation.cli",
     "evaluation.virtual_scanner.cohort"],
)
def test_harmonizers_and_evaluation_do_not_import_the_network(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.startswith('pynetdicom') or m in "
        "('dicomnode.network', 'dicomnode.delivery', 'dicomnode.pipeline', 'dicomnode.node')); "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
