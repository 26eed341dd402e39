"""Layers and the phase-consistent application shared by the deep harmonizers.

Both deep methods (:mod:`harmonizers.cyclegan`, :mod:`harmonizers.stylemapper`) learn one
mapping of the pre-contrast and carry it unchanged to every phase, the design rule that keeps
DCE kinetics (the lab's breast DCE CycleGAN work saw an image-to-image network applied phase
by phase distort enhancement curves). In *normalized* units (each series divided by its own
robust scale, :func:`series_scale`, which removes the arbitrary per-exam receive gain)::

    y[p] = f(x[0]) * exp(b) * e[p],   out[p] = y[p] * K(m) / m,   m = mean over p of y[p]

(with ``e[p]`` itself sharpened by ``K`` where ``K`` sharpens; below)

* ``f``, a **monotone per-intensity transfer** of the pre-contrast: a piecewise-linear
  increasing function with ``f(0) = 0`` (contrast between fat, FGT and muscle, like a
  learned histogram map);
* ``b``, a **smooth log-gain field** predicted from the pre-contrast by a small CNN at a
  quarter of a fixed physical working grid and upsampled bilinearly (B1+ and receive-coil
  shading differ between scanners and are smooth);
* ``e[p]``, each voxel's **enhancement at the target's protocol**, its re-synthesized
  signal relative to its pre-contrast by the spoiled-gradient-echo equation
  (:meth:`harmonizers.physics.Resynthesis.enhancement`; ``e[0] = 1``). Scanners differ in
  relative enhancement (field, TR, flip angle, relaxivity), which the pre-contrast alone
  cannot tell; a transfer of each phase's own value, as ``f`` was first applied, moved
  lesion enhancement the wrong way for two of three source scanners on the virtual scanner;
* ``K``, one in-plane **unsharp-mask filter** (:mod:`harmonizers.sharpness`), fitted by
  matching power spectra: scanners differ in sharpness, which neither ``f`` nor ``b`` can
  change. It is applied as one bounded per-voxel gain, ``K(m) / m`` of the mean over phases
  ``m``, shared by every phase, and, where it sharpens, to each phase's rise ``e[p] - 1`` as
  well, as a gain per voxel and phase held in [1/2, 2]: a blurrier source spread a small
  lesion's enhancement into its surroundings, and the same filter gathers it back.

``f`` and ``b`` are one factor per voxel for every phase, so they cancel in percent
enhancement: each voxel's enhancement curve is ``e``'s, sharpened by ``K``. In target
units, times the target's mean scale. The networks see the pre-contrast resampled to a
fixed in-plane working grid (``work_mm``), so a model trained on coarse simulated grids
applies to any matrix: only the gain field is computed there; ``f``, ``e`` and ``K`` act
on the full-resolution voxels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harmonizers.acquisition import Acquisition
from harmonizers.base import ModelError
from harmonizers.domain import ScannerDomain
from harmonizers.sharpness import UnsharpFilter

# The transfer's knots span normalized values 0..X_MAX; the series scale puts breast tissue
# near 1, so enhanced voxels (several times their pre-contrast) lie within or just beyond.
X_MAX = 4.0
# The log-gain field is bounded to +-log(4): scanner shading differs by tens of percent, not
# by orders of magnitude; the bound keeps an untrained or adversarially pushed net sane.
MAX_LOG_GAIN = math.log(4.0)
# Normalized values above this are tissue (the series scale puts tissue near 1, air near 0).
TISSUE_LEVEL = 0.3
# Enhancement (a voxel's rise over its pre-contrast, as a fraction of it) below which its
# ratio to the sharpened enhancement says nothing: about twice the noise of that fraction in
# tissue at the FGT SNR of 25-40 the simulator's profiles assume (sqrt(2) / SNR).
ENHANCEMENT_FLOOR = 0.1
# Smoothing of the log-gain field, in quarter-resolution pixels: 2 is 8 working-grid pixels,
# 28 mm at 3.5 mm, the scale of coil shading rather than of anatomy.
SHADING_SIGMA = 2.0
# Below this many working-grid pixels the quarter-resolution gain field has < 4 samples.
MIN_WORK_PIXELS = 16
# Pixel spacing coarser than this multiple of the working grid would be upsampled into
# detail the networks never saw.
MAX_SPACING_FACTOR = 2.0
# Slices per forward pass at inference: bounds the temporaries to a few slices' worth. With
# 4 the 512² peak came within 1-2 % of the 3x budget and over it in one run of `make bench`
# (294 of 288 MiB); with 2 it is 225-241 MiB at the same speed (`python -m bench.bench_deep`).
_CHUNK = 2
# Sample size for the robust series scale; the whole volume says no more.
_SCALE_SAMPLE = 1 << 20


# --------------------------------------------------------------------------- layers


def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """Same-padded convolution (zeros: air is zero at the image border anyway)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip (ResNet, He 2016), LeakyReLU, no normalization.

    No normalization: the gain field is an absolute quantity and instance statistics of a
    crop would differ from those of a whole slice at inference.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels)
        self.conv2 = conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))


