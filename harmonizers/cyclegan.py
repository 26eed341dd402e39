"""Unpaired CycleGAN harmonization that keeps DCE kinetics by construction (method ``cyclegan``).

CycleGAN (Zhu et al., ICCV 2017) learns two generators, source -> target and target ->
source, from unpaired images: adversarial losses make each output look like the other
domain, a cycle-consistency loss makes the round trip return the input, and an identity
loss keeps a generator from changing images already in its output domain. The lab's breast
DCE CycleGAN added a mutual-information loss between input and output so that anatomy and
lesions are kept, and used a PatchGAN discriminator (Isola et al., CVPR 2017) with a small
receptive field so that it judges tissue contrast, not anatomy.

This implementation keeps those losses but constrains the generator (see
:mod:`harmonizers.nets`): it does not synthesize pixels. It learns one monotone intensity
transfer of the pre-contrast and predicts, from the pre-contrast slice and its two
neighbours (2.5D), a smooth low-resolution gain field: one factor per voxel, shared by
every phase. Each voxel's enhancement is carried to the target's protocol by the signal
equation (:class:`harmonizers.physics.PhysicsHarmonizer`), and one sharpening filter fitted
by matching power spectra acts on the image and, where it sharpens, on each phase's rise,
as bounded gains. Hence

* one mapping serves every phase: a voxel's rise keeps its sign in every phase (rising
  stays rising), and its enhancement changes as the target scanner's TR, flip angle, field
  and relaxivity change it, whatever the networks learned;
* no structure can be hallucinated (a monotone map of each voxel's own value, a smooth
  positive field, bounded gains from one linear filter of the series' own images);
* inference is one small CNN pass per slice on a coarse working grid: fast on a CPU.

Two adaptations to that generator: the transfers start from a histogram match of the two
domains' pooled tissue quantiles at full resolution (adversarial training alone barely moved
them in CPU-sized runs), and the identity loss asks only that a generator add no shading to
an image already in its output domain (asking ``G(y) == y`` would pull the global transfer
back to the identity for source images too).

Everything is float32 end to end; nothing is quantized to 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from harmonizers.acquisition import Acquisition
from harmonizers.base import common_domain
from harmonizers.deep import DeepHarmonizer
from harmonizers.nets import (
    Encoder,
    PatchDiscriminator,
    bounded_log_gain,
    harmonize_phases,
    initial_slope_logits,
    log_gain_head,
    log_l1,
    lsgan,
    match_logits,
    monotone_transfer,
    mutual_information,
    native_tissue_quantiles,
    to_log,
)
from harmonizers.physics import PhysicsHarmonizer
from harmonizers.training import (
    Trainer,
    TrainingConfig,
    adam,
    crop_batch,
    prepare_volumes,
    run_training,
)


@dataclass(frozen=True)
class CycleGANConfig(TrainingConfig):
    """Hyperparameters. The defaults are the shipped models' (about 4 min on one core).

    ``width``/``blocks``/``knots``/``work_mm`` define the network and are saved with the
    weights; the rest only shape training.
    """

    steps: int = 1500
    batch: int = 6
    crop: int = 64
    width: int = 12
    blocks: int = 1
    knots: int = 16
    work_mm: float = 3.5
    lr: float = 2e-4
    lambda_cycle: float = 10.0
    lambda_identity: float = 1.0
    lambda_mi: float = 1.0
    lambda_shading: float = 1.0
    seed: int = 0


class GainGenerator(nn.Module):
    """Pre-contrast 2.5D stack -> per-voxel gain; the translated image is stack x gain.

    A ResNet-lite encoder to a quarter-resolution log-gain field (smooth by construction:
    bilinear upsampling of a coarse map) plus one global monotone transfer (``knots``
    positive slopes).
    """

    def __init__(self, width: int, blocks: int, knots: int) -> None:
        super().__init__()
        self.encoder = Encoder(3, width, blocks)
        self.head = log_gain_head(self.encoder.out_channels)
        self.transfer_logits = nn.Parameter(initial_slope_logits(knots))

    def log_gain(self, work_stack: torch.Tensor, size: tuple[int, int],
                 tissue_only: bool = False) -> torch.Tensor:
        """(n, 3, h, w) normalized stack on the working grid -> (n, 1, *size) log gain;
        ``tissue_only`` at inference (see :func:`~harmonizers.nets.bounded_log_gain`)."""
        raw = self.head(self.encoder(to_log(work_stack)))
        return bounded_log_gain(raw, size, work_stack if tissue_only else None)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Translate a normalized (n, 3, h, w) working-grid stack; the centre slice's gain
        serves all three (the field is smooth across 3 slices), so cycles can be chained."""
        gain = torch.exp(self.log_gain(stack, (stack.shape[-2], stack.shape[-1])))
        return monotone_transfer(stack, self.transfer_logits) * gain


