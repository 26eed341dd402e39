"""What the deep harmonizers share as model objects: validation, weights file, loading.

:mod:`harmonizers.cyclegan` and :mod:`harmonizers.stylemapper` both ship one generator
network, the working grid it runs on and the target's mean series scale, in a ``model.pt``
of the same layout (see :func:`harmonizers.nets.save_weights`). Each method adds only its
architecture and its part of the target reference. The keys keep the shipped files' order
(the target reference between ``generator`` and the domains), so saving a model writes the
same bytes whichever class assembles the dict.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
from torch import nn

from harmonizers.base import Harmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.nets import domain_name, load_state, load_weights, parse_domain, save_weights

G = TypeVar("G", bound=nn.Module)


class DeepHarmonizer(Harmonizer, Generic[G]):
    """A trained generator ``G`` applied on a ``work_mm`` grid, with the target's scale.

    ``target_scale`` is the target domain's mean series scale
    (:func:`~harmonizers.nets.series_scale`) in its own units: normalized output times it
    gives target units.
    """

    weights_file: ClassVar[str] = "model.pt"
    format_version: ClassVar[int]

    def __init__(
        self,
        *,
        generator: G,
        work_mm: float,
        target_scale: float,
        source_domain: ScannerDomain | None = None,
        target_domain: ScannerDomain | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(source_domain=source_domain, target_domain=target_domain)
        if not (np.isfinite(target_scale) and target_scale > 0):
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        if not (np.isfinite(work_mm) and work_mm > 0):
            raise ValueError(f"work_mm must be positive, got {work_mm}")
        self.generator = generator.cpu().eval()
        self.work_mm = float(work_mm)
        self.target_scale = float(target_scale)
        self.training = dict(training or {})

    @abstractmethod
    def _architecture(self) -> dict[str, Any]:
        """The generator's constructor arguments, as saved under ``architecture``."""

    @classmethod
    @abstractmethod
    def _generator(cls, architecture: dict[str, Any]) -> G:
        """A freshly built generator for a saved ``architecture`` (weights not loaded)."""

    @abstractmethod
    def _reference(self) -> dict[str, Any]:
        """The target reference as saved: everything :meth:`_reference_from` reads back."""

    @classmethod
    @abstractmethod
    def _reference_from(cls, weights: dict[str, Any]) -> dict[str, Any]:
        """Constructor keywords for the target reference of a loaded weights dict."""

    def save(self, folder: Path) -> None:
        save_weights(folder / self.weights_file, {
            "format_version": self.format_version,
            "method": self.method,
            "architecture": {**self._architecture(), "work_mm": self.work_mm},
            "generator": self.generator.state_dict(),
            **self._reference(),
            "source_domain": domain_name(self.source_domain),
            "target_domain": domain_name(self.target_domain),
            "training": self.training,
        })

    @classmethod
    def load(cls, folder: Path) -> Self:
        path = folder / cls.weights_file
        weights = load_weights(path, cls.method, cls.format_version)
        try:
            arch = weights["architecture"]
            generator = cls._generator(arch)
            load_state(generator, weights["generator"], path)
            work_mm = float(arch["work_mm"])
            return cls(
                generator=generator,
                work_mm=work_mm,
                **cls._reference_from(weights),
                source_domain=parse_domain(weights.get("source_domain")),
                target_domain=parse_domain(weights.get("target_domain")),
                training=weights.get("training"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid weights ({exc!r})") from exc