class AdaINResBlock(nn.Module):
    """ResBlock whose features are re-styled by adaptive instance normalization (MUNIT).

    ``style_params`` (batch, 4 * channels) hold scale and shift for both convolutions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = conv(channels, channels)
        self.conv2 = conv(channels, channels)

    def forward(self, x: torch.Tensor, style_params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = style_params[:, :, None, None].chunk(4, dim=1)
        h = self.conv1(F.leaky_relu(x, 0.2))
        h = F.instance_norm(h) * (1 + g1) + b1
        h = self.conv2(F.leaky_relu(h, 0.2))
        h = F.instance_norm(h) * (1 + g2) + b2
        return x + h


class Encoder(nn.Module):
    """2.5D trunk: (batch, 3 slices, H, W) -> features at a quarter of the resolution."""

    def __init__(self, in_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = conv(in_channels, width)
        self.down1 = conv(width, 2 * width, 3, 2)
        self.down2 = conv(2 * width, 4 * width, 3, 2)
        self.blocks = nn.Sequential(*(ResBlock(4 * width) for _ in range(blocks)))
        self.out_channels = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2)
        h = F.leaky_relu(self.down1(h), 0.2)
        h = F.leaky_relu(self.down2(h), 0.2)
        return self.blocks(h)


def log_gain_head(channels: int) -> nn.Conv2d:
    """1x1 convolution to one log-gain channel, zero-initialized: training starts at gain 1."""
    head = nn.Conv2d(channels, 1, 1, bias=False)
    nn.init.zeros_(head.weight)
    return head


def bounded_log_gain(raw: torch.Tensor, size: tuple[int, int],
                     tissue_of: torch.Tensor | None = None) -> torch.Tensor:
    """Bound the quarter-resolution log gain to +-MAX_LOG_GAIN, smooth it to coil-shading
    scale (:func:`shading_blur`), upsample to ``size``.

    ``tissue_of``, the (n, 3, h, w) working-grid stack the field was predicted from, given
    at inference, makes the field from the tissue of its centre slice alone: normalized
    convolution (Knutsson & Westin, CVPR 1993), ``G*(b t) / G*t`` with ``t`` each cell's
    tissue share, which falls to zero far from tissue. Training crops are drawn mostly in
    tissue, so nothing teaches the network what to output in air; on whole slices it
    output large gains there, and the blur carried them into the breast edge. Training
    itself uses the plain blur, as the shipped models were trained.
    """
    bounded = MAX_LOG_GAIN * torch.tanh(raw / MAX_LOG_GAIN)
    if tissue_of is None:
        field = shading_blur(bounded)
    else:
        tissue = F.adaptive_avg_pool2d((tissue_of[:, 1:2] > TISSUE_LEVEL).to(raw.dtype),
                                       (raw.shape[-2], raw.shape[-1]))
        field = shading_blur(bounded * tissue) / (shading_blur(tissue) + 1e-3)
    return F.interpolate(field, size=size, mode="bilinear", align_corners=False)


def shading_blur(field: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of a quarter-resolution (n, 1, h, w) field, sigma SHADING_SIGMA.

    Without it the field can follow anatomy (a CNN sees where FGT is) and act as a second,
    spatially varying contrast change (see the shading penalty in
    :mod:`harmonizers.cyclegan`). B1+ and receive shading vary over several centimetres,
    which the blur keeps. Edges are replicated so that the field does not fall toward zero
    at the border.
    """
    radius = math.ceil(3 * SHADING_SIGMA)
    taps = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    kernel = torch.exp(-0.5 * (taps / SHADING_SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(field, (radius, radius, radius, radius), mode="replicate")
    across = F.conv2d(padded, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(across, kernel.reshape(1, 1, -1, 1))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola 2017) with a small receptive field: 22 working-grid pixels.

    Three 4x4 convolutions (strides 2, 2, 1): each output judges a ~22 px (~77 mm at
    3.5 mm) patch, enough for tissue contrast and shading, too small to judge anatomy, so
    the generator is not pushed to invent structure. ``outputs`` > 1 gives one real/fake
    map per domain (multi-domain discriminator for the style mapper).
    """

    def __init__(self, width: int = 16, outputs: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, outputs, 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(to_log(x))


def to_log(x: torch.Tensor) -> torch.Tensor:
    """Compress normalized intensities for the networks (enhanced voxels reach ~5)."""
    return torch.log1p(torch.clamp(x, min=0.0))


# ------------------------------------------------------------------- monotone transfer


def initial_slope_logits(knots: int) -> torch.Tensor:
    """Logits whose softplus is 1: the transfer starts as the identity."""
    return torch.full((knots,), math.log(math.e - 1.0))


def monotone_transfer(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Increasing piecewise-linear ``f`` with ``f(0) = 0`` on normalized intensities.

    ``logits`` (..., K) give the K segment slopes over ``[0, X_MAX]`` through softplus, so
    every slope is positive and ``f`` is strictly increasing whatever the network
    predicts. Beyond ``X_MAX`` ``f`` continues with its last segment's slope (as the
    histogram method extrapolates its map), so strong enhancement is neither clipped nor
    squashed. ``logits`` of shape (K,) apply to all of ``x``; of shape (B, K) to ``x`` of
    shape (B, ...). Each voxel looks up its own segment (a gather, not a sum over all K):
    O(1) memory per voxel, which matters at 512 x 512.
    """
    slopes = F.softplus(logits)
    knots = slopes.shape[-1]
    width = X_MAX / knots
    at_start = (torch.cumsum(slopes, -1) - slopes) * width  # f at each segment's start
    segment = torch.clamp(torch.floor(x / width), 0, knots - 1).long()
    if slopes.ndim == 1:
        slope, start = slopes[segment], at_start[segment]
    else:
        flat = segment.reshape(segment.shape[0], -1)
        slope = torch.gather(slopes, 1, flat).reshape(x.shape)
        start = torch.gather(at_start, 1, flat).reshape(x.shape)
    return start + slope * (x - segment * width)


# ------------------------------------------------------------------ structure keeping


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Normalized mutual information of two image batches, differentiable (Parzen window).

    Soft histograms with Gaussian kernels over ``log1p`` intensities (Viola & Wells 1997);
    returns NMI = 2 I(a; b) / (H(a) + H(b)) per batch, in [0, 1]. Used as a loss
    (``1 - NMI``) it keeps the output's structure tied to the input's, as the lab's breast
    CycleGAN did with an MI term, without asking for equal intensities.
    """
    def weights(v: torch.Tensor) -> torch.Tensor:
        v = to_log(v).reshape(v.shape[0], -1)
        low = v.amin(dim=1, keepdim=True).detach()
        high = v.amax(dim=1, keepdim=True).detach()
        v = (v - low) / (high - low + 1e-6)
        centres = torch.linspace(0, 1, bins, device=v.device)
        w = torch.exp(-0.5 * ((v.unsqueeze(-1) - centres) * (bins - 1)) ** 2)
        return w / (w.sum(-1, keepdim=True) + 1e-12)

    wa, wb = weights(a), weights(b)
    joint = torch.einsum("nki,nkj->nij", wa, wb) / wa.shape[1]
    pa, pb = joint.sum(2), joint.sum(1)
    eps = 1e-10
    h_a = -(pa * torch.log(pa + eps)).sum(1)
    h_b = -(pb * torch.log(pb + eps)).sum(1)
    h_ab = -(joint * torch.log(joint + eps)).sum((1, 2))
    return (2 * (h_a + h_b - h_ab) / (h_a + h_b + eps)).mean()


# ---------------------------------------------------------------- translation losses


def log_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 on log intensities: relative errors, so dim fat counts as much as bright FGT."""
    return F.l1_loss(to_log(a), to_log(b))


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao 2017), as CycleGAN and MUNIT use."""
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


# -------------------------------------------------------------- series normalization


def series_scale(volume: np.ndarray) -> float:
    """A robust intensity scale of a pre-contrast (z, y, x) volume: its tissue mean.

    The mean of the voxels above the volume's mean: air (near zero, most of the field of
    view) falls below, the body above. Cheap on any volume size (a strided sample), unlike
    a full foreground segmentation, and stable under Rician noise. Raises ModelError for a
    volume with no signal.
    """
    values = volume.ravel()[:: max(1, volume.size // _SCALE_SAMPLE)].astype(np.float64)
    tissue = values[values > values.mean()]
    scale = float(tissue.mean()) if tissue.size else 0.0
    if not (math.isfinite(scale) and scale > 0):
        raise ModelError("the pre-contrast phase has no signal (constant or non-positive)")
    return scale


# ------------------------------------------------------------------- input checks


@dataclass(frozen=True)
class WorkGrid:
    """The in-plane working grid the networks run on, for one acquisition."""

    height: int
    width: int


def check_acquisition(acquisition: Acquisition, work_mm: float, method: str) -> WorkGrid:
    """Refuse what the deep models cannot harmonize, with a clear ModelError.

    ModelError (a ValueError) because the node quarantines a job with it, naming the
    reason, as it does for a model that does not fit the series.

    Non-finite voxels, fewer than two phases (the gain comes from the pre-contrast and is
    meant for the post-contrast phases; a single phase is not a DCE series), an invalid
    pixel spacing, a pixel spacing much coarser than the working grid, or a field of view
    too small for the gain field. A single slice is fine (2.5D input repeats it).
    """
    pixels = acquisition.pixels
    if pixels.size == 0:
        raise ModelError(f"{method}: the acquisition is empty, shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ModelError(f"{method}: the acquisition holds NaN or infinite values")
    if acquisition.n_phases < 2:
        raise ModelError(
            f"{method}: needs a pre-contrast and at least one post-contrast phase, got "
            f"{acquisition.n_phases} phase"
        )
    dy, dx = (float(s) for s in acquisition.spacing_mm[1:])
    if not (math.isfinite(dy) and math.isfinite(dx) and dy > 0 and dx > 0):
        raise ModelError(f"{method}: invalid pixel spacing {acquisition.spacing_mm[1:]} mm")
    if max(dy, dx) > MAX_SPACING_FACTOR * work_mm:
        raise ModelError(
            f"{method}: pixel spacing {dy:g} x {dx:g} mm is coarser than this model's "
            f"{MAX_SPACING_FACTOR:g} x {work_mm:g} mm working grid"
        )
    grid = WorkGrid(round(pixels.shape[2] * dy / work_mm), round(pixels.shape[3] * dx / work_mm))
    if min(grid.height, grid.width) < MIN_WORK_PIXELS:
        raise ModelError(
            f"{method}: field of view {pixels.shape[2] * dy:.0f} x {pixels.shape[3] * dx:.0f} mm "
            f"is too small for this model (at least {MIN_WORK_PIXELS * work_mm:.0f} mm a side)"
        )
    return grid


# ---------------------------------------------------------------- 2.5D slice stacks


def work_stacks(
    pre_contrast: np.ndarray, scale: float, grid: WorkGrid, device: torch.device
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Per chunk of slices ``z``: the normalized slices' 2.5D stacks on the working grid
    (n, 3, h, w), channels-last, on ``device``.

    Each slice is resampled once (with one neighbour on either side of the chunk) and the
    stacks are built on the small grid; slab ends repeat their edge slice.
    """
    last = pre_contrast.shape[0] - 1
    for z in slice_chunks(pre_contrast.shape[0]):
        lo, hi = max(z.start - 1, 0), min(z.stop, last)  # hi inclusive
        block = torch.from_numpy(np.ascontiguousarray(pre_contrast[lo:hi + 1])).to(device)
        block = torch.clamp(block, min=0.0) / scale
        work = to_work_grid(block[:, None], grid)[:, 0]
        index = torch.arange(z.start, z.stop, device=device)
        triples = torch.stack([(index - 1).clamp(0, last), index,
                               (index + 1).clamp(max=last)], 1) - lo
        stacks = work[triples].contiguous(memory_format=torch.channels_last)
        yield z, stacks