class _CycleTrainer(Trainer):
    method = "cyclegan"

    def __init__(
        self, config: CycleGANConfig, source: list[np.ndarray], target: list[np.ndarray],
        quantiles: tuple[np.ndarray, np.ndarray],
    ) -> None:
        super().__init__(config.seed)
        self.cfg = config
        self.config = config.resumable()
        self.source, self.target = source, target
        self.g_st = GainGenerator(config.width, config.blocks, config.knots).to(self.device)
        self.g_ts = GainGenerator(config.width, config.blocks, config.knots).to(self.device)
        with torch.no_grad():
            source_q, target_q = quantiles
            self.g_st.transfer_logits.copy_(
                torch.from_numpy(match_logits(source_q, target_q, config.knots)))
            self.g_ts.transfer_logits.copy_(
                torch.from_numpy(match_logits(target_q, source_q, config.knots)))
        self.d_t = PatchDiscriminator().to(self.device)
        self.d_s = PatchDiscriminator().to(self.device)
        self.modules = {"g_st": self.g_st, "g_ts": self.g_ts, "d_t": self.d_t, "d_s": self.d_s}
        self.optimizers = {
            "g": adam([*self.g_st.parameters(), *self.g_ts.parameters()], config.lr),
            "d": adam([*self.d_t.parameters(), *self.d_s.parameters()], config.lr),
        }

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        x = crop_batch(self.rng, self.source, cfg.batch, cfg.crop, self.device)
        y = crop_batch(self.rng, self.target, cfg.batch, cfg.crop, self.device)
        centre = slice(1, 2)
        fake_t, fake_s = self.g_st(x), self.g_ts(y)
        adversarial = (lsgan(self.d_t(fake_t[:, centre]), True)
                       + lsgan(self.d_s(fake_s[:, centre]), True))
        cycle = log_l1(self.g_ts(fake_t), x) + log_l1(self.g_st(fake_s), y)
        # Identity, adapted: the transfer is global, so asking G_st(y) == y would pull it
        # back to the identity for source images too; the shading a generator adds to an
        # image already in its output domain is what must stay zero.
        size = (cfg.crop, cfg.crop)
        identity = (self.g_st.log_gain(y, size).abs().mean()
                    + self.g_ts.log_gain(x, size).abs().mean())
        # The same L1 on the shading each generator adds to the images it translates, so
        # the field is used only where it pays: unpenalized, the adversarial loss made it a
        # second, regional contrast change (on held-out virtual GE 1.5 T patients it moved
        # FGT density by about 12 pp and made NRMSE worse than no field at all).
        shading = (self.g_st.log_gain(x, size).abs().mean()
                   + self.g_ts.log_gain(y, size).abs().mean())
        structure = ((1 - mutual_information(x[:, centre], fake_t[:, centre]))
                     + (1 - mutual_information(y[:, centre], fake_s[:, centre])))
        loss_g = (adversarial + cfg.lambda_cycle * cycle + cfg.lambda_identity * identity
                  + cfg.lambda_shading * shading + cfg.lambda_mi * structure)
        self.update("g", loss_g)

        loss_d = 0.5 * (
            lsgan(self.d_t(y[:, centre]), True)
            + lsgan(self.d_t(fake_t[:, centre].detach()), False)
            + lsgan(self.d_s(x[:, centre]), True)
            + lsgan(self.d_s(fake_s[:, centre].detach()), False)
        )
        self.update("d", loss_d)
        return {"adv": adversarial.item(), "cyc": cycle.item(), "idt": identity.item(),
                "shd": shading.item(), "mi": structure.item(), "d": loss_d.item()}


