"""Content/style harmonization with the target style given at run time (method ``stylemapper``).

MUNIT (Huang et al., ECCV 2018) splits an image into a domain-invariant *content* code
and a low-dimensional *style* code; a decoder renders content in any style, the style
entering through adaptive instance normalization (AdaIN, Huang & Belongie 2017). The lab's
StyleMapper applied this idea to breast MRI harmonization: a style encoder reads one or a
few images of the target scanner, so a trained model can map to a scanner it never saw by
being shown some of its images.

Here, as in :mod:`harmonizers.cyclegan`, the decoder does not synthesize pixels: the
pre-contrast goes through one monotone transfer, one smooth gain field predicted from it
(2.5D) and one sharpening filter, and every phase keeps the enhancement the signal equation
gives at the target's protocol (see :mod:`harmonizers.nets`):

* the **smooth log-gain field** comes from the content code, decoded by AdaIN residual
  blocks whose parameters an MLP computes from the *target* style code;
* the **monotone transfer** ``f`` is a histogram match from the source scanner's pooled
  tissue quantiles to the target style's, plus a correction of its slopes that an MLP
  computes from the *source* style code (the input series' own) and the *target* style
  code: the contrast change depends on where the series comes from and where it goes.
  The match is the scanners', not the series': matching each series' own histogram to the
  target's forced every patient onto one histogram shape (fibroglandular density is a
  patient's, not a scanner's) and cost similarity on held-out virtual patients
  (harmonizers/README.md, "StyleMapper");
* the **sharpening** filter brings the power spectrum of the model's output on its
  training source to the style reference's (:mod:`harmonizers.sharpness`); the model keeps
  that output spectrum, so a new style reference refits the filter.

A series' style is its style code (mean over up to 12 slices). Training is multi-domain:
each step picks a source and a target series per batch item from two different training
scanners, with a multi-domain PatchGAN, self-reconstruction, cycle, style- and
content-reconstruction and mutual-information losses. (A first version had the
MLP predict the whole transfer; in CPU-sized trainings the style codes of different
scanners stayed too alike for it to leave the identity, hence the explicit match.)

Target style at run time: the weights file holds a *style reference*, the target style
code, tissue quantiles, mean series scale, protocol and sharpening computed from
target-scanner series when the model was made (so the node needs no images), and the
source scanner's tissue quantiles.
:meth:`StyleMapperHarmonizer.restyled` computes a new reference from other target-scanner
acquisitions, for a scanner the model did not see in training, and returns a harmonizer
that maps there; saved, it is a new model folder with its own SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harmonizers.acquisition import Acquisition
from harmonizers.base import common_domain
from harmonizers.deep import DeepHarmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.nets import (
    QUANTILE_LEVELS,
    TISSUE_LEVEL,
    AdaINResBlock,
    Encoder,
    PatchDiscriminator,
    bounded_log_gain,
    check_acquisition,
    conv,
    harmonize_phases,
    log_gain_head,
    log_l1,
    lsgan,
    match_logits,
    monotone_transfer,
    mutual_information,
    native_tissue_quantiles,
    normalized,
    pooled_tissue_quantiles,
    series_scale,
    to_log,
    work_volume,
)
from harmonizers.physics import PhysicsHarmonizer
from harmonizers.sharpness import RADIAL_BINS, UnsharpFilter, fit_unsharp, radial_log_spectrum
from harmonizers.training import (
    Trainer,
    TrainingConfig,
    adam,
    crop_batch,
    prepare_volumes,
    run_training,
)

# Slices per series the style encoder reads: evenly spread through the slab.
STYLE_SLICES = 12
# Tissue quantiles in the style code (5 % to 95 %).
STYLE_QUANTILES = 9


@dataclass(frozen=True)
class StyleMapperConfig(TrainingConfig):
    """Hyperparameters. The defaults are the shipped model's (about 4 min on one core)."""

    steps: int = 1500
    batch: int = 6
    crop: int = 64
    width: int = 12
    blocks: int = 1
    style_dim: int = 8
    knots: int = 16
    work_mm: float = 3.5
    lr: float = 2e-4
    lambda_recon: float = 10.0
    lambda_cycle: float = 10.0
    lambda_style: float = 1.0
    lambda_content: float = 1.0
    lambda_mi: float = 1.0
    seed: int = 0