def to_work_grid(stack: torch.Tensor, grid: WorkGrid) -> torch.Tensor:
    """Resample (n, c, H, W) in-plane to the working grid (antialiased when shrinking)."""
    if stack.shape[-2:] == (grid.height, grid.width):
        return stack
    return F.interpolate(stack, size=(grid.height, grid.width), mode="bilinear",
                         align_corners=False, antialias=True)


def slice_chunks(n_slices: int) -> Iterator[slice]:
    """Consecutive slice ranges of at most ``_CHUNK`` slices."""
    for start in range(0, n_slices, _CHUNK):
        yield slice(start, min(start + _CHUNK, n_slices))


def work_volume(volume: np.ndarray, spacing_yx: tuple[float, float], work_mm: float) -> np.ndarray:
    """A (z, y, x) volume resampled in-plane to the working grid, float32 (training data)."""
    grid = WorkGrid(round(volume.shape[1] * spacing_yx[0] / work_mm),
                    round(volume.shape[2] * spacing_yx[1] / work_mm))
    with torch.inference_mode():
        resampled = to_work_grid(torch.from_numpy(np.ascontiguousarray(volume))[:, None], grid)
    return resampled[:, 0].numpy().astype(np.float32)


LogGain = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
# (phase, z, y, x) source voxels -> each voxel's enhancement factors, phase 0 all ones.
Enhancement = Callable[[np.ndarray], np.ndarray]
# A checked acquisition -> its Enhancement (what needs the whole series is done once here).
EnhancementOf = Callable[[Acquisition], Enhancement]

