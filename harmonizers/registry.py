"""The harmonization methods the node knows, by the name model cards and rules use.

The node's entry point is :func:`load_model`; see :mod:`harmonizers.model_store` for the
model folder and its card.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from harmonizers.base import Harmonizer, ModelError
from harmonizers.model_store import LoadedModel, load_model_folder

# Method name -> the class that implements it, imported when first asked for: a node whose
# rules name only histogram or physics never loads torch (about a second and 200 MB, in
# each of its processes).
_CLASSES: dict[str, str] = {
    "histogram": "harmonizers.histogram:HistogramHarmonizer",
    "cyclegan": "harmonizers.cyclegan:CycleGANHarmonizer",
    "stylemapper": "harmonizers.stylemapper:StyleMapperHarmonizer",
    "physics": "harmonizers.physics:PhysicsHarmonizer",
}


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_CLASSES)


def harmonizer_class(method: str) -> type[Harmonizer]:
    """The class registered as ``method``; ModelError if there is none."""
    try:
        module, name = _CLASSES[method].split(":")
    except KeyError:
        raise ModelError(
            f"unknown harmonization method {method!r}; available: {', '.join(available_methods())}"
        ) from None
    cls: type[Harmonizer] = getattr(importlib.import_module(module), name)
    return cls


def load_model(method: str, name: str, *, root: Path | None = None) -> LoadedModel:
    """Load and verify model folder ``name`` (under ``root``, default ``models_dir()``).

    Raises ModelError when ``method`` is not registered, or for anything
    :func:`~harmonizers.model_store.load_model_folder` rejects.
    """
    return load_model_folder(harmonizer_class(method), name, root=root)