class StyleEncoder(nn.Module):
    """One normalized slice (n, 1, h, w) -> style code (n, style_dim): global statistics.

    Two global descriptors, neither of which knows where things are: strided
    convolutions with global average pooling (texture, shading statistics), and the
    slice's tissue quantiles (its normalized histogram shape, the strongest scanner
    signature). With convolutions alone the codes of all scanners stayed nearly equal in
    short CPU trainings, so the transfer could not depend on them.
    """

    def __init__(self, width: int, style_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv(1, width, 3, 2), nn.LeakyReLU(0.2),
            conv(width, 2 * width, 3, 2), nn.LeakyReLU(0.2),
            conv(2 * width, 2 * width, 3, 2), nn.LeakyReLU(0.2),
        )
        self.register_buffer("levels", torch.linspace(0.05, 0.95, STYLE_QUANTILES),
                             persistent=False)
        self.out = nn.Linear(2 * width + STYLE_QUANTILES, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.net(to_log(x)).mean(dim=(2, 3))
        return self.out(torch.cat([pooled, self.tissue_quantiles(x)], dim=1))

    def tissue_quantiles(self, x: torch.Tensor) -> torch.Tensor:
        """Log quantiles of each slice's tissue voxels (above TISSUE_LEVEL), (n, Q)."""
        rows = []
        levels = self.get_buffer("levels")
        for image in x.reshape(x.shape[0], -1):
            tissue = image[image > TISSUE_LEVEL]
            if tissue.numel() < STYLE_QUANTILES:  # an all-air slice has no histogram shape
                rows.append(torch.zeros_like(levels))
            else:
                rows.append(to_log(torch.quantile(tissue, levels)))
        return torch.stack(rows)


class StyleGenerator(nn.Module):
    """Content encoder + AdaIN gain decoder + style-conditioned monotone transfer."""

    def __init__(self, width: int, blocks: int, style_dim: int, knots: int) -> None:
        super().__init__()
        self.knots = knots
        self.content = Encoder(3, width, blocks)
        channels = self.content.out_channels
        self.decoder = AdaINResBlock(channels)
        self.adain_mlp = nn.Sequential(
            nn.Linear(style_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 4 * channels)
        )
        self.head = log_gain_head(channels)
        self.transfer_mlp = nn.Sequential(
            nn.Linear(2 * style_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, knots)
        )
        # The MLP corrects the run-time histogram match; it starts at no correction.
        last = self.transfer_mlp[2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.style = StyleEncoder(width, style_dim)

    def transfer_logits(self, matched: torch.Tensor, source_style: torch.Tensor,
                        target_style: torch.Tensor) -> torch.Tensor:
        """The histogram-match logits (n, K) plus a learned, style-conditioned correction."""
        return matched + self.transfer_mlp(torch.cat([source_style, target_style], dim=1))

    def log_gain(self, work_stack: torch.Tensor, target_style: torch.Tensor,
                 size: tuple[int, int], tissue_only: bool = False) -> torch.Tensor:
        """(n, 3, h, w) working-grid stack -> (n, 1, *size) log gain in the target style;
        ``tissue_only`` at inference (see :func:`~harmonizers.nets.bounded_log_gain`)."""
        content = self.content(to_log(work_stack))
        raw = self.head(self.decoder(content, self.adain_mlp(target_style)))
        return bounded_log_gain(raw, size, work_stack if tissue_only else None)

    def forward(self, stack: torch.Tensor, matched: torch.Tensor, source_style: torch.Tensor,
                target_style: torch.Tensor) -> torch.Tensor:
        """Translate a normalized working-grid stack from one style to another."""
        gain = torch.exp(self.log_gain(stack, target_style, (stack.shape[-2], stack.shape[-1])))
        logits = self.transfer_logits(matched, source_style, target_style)
        return monotone_transfer(stack, logits) * gain


def _style_slices(n_slices: int) -> np.ndarray:
    """Indices of up to STYLE_SLICES slices spread evenly, skipping the slab's ends."""
    if n_slices <= STYLE_SLICES:
        return np.arange(n_slices)
    return np.linspace(0, n_slices - 1, STYLE_SLICES + 2).round().astype(int)[1:-1]


def series_style(style: StyleEncoder, pre_contrast: np.ndarray, spacing_yx: tuple[float, float],
                 work_mm: float) -> torch.Tensor:
    """One series' style code (style_dim,): the mean over its style slices of its
    pre-contrast (z, y, x, native units), read on the working grid as in training."""
    picked = np.ascontiguousarray(pre_contrast[_style_slices(len(pre_contrast))])
    work = work_volume(normalized(picked), spacing_yx, work_mm)
    device = next(style.parameters()).device
    with torch.inference_mode():
        return style(torch.from_numpy(work)[:, None].to(device)).mean(0).cpu()


class _StyleTrainer(Trainer):
    method = "stylemapper"

    def __init__(self, config: StyleMapperConfig, domains: list[list[np.ndarray]]) -> None:
        super().__init__(config.seed)
        self.cfg = config
        self.config = {**config.resumable(), "domains": len(domains)}
        self.domains = domains
        self.gen = StyleGenerator(config.width, config.blocks, config.style_dim,
                                  config.knots).to(self.device)
        # Each scanner's pooled tissue quantiles: the transfer matches scanners.
        self.quantiles = [pooled_tissue_quantiles(volumes) for volumes in domains]
        self.disc = PatchDiscriminator(outputs=len(domains)).to(self.device)
        self.modules = {"generator": self.gen, "discriminator": self.disc}
        self.optimizers = {
            "g": adam(self.gen.parameters(), config.lr),
            "d": adam(self.disc.parameters(), config.lr),
        }

    def _series(self, labels: np.ndarray) -> list[int]:
        """A random training series of each item's domain."""
        return [int(self.rng.integers(len(self.domains[int(d)]))) for d in labels]

    def _crops(self, labels: np.ndarray, series: list[int]) -> torch.Tensor:
        return torch.cat([
            crop_batch(self.rng, [self.domains[int(d)][v]], 1, self.cfg.crop, self.device)
            for d, v in zip(labels, series, strict=True)
        ])

    def _styles(self, labels: np.ndarray, series: list[int]) -> torch.Tensor:
        """Style codes of one whole working-grid slice of each item's series.

        Whole slices, as at run time (crops' histograms vary with where they fall).
        """
        codes = []
        for d, v in zip(labels, series, strict=True):
            volume = self.domains[int(d)][v]
            z = int(self.rng.integers(volume.shape[0] // 4, max(3 * volume.shape[0] // 4, 1)))
            codes.append(self.gen.style(torch.from_numpy(volume[z][None, None]).to(self.device)))
        return torch.cat(codes)

    def _matched(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """Histogram-match logits from each item's scanner a to its scanner b, (n, K)."""
        rows = [match_logits(self.quantiles[int(i)], self.quantiles[int(j)], self.cfg.knots)
                for i, j in zip(a, b, strict=True)]
        return torch.from_numpy(np.stack(rows)).to(self.device)

    def _adversarial(self, images: torch.Tensor, labels: torch.Tensor, real: bool
                     ) -> torch.Tensor:
        """LSGAN on each item's own domain channel of the multi-domain PatchGAN."""
        maps = self.disc(images)
        return lsgan(maps[torch.arange(len(labels), device=maps.device), labels], real)

    def step(self) -> dict[str, float]:
        cfg, gen = self.cfg, self.gen
        n = len(self.domains)
        a = self.rng.integers(n, size=cfg.batch)
        b = (a + self.rng.integers(1, n, size=cfg.batch)) % n  # b != a
        va, vb = self._series(a), self._series(b)
        x_a, x_b = self._crops(a, va), self._crops(b, vb)
        label_a = torch.from_numpy(a).to(self.device)
        label_b = torch.from_numpy(b).to(self.device)
        centre = slice(1, 2)
        s_a, s_b = self._styles(a, va), self._styles(b, vb)
        x_ab = gen(x_a, self._matched(a, b), s_a, s_b)
        recon = log_l1(gen(x_a, self._matched(a, a), s_a, s_a), x_a)
        cycle = log_l1(gen(x_ab, self._matched(b, a), s_b, s_a), x_a)
        style = F.l1_loss(gen.style(x_ab[:, centre]), s_b.detach())
        content = F.l1_loss(gen.content(to_log(x_ab)), gen.content(to_log(x_a)).detach())
        structure = 1 - mutual_information(x_a[:, centre], x_ab[:, centre])
        adversarial = self._adversarial(x_ab[:, centre], label_b, True)
        loss_g = (adversarial + cfg.lambda_recon * recon + cfg.lambda_cycle * cycle
                  + cfg.lambda_style * style + cfg.lambda_content * content
                  + cfg.lambda_mi * structure)
        self.update("g", loss_g)

        loss_d = 0.5 * (self._adversarial(x_b[:, centre], label_b, True)
                        + self._adversarial(x_ab[:, centre].detach(), label_b, False)
                        + self._adversarial(x_a[:, centre], label_a, True))
        self.update("d", loss_d)
        return {"adv": adversarial.item(), "rec": recon.item(), "cyc": cycle.item(),
                "sty": style.item(), "d": loss_d.item()}


class StyleMapperHarmonizer(DeepHarmonizer[StyleGenerator]):
    """A trained style mapper plus the style reference of the target scanner it maps to.

    ``target_style`` (style_dim,), ``target_quantiles`` (the target's pooled normalized
    tissue quantiles at :data:`~harmonizers.nets.QUANTILE_LEVELS`), ``target_scale`` (its
    mean series scale in its own units), ``kinetics`` (its protocol and tissue levels) and
    ``sharpening`` are the style reference; see :meth:`restyled`. ``source_quantiles`` are
    the source scanner's, the other end of the transfer's histogram match.
    ``source_spectrum`` is the radial log spectrum of the model's unsharpened output on its
    training source, from which :meth:`restyled` fits the sharpening (None: no sharpening).
    """

    method: ClassVar[str] = "stylemapper"
    format_version: ClassVar[int] = 3

    def __init__(
        self,
        *,
        generator: StyleGenerator,
        work_mm: float,
        target_style: torch.Tensor,
        target_quantiles: np.ndarray,
        source_quantiles: np.ndarray,
        target_scale: float,
        kinetics: PhysicsHarmonizer,
        sharpening: UnsharpFilter | None = None,
        source_spectrum: np.ndarray | None = None,
        source_domain: ScannerDomain | None = None,
        target_domain: ScannerDomain | None = None,
        training: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        style_dim = generator.style.out.out_features
        target_style = torch.as_tensor(target_style, dtype=torch.float32).detach().clone()
        if target_style.shape != (style_dim,) or not torch.isfinite(target_style).all():
            raise ValueError(f"target_style must be {style_dim} finite values")
        quantiles = {side: np.asarray(values, dtype=np.float64) for side, values in
                     (("target", target_quantiles), ("source", source_quantiles))}
        for side, values in quantiles.items():
            if (values.shape != QUANTILE_LEVELS.shape or not np.isfinite(values).all()
                    or values[0] <= 0 or np.any(np.diff(values) < 0)):
                raise ValueError(f"{side}_quantiles must be {QUANTILE_LEVELS.size} positive, "
                                 "non-decreasing values")
        if source_spectrum is not None:
            source_spectrum = np.asarray(source_spectrum, dtype=np.float64)
            if source_spectrum.shape != (RADIAL_BINS,) or not np.isfinite(source_spectrum).all():
                raise ValueError(f"source_spectrum must be {RADIAL_BINS} finite values")
        super().__init__(generator=generator, work_mm=work_mm, target_scale=target_scale,
                         kinetics=kinetics,
                         sharpening=sharpening, source_domain=source_domain,
                         target_domain=target_domain, training=training, device=device)
        self.target_style = target_style
        self.target_quantiles = quantiles["target"]
        self.source_quantiles = quantiles["source"]
        self.source_spectrum = source_spectrum

    @classmethod
    def fit(
        cls,
        source: Sequence[Acquisition],
        target: Sequence[Acquisition],
        *,
        config: StyleMapperConfig | None = None,
        others: Sequence[Sequence[Acquisition]] = (),
        kinetics: PhysicsHarmonizer | None = None,
        checkpoint: Path | None = None,
        progress: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> Self:
        """Train on the source, the target and any ``others`` domains (one list each).

        More domains teach the style encoder what varies between scanners; the result
        maps ``source``'s domain to ``target``'s (the style reference is computed from
        ``target``). ``kinetics``: the signal-equation model of the enhancement, as for
        :meth:`harmonizers.cyclegan.CycleGANHarmonizer.fit` (its target side is refitted
        to every style reference). Raises ValueError for a side that mixes domains or
        input the model could not harmonize.
        """
        cfg = config or StyleMapperConfig()
        source_domain = common_domain(source, "source")
        sides = [list(source), list(target), *(list(o) for o in others)]
        for index, side in enumerate(sides[1:]):
            common_domain(side, "target" if index == 0 else f"others[{index - 1}]")
        prepared = [prepare_volumes(side, cfg.work_mm, cls.method)[0] for side in sides]
        trainer = _StyleTrainer(cfg, prepared)
        run_training(trainer, steps=cfg.steps, checkpoint=checkpoint, progress=progress,
                     on_step=on_step)
        untargeted = cls(
            generator=trainer.gen,
            work_mm=cfg.work_mm,
            target_style=torch.zeros(cfg.style_dim),
            target_quantiles=QUANTILE_LEVELS / 50.0,
            source_quantiles=native_tissue_quantiles([acq.pre_contrast for acq in source]),
            target_scale=1.0,
            kinetics=kinetics or PhysicsHarmonizer.fit(source, target),
            source_domain=source_domain,
            target_domain=None,
            training={**asdict(cfg), "device": trainer.device.type,
                      "domains": [_side_name(side) for side in sides],
                      "series": [len(side) for side in sides]},
        )
        return untargeted.restyled(target, source=source)

    def restyled(self, references: Sequence[Acquisition],
                 source_domain: ScannerDomain | None = None,
                 source: Sequence[Acquisition] = (),
                 source_agent: str | None = None) -> Self:
        """This model mapping to the scanner of ``references`` (one domain, any number of
        series; one may do): their mean style code, pooled tissue quantiles and mean scale
        become the reference, the enhancement is re-synthesized at their protocol (TR, flip
        angle and field from their headers), and the sharpening is refitted to their
        spectrum.

        ``source_domain`` optionally re-labels which scanner the model is used for;
        ``source``, series of that scanner, gives its tissue quantiles and re-measures the
        output spectrum the sharpening is fitted from (otherwise those kept from training
        are used); ``source_agent``,
        the contrast agent of that scanner's series where they do not name it (otherwise
        the model's).
        """
        target_domain = common_domain(references, "style reference")
        styles, scales = [], []
        for acq in references:
            check_acquisition(acq, self.work_mm, self.method)
            styles.append(series_style(self.generator.style, acq.pre_contrast,
                                       acq.spacing_mm[1:], self.work_mm))
            scales.append(series_scale(acq.pre_contrast))
        model = type(self)(
            generator=self.generator,
            work_mm=self.work_mm,
            target_style=torch.stack(styles).mean(0),
            target_quantiles=native_tissue_quantiles([acq.pre_contrast for acq in references]),
            source_quantiles=(native_tissue_quantiles([acq.pre_contrast for acq in source])
                              if source else self.source_quantiles),
            target_scale=float(np.mean(scales)),
            kinetics=PhysicsHarmonizer.to_target(
                references, source_agent=source_agent or self.kinetics.source_agent,
                target_agent=self.kinetics.target.agent,
                source_domain=source_domain or self.source_domain),
            source_spectrum=self.source_spectrum,
            source_domain=source_domain or self.source_domain,
            target_domain=target_domain,
            training={**self.training, "style_reference_series": len(references)},
            device=self.device,
        )
        if source:
            model.source_spectrum = model.output_spectrum(source)
        if model.source_spectrum is None:
            return model
        target_spectrum = radial_log_spectrum([acq.pre_contrast for acq in references])
        return model.with_sharpening(fit_unsharp(model.source_spectrum, target_spectrum))

    def _harmonize(self, acquisition: Acquisition) -> np.ndarray:
        check_acquisition(acquisition, self.work_mm, self.method)
        gen = self.generator
        source_style = series_style(gen.style, acquisition.pre_contrast,
                                    acquisition.spacing_mm[1:], self.work_mm)
        matched = torch.from_numpy(match_logits(self.source_quantiles, self.target_quantiles,
                                                gen.knots))
        device = self.device
        target = self.target_style[None].to(device)
        with torch.inference_mode():
            logits = gen.transfer_logits(matched[None].to(device),
                                         source_style[None].to(device), target)[0]

        def log_gain(stacks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return gen.log_gain(stacks, target.expand(stacks.shape[0], -1), size,
                                tissue_only=True)

        return harmonize_phases(acquisition, method=self.method, work_mm=self.work_mm,
                                log_gain=log_gain, logits=logits,
                                enhancement=self.enhancement,
                                sharpening=self.sharpening,
                                target_scale=self.target_scale, device=device)

    def _architecture(self) -> dict[str, Any]:
        gen = self.generator
        return {
            "width": gen.content.stem.out_channels,
            "blocks": len(gen.content.blocks),
            "style_dim": gen.style.out.out_features,
            "knots": gen.knots,
        }

    @classmethod
    def _generator(cls, architecture: dict[str, Any]) -> StyleGenerator:
        return StyleGenerator(int(architecture["width"]), int(architecture["blocks"]),
                              int(architecture["style_dim"]), int(architecture["knots"]))

    def _reference(self) -> dict[str, Any]:
        return {
            "target_style": self.target_style,
            "target_quantiles": torch.from_numpy(self.target_quantiles),
            "source_quantiles": torch.from_numpy(self.source_quantiles),
            "target_scale": self.target_scale,
            "source_spectrum": (None if self.source_spectrum is None
                                else torch.from_numpy(self.source_spectrum)),
        }

    @classmethod
    def _reference_from(cls, weights: dict[str, Any]) -> dict[str, Any]:
        return {
            "target_style": weights["target_style"],
            "target_quantiles": np.asarray(weights["target_quantiles"]),
            "source_quantiles": np.asarray(weights["source_quantiles"]),
            "target_scale": float(weights["target_scale"]),
            "source_spectrum": (None if weights["source_spectrum"] is None
                                else np.asarray(weights["source_spectrum"])),
        }


def _side_name(side: Sequence[Acquisition]) -> str:
    domain = side[0].domain if side else None
    return domain.name if domain is not None else "unknown"