# Environment variable that picks the inference device: "cpu" forces the CPU, "cuda" asks
# for the GPU; unset, the GPU is used when torch sees one.
DEVICE_ENV = "DICOMNODE_INFERENCE_DEVICE"


def inference_device(requested: str | torch.device | None = None) -> torch.device:
    """The device the deep harmonizers run on: ``requested``, else :data:`DEVICE_ENV`, else
    CUDA when available, else the CPU. ModelError for CUDA asked for on a machine without."""
    name = requested if requested is not None else os.environ.get(DEVICE_ENV) or None
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown inference device {name!r} ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"inference device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def harmonize_phases(
    acquisition: Acquisition,
    *,
    method: str,
    work_mm: float,
    log_gain: LogGain,
    logits: torch.Tensor,
    enhancement: EnhancementOf,
    sharpening: UnsharpFilter,
    target_scale: float,
    device: torch.device,
) -> np.ndarray:
    """Apply one learned mapping to every phase (the shared inference path).

    ``log_gain(stacks, size)`` maps (n, 3, h, w) working-grid stacks of the pre-contrast to
    the (n, 1, *size) log-gain field; ``logits`` are the transfer's; ``enhancement`` gives,
    for the checked acquisition, each voxel's factor per phase for a block of slices
    (module doc, ``e``). Per chunk of slices the gain field is computed once, and every
    phase becomes ``f(x[0]) * exp(b) * e[p]``, so no voxel's percent enhancement depends on
    the networks. The sharpening filter then acts twice, as one bounded gain each
    (:meth:`~harmonizers.sharpness.UnsharpFilter.shared_gain`): on the image, one gain per
    voxel from the mean over phases, shared by every phase; on each phase's enhancement
    ``e[p] - 1``, a gain per voxel and phase in [1/2, 2] (below ``ENHANCEMENT_FLOOR`` going to
    1), so a rising voxel stays rising. Then one factor for the whole series
    sets its level: the harmonized pre-contrast's :func:`series_scale` becomes
    ``target_scale``, the target's mean. The networks shape contrast and shading; the level
    is a statistic of the target series, which adversarial training leaves free to drift (on
    the virtual scanner the style mapper's output drifted about 18 % dark before this step).
    Negative input values (a negative rescale intercept) are taken as 0, as magnitude images
    are non-negative; ``f``, the field, ``e`` and the gain are non-negative, so the output
    is too.

    The networks and the per-voxel arithmetic run on ``device`` (where ``log_gain`` and
    ``logits`` live); ``enhancement`` runs on the CPU; the output is float32 on the CPU. On
    the CPU each chunk is computed in place in the output. Memory: the output plus a few
    slices of temporaries (on a GPU, a chunk of every phase there).
    """
    grid = check_acquisition(acquisition, work_mm, method)
    factors = enhancement(acquisition)
    scale = series_scale(acquisition.pre_contrast)
    out = np.empty(acquisition.pixels.shape, dtype=np.float32)
    size = (acquisition.pixels.shape[2], acquisition.pixels.shape[3])
    with torch.inference_mode():
        for z, stacks in work_stacks(acquisition.pre_contrast, scale, grid, device):
            target = torch.from_numpy(out[:, z])
            chunk = target if device.type == "cpu" else torch.empty(target.shape, device=device)
            chunk.copy_(torch.from_numpy(factors(acquisition.pixels[:, z])))
            pre = torch.from_numpy(acquisition.pixels[0, z]).to(device)
            pre = (monotone_transfer(torch.clamp(pre, min=0.0) / scale, logits)
                   * torch.exp(log_gain(stacks, size)[:, 0]))
            if sharpening.amount != 0.0:
                pre *= sharpening.shared_gain(pre * chunk.mean(0), TISSUE_LEVEL)
            if sharpening.amount > 0.0:  # sharpens the enhancement; never blurs it
                for rise in chunk[1:]:  # a phase at a time: the blur's copies stay small
                    rise -= 1.0
                    rise *= sharpening.shared_gain(rise, ENHANCEMENT_FLOOR)
                    rise += 1.0
                chunk.clamp_(min=0.0)  # a darkening doubled must not go below zero signal
            chunk *= pre
            if chunk is not target:
                target.copy_(chunk)
    out *= np.float32(target_scale / series_scale(out[0]))
    return out