class CycleGANHarmonizer(DeepHarmonizer[GainGenerator]):
    """The source -> target generator of a trained CycleGAN, the same for every phase."""

    method: ClassVar[str] = "cyclegan"
    format_version: ClassVar[int] = 3

    @classmethod
    def fit(
        cls,
        source: Sequence[Acquisition],
        target: Sequence[Acquisition],
        *,
        config: CycleGANConfig | None = None,
        kinetics: PhysicsHarmonizer | None = None,
        checkpoint: Path | None = None,
        progress: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> Self:
        """Train on unpaired pre-contrast slices of both domains, then fit the sharpening
        filter on the trained generator's output (see :mod:`harmonizers.sharpness`).

        ``kinetics``: the signal-equation model of the enhancement; by default fitted on
        ``source`` and ``target`` (:meth:`PhysicsHarmonizer.fit`, gadobutrol unless the
        series name their agent). ``checkpoint``: a file to save training state to and
        resume from (see :func:`harmonizers.training.run_training`). Raises ValueError for
        mixed domains or input the model could not harmonize (NaNs, one phase, unusable
        geometry, target series without TR, flip angle or field).
        """
        cfg = config or CycleGANConfig()
        source_domain = common_domain(source, "source")
        target_domain = common_domain(target, "target")
        kinetics = kinetics or PhysicsHarmonizer.fit(source, target)
        source_volumes, _ = prepare_volumes(source, cfg.work_mm, cls.method)
        target_volumes, target_scales = prepare_volumes(target, cfg.work_mm, cls.method)
        quantiles = (native_tissue_quantiles([acq.pre_contrast for acq in source]),
                     native_tissue_quantiles([acq.pre_contrast for acq in target]))
        trainer = _CycleTrainer(cfg, source_volumes, target_volumes, quantiles)
        run_training(trainer, steps=cfg.steps, checkpoint=checkpoint, progress=progress,
                     on_step=on_step)
        model = cls(
            generator=trainer.g_st,
            work_mm=cfg.work_mm,
            target_scale=float(np.mean(target_scales)),
            kinetics=kinetics,
            source_domain=source_domain,
            target_domain=target_domain,
            training={**asdict(cfg), "device": trainer.device.type,
                      "source_series": len(source), "target_series": len(target)},
        )
        return model.sharpened(source, target)

    def _harmonize(self, acquisition: Acquisition) -> np.ndarray:
        return harmonize_phases(
            acquisition, method=self.method, work_mm=self.work_mm,
            log_gain=partial(self.generator.log_gain, tissue_only=True),
            logits=self.generator.transfer_logits,
            enhancement=self.enhancement,
            sharpening=self.sharpening, target_scale=self.target_scale, device=self.device)

    def _architecture(self) -> dict[str, Any]:
        return {
            "width": self.generator.encoder.stem.out_channels,
            "blocks": len(self.generator.encoder.blocks),
            "knots": int(self.generator.transfer_logits.numel()),
        }

    @classmethod
    def _generator(cls, architecture: dict[str, Any]) -> GainGenerator:
        return GainGenerator(int(architecture["width"]), int(architecture["blocks"]),
                             int(architecture["knots"]))

    def _reference(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale}

    @classmethod
    def _reference_from(cls, weights: dict[str, Any]) -> dict[str, Any]:
        return {"target_scale": float(weights["target_scale"])}
