"""The harmonization methods the node knows, by the name model cards and rules use.

The node's entry point is :func:`load_model`; see :mod:`harmonizers.model_store` for the
model folder and its card.
"""

from __future__ import annotations

from pathlib import Path

from harmonizers.base import Harmonizer, ModelError
from harmonizers.cyclegan import CycleGANHarmonizer
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import LoadedModel, load_model_folder
from harmonizers.physics import PhysicsHarmonizer
from harmonizers.stylemapper import StyleMapperHarmonizer

# Later methods (cyclegan, stylemapper, physics) register here with their ``method`` name.
HARMONIZERS: dict[str, type[Harmonizer]] = {
    cls.method: cls for cls in (HistogramHarmonizer, CycleGANHarmonizer, StyleMapperHarmonizer,
                                PhysicsHarmonizer)
}


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(HARMONIZERS)


def harmonizer_class(method: str) -> type[Harmonizer]:
    """The class registered as ``method``; ModelError if there is none."""
    try:
        return HARMONIZERS[method]
    except KeyError:
        raise ModelError(
            f"unknown harmonization method {method!r}; available: {', '.join(available_methods())}"
        ) from None


def load_model(method: str, name: str, *, root: Path | None = None) -> LoadedModel:
    """Load and verify model folder ``name`` (under ``root``, default ``models_dir()``).

    Raises ModelError when ``method`` is not registered, or for anything
    :func:`~harmonizers.model_store.load_model_folder` rejects.
    """
    return load_model_folder(harmonizer_class(method), name, root=root)