# --------------------------------------------------------------------- weights files


def save_weights(path: Path, weights: dict[str, Any]) -> None:
    """Write a weights dict (tensors and plain data only) with torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, path)


def load_weights(path: Path, method: str, version: int) -> dict[str, Any]:
    """Read a weights dict written by :func:`save_weights`; ValueError if it is not one.

    ``weights_only=True``: the node loads model files, and a pickle could run code.
    """
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable torch weights file ({exc})") from exc
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: expected a dict of weights")
    if weights.get("format_version") != version or weights.get("method") != method:
        raise ValueError(
            f"{path}: expected format_version {version} of method {method!r}, got "
            f"{weights.get('format_version')!r} of {weights.get('method')!r}"
        )
    return weights


def domain_name(domain: ScannerDomain | None) -> str | None:
    return domain.name if domain is not None else None


def parse_domain(name: object) -> ScannerDomain | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"domain must be a name like 'ge-1.5t', got {name!r}")
    return ScannerDomain.parse(name)


def load_state(module: nn.Module, state: object, path: Path) -> None:
    """Load a state dict strictly; ValueError when it does not fit the architecture."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: network weights missing")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the network ({exc})") from exc


# Tissue quantile levels for histogram matching (as the histogram method's p1..p99).
QUANTILE_LEVELS = np.linspace(1.0, 99.0, 25)


