"""What the deep harmonizers share as model objects: validation, weights file, loading.

:mod:`harmonizers.cyclegan` and :mod:`harmonizers.stylemapper` both ship one generator
network, the working grid it runs on, the target's mean series scale, the sharpening filter
(:mod:`harmonizers.sharpness`) and the signal-equation model that gives each voxel's
enhancement at the target's protocol (:class:`harmonizers.physics.PhysicsHarmonizer`, under
``kinetics``), in a ``model.pt`` of the same layout (see
:func:`harmonizers.nets.save_weights`). Each method adds only its architecture and its part
of the target reference. The keys keep one order (the target reference between
``generator`` and the domains), so saving a model writes the same bytes whichever class
assembles the dict.

Inference runs on a CUDA GPU when torch sees one, else on the CPU
(:func:`harmonizers.nets.inference_device`; ``DICOMNODE_INFERENCE_DEVICE=cpu`` forces the
CPU); weights are saved from the CPU either way, so a model file does not depend on where it
was made or run.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import torch
from torch import nn

from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.nets import (
    Enhancement,
    domain_name,
    inference_device,
    load_state,
    load_weights,
    parse_domain,
    save_weights,
)
from harmonizers.physics import PhysicsHarmonizer
from harmonizers.sharpness import UnsharpFilter, fit_unsharp, radial_log_spectrum

G = TypeVar("G", bound=nn.Module)


class DeepHarmonizer(Harmonizer, Generic[G]):
    """A trained generator ``G`` applied on a ``work_mm`` grid, with the target's scale.

    ``target_scale`` is the target domain's mean series scale
    (:func:`~harmonizers.nets.series_scale`) in its own units: normalized output times it
    gives target units. ``sharpening`` is applied last, as bounded gains on the image and,
    where it sharpens, on each phase's rise (:func:`~harmonizers.nets.harmonize_phases`);
    identity unless fitted (:meth:`sharpened`). ``kinetics`` re-synthesizes each voxel's
    enhancement at the target's protocol from the series' own (TR, flip angle and field
    from its headers): the networks shape the pre-contrast only.
    ``device``: where the generator runs (see :func:`~harmonizers.nets.inference_device`;
    None picks it).
    """

    weights_file: ClassVar[str] = "model.pt"
    format_version: ClassVar[int]

    def __init__(
        self,
        *,
        generator: G,
        work_mm: float,
        target_scale: float,
        kinetics: PhysicsHarmonizer,
        sharpening: UnsharpFilter | None = None,
        source_domain: ScannerDomain | None = None,
        target_domain: ScannerDomain | None = None,
        training: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(source_domain=source_domain, target_domain=target_domain)
        if not (np.isfinite(target_scale) and target_scale > 0):
            raise ValueError(f"target_scale must be positive, got {target_scale}")
        if not (np.isfinite(work_mm) and work_mm > 0):
            raise ValueError(f"work_mm must be positive, got {work_mm}")
        self.device = inference_device(device)
        self.generator = generator.to(self.device).eval()
        self.work_mm = float(work_mm)
        self.target_scale = float(target_scale)
        self.kinetics = kinetics
        self.sharpening = sharpening or UnsharpFilter()
        self.training = dict(training or {})

    def output_spectrum(self, source: Sequence[Acquisition]) -> np.ndarray:
        """Radial log spectrum of this model's harmonized pre-contrast, unsharpened."""
        plain = self.with_sharpening(UnsharpFilter())
        return radial_log_spectrum([plain.harmonize(acq)[0] for acq in source])

    def with_sharpening(self, sharpening: UnsharpFilter) -> Self:
        """This model with another sharpening filter (the networks are shared, not copied)."""
        model = copy.copy(self)
        model.sharpening = sharpening
        return model

    def on(self, device: str | torch.device) -> Self:
        """This model running on ``device`` (a copy: this one keeps its own generator)."""
        model = copy.copy(self)
        model.device = inference_device(device)
        model.generator = copy.deepcopy(self.generator).to(model.device)
        return model

    def sharpened(self, source: Sequence[Acquisition], target: Sequence[Acquisition]) -> Self:
        """This model with the filter that brings its output's power spectrum on ``source``
        closest to the ``target`` series' (unpaired: different patients on each side)."""
        spectrum = radial_log_spectrum([acq.pre_contrast for acq in target])
        return self.with_sharpening(fit_unsharp(self.output_spectrum(source), spectrum))

    def enhancement(self, acquisition: Acquisition) -> Enhancement:
        """Each voxel's enhancement factors at the target's protocol, block by block, for a
        checked acquisition; ModelError when the series lacks TR, flip angle or field."""
        return self.kinetics.resynthesis(acquisition).enhancement

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
        on_cpu = self.generator if self.device.type == "cpu" else self.on("cpu").generator
        save_weights(folder / self.weights_file, {
            "format_version": self.format_version,
            "method": self.method,
            "architecture": {**self._architecture(), "work_mm": self.work_mm},
            "generator": on_cpu.state_dict(),
            "sharpening": self.sharpening.as_dict(),
            **self._reference(),
            "kinetics": self.kinetics.fields(),
            "source_domain": domain_name(self.source_domain),
            "target_domain": domain_name(self.target_domain),
            "training": self.training,
        })

    @classmethod
    def load(cls, folder: Path) -> Self:
        path = folder / cls.weights_file
        weights = load_weights(path, cls.method, cls.format_version)
        device = inference_device()  # outside the try: a bad device is not bad weights
        try:
            arch = weights["architecture"]
            generator = cls._generator(arch)
            load_state(generator, weights["generator"], path)
            work_mm = float(arch["work_mm"])
            source_domain = parse_domain(weights.get("source_domain"))
            target_domain = parse_domain(weights.get("target_domain"))
            return cls(
                generator=generator,
                work_mm=work_mm,
                sharpening=UnsharpFilter(**weights["sharpening"]),
                **cls._reference_from(weights),
                kinetics=PhysicsHarmonizer.from_fields(weights["kinetics"], source_domain,
                                                       target_domain),
                source_domain=source_domain,
                target_domain=target_domain,
                training=weights.get("training"),
                device=device,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid weights ({exc!r})") from exc
