"""One in-plane filter for every phase, fitted so the output's sharpness matches the target's.

Scanners differ in in-plane sharpness as much as in contrast: matrix and k-space filtering,
and the vendor's reconstruction filter (on the virtual scanner: Gaussian blur on GE and
Philips 1.5 T, unsharp masking on Siemens; ``conf/scanners/*.yaml``). An intensity transfer
and a smooth gain field cannot change sharpness, and on held-out virtual patients it was the
largest difference left after them.

The filter is an unsharp mask ``x + a (x - G_sigma x)`` in pixels (``a > 0`` sharpens,
``-1 < a < 0`` smooths), the family reconstruction filters come from, applied identically
to every phase, so each phase gets one and the same linear operation. It is fitted without
paired data, by matching radially averaged power spectra: the unsharp mask's frequency
response is ``H(f) = 1 + a (1 - exp(-2 pi^2 sigma^2 f^2))`` (the Gaussian's Fourier
transform), so the filtered source spectrum is ``|H|^2`` times the source's, and ``(a,
sigma)`` is the grid point whose filtered spectrum is closest, in log power, to the target's
in the band where anatomy, not noise, makes the spectrum (:data:`FITTED_BINS`). Frequencies
are in cycles per pixel: recon filters act on the pixel grid.

At inference the filter does not act on each phase as a linear filter: it is turned into
bounded per-voxel *gains* (:meth:`UnsharpFilter.shared_gain`). The image gets one,
``g = K(m) / m`` with ``m`` the mean over phases of the harmonized, unsharpened series, by
which every phase is multiplied: it cancels in percent enhancement, and the texture the
filter restores is the series' own. Where the filter sharpens, each phase's rise over the
pre-contrast gets its own gain as well (:func:`harmonizers.nets.harmonize_phases`): a
blurrier source spread a small lesion's enhancement into its surroundings, and the same
filter gathers it back, within a factor of 2 either way. Applied as a linear filter to each
phase with the intensity transfer the deep methods once used for enhancement, it moved
signal into the small lesions' ROI means that the transfer had already over-enhanced: on
held-out virtual Philips 1.5 T patients (seeds 5000-5005) the cyclegan's lesion PE error
rose from 26.3 pp without sharpening to 35.7 with it (issue notes); with the signal
equation's enhancement, which falls short there, the bounded gain on the rise brings it
down (harmonizers/README.md, "Deep methods"). The mean over phases rather than the
pre-contrast alone: the image gain then also sharpens what only enhances (NRMSE 0.228 vs
0.239 there, SSIM 0.899 vs 0.886).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Radial frequency bins from 0 to Nyquist (0.5 cycles/pixel), 1/32 cycle/pixel wide.
RADIAL_BINS = 16
# The bins fitted: 1/16 to 3/16 cycles/pixel, where anatomy dominates the spectrum. Below,
# the breast's outline differs between patients, not scanners. Above, noise dominates, and
# noise level is SNR, which a filter cannot give: matching it over-sharpens anatomy (on
# held-out virtual GE 1.5 T patients a full-band fit sharpened more and raised the
# cyclegan's lesion enhancement error; see the issue notes).
FITTED_BINS = slice(2, 6)
SIGMAS_PX = (0.7, 1.0, 1.5)
AMOUNTS = tuple(float(a) for a in np.round(np.linspace(-0.9, 2.0, 30), 2))
# Slices per volume the spectrum is averaged over: evenly spread, enough for a stable mean.
_SPECTRUM_SLICES = 16
# The shared gain is held in [1/2, 2]: a sharpening filter that moves a voxel by more than a
# factor of two is acting on noise or on an edge against air, not on texture.
MAX_GAIN = 2.0
# Gaussian support in sigmas (scipy.ndimage.gaussian_filter's ``truncate``): 3 keeps 99.7 %
# of the weight in a footprint of a few pixels.
_TRUNCATE = 3.0


@dataclass(frozen=True)
class UnsharpFilter:
    """``x + amount (x - G_sigma x)`` in-plane, ``sigma_px`` in pixels; amount 0 is identity."""

    amount: float = 0.0
    sigma_px: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.amount) and -1.0 < self.amount <= 5.0):
            raise ValueError(f"unsharp amount must be in (-1, 5], got {self.amount}")
        if not (math.isfinite(self.sigma_px) and 0.0 < self.sigma_px <= 5.0):
            raise ValueError(f"unsharp sigma must be in (0, 5] pixels, got {self.sigma_px}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The filtered (..., y, x) images, each 2D image on its own, on their device.

        The Gaussian is scipy.ndimage.gaussian_filter's (sampled kernel of radius
        ``int(truncate sigma + 0.5)``, normalized; edges mirrored including the edge pixel,
        scipy's "reflect"), written in torch so that it runs where the images are.
        """
        if self.amount == 0.0:
            return images.clone()
        blurred = gaussian_blur(images, self.sigma_px)
        return images * (1.0 + self.amount) - self.amount * blurred

    def shared_gain(self, mean_image: torch.Tensor, floor: float) -> torch.Tensor:
        """The per-voxel gain ``K(m) / m`` that sharpens ``m``, (..., y, x) images: the mean
        over phases, whose gain multiplies every phase (see the module docstring), or one
        phase's rise over the pre-contrast (:func:`harmonizers.nets.harmonize_phases`).

        Where ``m`` is below ``floor`` (air, noise, a falling rise) the ratio says nothing;
        there the correction ``K(m) - m`` is divided by ``floor`` instead, so the gain goes
        smoothly to 1 rather than jumping. Held in [1/MAX_GAIN, MAX_GAIN], so positive.
        """
        if self.amount == 0.0:
            return torch.ones_like(mean_image)
        correction = self.apply(mean_image) - mean_image
        gain = 1.0 + correction / torch.clamp(mean_image, min=floor)
        return torch.clamp(gain, 1.0 / MAX_GAIN, MAX_GAIN)

    def log_power_gain(self, frequency: np.ndarray) -> np.ndarray:
        """``log |H(f)|^2`` at ``frequency`` cycles/pixel."""
        gaussian = np.exp(-2.0 * math.pi**2 * self.sigma_px**2 * frequency**2)
        return 2.0 * np.log(1.0 + self.amount * (1.0 - gaussian))

    def as_dict(self) -> dict[str, float]:
        return {"amount": self.amount, "sigma_px": self.sigma_px}


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., y, x) images in-plane, scipy-compatible (see
    :meth:`UnsharpFilter.apply`).

    Each pass is a weighted sum of shifted views of the mirrored images, accumulated in
    place: no convolution workspace, so on 512 x 512 slices the temporaries stay at two
    copies of the chunk (a convolution's unfolding cost about 60 MiB more at inference).
    """
    radius = int(_TRUNCATE * sigma_px + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    weights = taps / taps.sum()
    blurred = images
    for dim in (-1, -2):
        padded = _mirrored(blurred, radius, dim)
        size = images.shape[dim]
        blurred = padded.narrow(dim, 0, size) * float(weights[0])
        for shift in range(1, weights.size):
            blurred.add_(padded.narrow(dim, shift, size), alpha=float(weights[shift]))
    return blurred


def _mirrored(images: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """``images`` padded by ``radius`` on both ends of ``dim``, mirrored about the edge
    (``d c b a | a b c d``, scipy's "reflect"), for any radius."""
    size = images.shape[dim]
    index = torch.arange(-radius, size + radius, device=images.device) % (2 * size)
    index = torch.where(index >= size, 2 * size - 1 - index, index)
    return images.index_select(dim, index)


def bin_centres() -> np.ndarray:
    """Centre frequency (cycles/pixel) of each radial bin."""
    edges = np.linspace(0.0, 0.5, RADIAL_BINS + 1)
    return (edges[:-1] + edges[1:]) / 2


def radial_log_spectrum(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Mean log power per radial frequency bin of (z, y, x) volumes, (RADIAL_BINS,).

    Each volume is divided by its mean first, so the spectrum describes sharpness and
    texture, not the units; each slice's mean is removed so DC does not leak into the
    first bins.
    """
    if not volumes:
        raise ValueError("no volumes to measure a spectrum on")
    power = np.zeros(RADIAL_BINS)
    for volume in volumes:
        picks = np.unique(np.linspace(0, len(volume) - 1, _SPECTRUM_SLICES).round().astype(int))
        slices = volume[picks].astype(np.float64) / max(float(volume.mean()), 1e-12)
        slices -= slices.mean(axis=(1, 2), keepdims=True)
        spectrum = (np.abs(np.fft.fft2(slices)) ** 2).mean(0)
        fy = np.fft.fftfreq(slices.shape[1])[:, None]
        fx = np.fft.fftfreq(slices.shape[2])[None, :]
        radius = np.hypot(fy, fx)
        index = np.minimum((radius / 0.5 * RADIAL_BINS).astype(int), RADIAL_BINS)
        sums = np.bincount(index.ravel(), spectrum.ravel(), RADIAL_BINS + 1)[:RADIAL_BINS]
        counts = np.bincount(index.ravel(), minlength=RADIAL_BINS + 1)[:RADIAL_BINS]
        power += sums / np.maximum(counts, 1)
    return np.log(power / len(volumes) + 1e-30)


def fit_unsharp(source: np.ndarray, target: np.ndarray) -> UnsharpFilter:
    """The unsharp mask that brings the ``source`` log spectrum closest to ``target``'s."""
    if source.shape != (RADIAL_BINS,) or target.shape != (RADIAL_BINS,):
        raise ValueError(f"spectra must have {RADIAL_BINS} bins")
    frequency = bin_centres()[FITTED_BINS]
    gap = (target - source)[FITTED_BINS]
    best = UnsharpFilter()
    best_cost = float(np.mean(gap**2))
    for sigma in SIGMAS_PX:
        for amount in AMOUNTS:
            if amount == 0.0:
                continue  # the identity is the starting point, whatever its sigma
            candidate = UnsharpFilter(amount, sigma)
            cost = float(np.mean((candidate.log_power_gain(frequency) - gap) ** 2))
            if cost < best_cost:
                best, best_cost = candidate, cost
    return best