def pooled_tissue_quantiles(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """QUANTILE_LEVELS percentiles of the tissue voxels of normalized volumes, pooled.

    Non-decreasing; for volumes with no tissue, a plausible default (the identity match).
    Above ``_SCALE_SAMPLE`` tissue voxels an even subsample is used: a 512 x 512 series
    has millions, and sorting them all cost more than the networks at run time.
    """
    values = np.concatenate([v[v > TISSUE_LEVEL].ravel() for v in volumes])
    values = values[:: max(1, values.size // _SCALE_SAMPLE)]
    if values.size == 0:
        return QUANTILE_LEVELS / 50.0
    return np.maximum.accumulate(np.percentile(values, QUANTILE_LEVELS))


def match_logits(source_q: np.ndarray, target_q: np.ndarray, knots: int) -> np.ndarray:
    """Transfer logits (float32) whose ``f`` maps source tissue quantiles onto the target's.

    Histogram matching as in Nyúl–Udupa standardization, anchored at ``f(0) = 0`` and
    continued past the last quantile, as the histogram method continues its map, with the
    slope from the first to the last quantile: enhanced voxels (beyond the pre-contrast
    quantiles) are mapped as tissue is, not rescaled through the origin. Slopes are held in
    [0.05, 20] so that the logits stay finite.
    """
    x = np.concatenate([[0.0], source_q])
    y = np.concatenate([[0.0], target_q])
    edges = np.linspace(0.0, X_MAX, knots + 1)
    f = np.interp(edges, x, y)
    tissue_slope = (y[-1] - y[1]) / max(x[-1] - x[1], 1e-6)
    beyond = edges > x[-1]
    f[beyond] = y[-1] + (edges[beyond] - x[-1]) * tissue_slope
    slopes = np.clip(np.diff(f) / (X_MAX / knots), 0.05, 20.0)
    return np.log(np.expm1(slopes)).astype(np.float32)


def native_tissue_quantiles(pre_contrasts: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`pooled_tissue_quantiles` of pre-contrast volumes at their own resolution.

    The transfer acts on full-resolution voxels at inference, so its histogram match is
    made there: resampling to the working grid smooths the bright tail (the target's
    sharper FGT most), and a match made on the working grid maps enhanced tissue too low.
    """
    return pooled_tissue_quantiles([normalized(v) for v in pre_contrasts])


def normalized(volume: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A pre-contrast volume in normalized units: negatives clipped, divided by its scale
    (its :func:`series_scale` unless given)."""
    return np.maximum(volume, 0.0) / np.float32(series_scale(volume) if scale is None else scale)
