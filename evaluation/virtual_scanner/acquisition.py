"""Acquisition physics: what one scanner makes of a patient's tissue and contrast.

Signal model (shared/reference/breast-dce-physics.md, "Signal model"): spoiled gradient echo
  S = PD sin(ka) (1 - E1) / (1 - cos(ka) E1) exp(-TE / T2*),  E1 = exp(-TR / T1),
  R1(t) = 1 / T1_0 + r1 C(t),
with k the local B1+ scale. B1+: a smooth left-right asymmetry of random sign inside the
profile's kappa range (reference, "B1+ inhomogeneity": 0.9-1.2 at 1.5 T, 0.75-1.10 at 3 T).
Then the scanner-specific chain: fat suppression (fat signal times 1 - efficiency), a smooth
receive-coil bias, complex Gaussian noise at the profile's SNR (magnitude gives Rician
noise), an in-plane reconstruction filter on the complex image, the vendor's arbitrary gain
and quantization to unsigned 16-bit with RescaleSlope/Intercept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from evaluation.virtual_scanner.compartments import Curves, Tissue
from evaluation.virtual_scanner.grid import Grid
from evaluation.virtual_scanner.profiles import ScannerProfile
from evaluation.virtual_scanner.tissues import RELAXATION, Label, relaxivity

PHILIPS_STORED_MAX = 4095  # Philips fills about 12 bits and puts the scale in RescaleSlope
UINT16_MAX = 65535
B1_HALF_WIDTH_MM = 90.0  # the L-R B1+ gradient spans the breasts' centres


@dataclass(frozen=True)
class Hardware:
    """Per-exam draws of one scanner on one patient (grid-independent scalars)."""

    kappa_mean: float
    kappa_lr_difference: float  # left minus right
    kappa_ap_gradient: float  # per 100 mm posterior
    bias_coefficients: tuple[float, float, float, float]  # x, y, x^2, z
    exam_gain: float


@dataclass(frozen=True)
class Acquired:
    """One scanner's images of one patient and how its stored values were scaled."""

    pixels: np.ndarray  # float32 (phase, z, y, x) real-world values (stored x slope + icpt)
    stored: np.ndarray  # uint16, what the DICOM files hold
    rescale_slope: float
    rescale_intercept: float
    private_scale_slope: float  # Philips (2005,100E): floating value = stored / this
    noise_sigma: float  # in real-world units
    hardware: Hardware
    b1_kappa: np.ndarray  # float32 (z, y, x)
    bias: np.ndarray  # float32 (z, y, x)


def exam_rng(patient_seed: int, profile: ScannerProfile) -> np.random.Generator:
    """The random stream of one patient on one scanner: the same exam gives the same draws."""
    return np.random.default_rng(
        np.random.SeedSequence([int(patient_seed), zlib.crc32(profile.name.encode())])
    )


def draw_hardware(profile: ScannerProfile, rng: np.random.Generator) -> Hardware:
    """B1+ asymmetry, receive bias and exam gain for one exam."""
    lo, hi = profile.b1_kappa_min, profile.b1_kappa_max
    # The sign of the L-R difference varies between studies (reference), so randomize it.
    diff = min(profile.b1_lr_difference_max * rng.uniform(0.3, 1.0), hi - lo)
    diff *= 1.0 if rng.random() < 0.5 else -1.0
    mean = rng.uniform(lo + abs(diff) / 2, hi - abs(diff) / 2)
    coeffs = rng.normal(size=4)
    coeffs /= np.abs(coeffs).sum()
    return Hardware(
        kappa_mean=float(mean),
        kappa_lr_difference=float(diff),
        kappa_ap_gradient=float(rng.uniform(-0.05, 0.05)),
        bias_coefficients=tuple(float(c) for c in coeffs),  # type: ignore[arg-type]
        exam_gain=float(rng.uniform(profile.exam_gain_min, profile.exam_gain_max)),
    )


def b1_map(hw: Hardware, profile: ScannerProfile, grid: Grid) -> np.ndarray:
    """kappa (actual / nominal flip angle): smooth L-R step plus a mild A-P gradient."""
    x, y, _ = grid.axes_mm()
    lr = np.clip(x / B1_HALF_WIDTH_MM, -1, 1)[None, None, :]  # +1 at the left breast
    ap = (y / 100.0)[None, :, None]
    kappa = hw.kappa_mean + 0.5 * hw.kappa_lr_difference * lr + hw.kappa_ap_gradient * ap
    kappa = np.clip(kappa, profile.b1_kappa_min, profile.b1_kappa_max)
    return np.broadcast_to(kappa, grid.shape).astype(np.float32)


def bias_map(hw: Hardware, profile: ScannerProfile, grid: Grid) -> np.ndarray:
    """Receive sensitivity exp(strength h), h a low-order polynomial with |h| <= 1 in the FOV."""
    x, y, z = grid.axes_mm()
    half = np.array([np.abs(a).max() + 1e-6 for a in (x, y, z)])
    xn, yn, zn = x / half[0], y / half[1], z / half[2]
    cx, cy, cx2, cz = hw.bias_coefficients
    h = (cx * xn[None, None, :] + cy * yn[None, :, None] + cx2 * (xn**2)[None, None, :]
         + cz * zn[:, None, None])
    return np.broadcast_to(np.exp(profile.bias_strength * h), grid.shape).astype(np.float32)


def spgr(pd: np.ndarray | float, e1: np.ndarray | np.floating | float,
         sin_a: np.ndarray | float, cos_a: np.ndarray | float) -> np.ndarray:
    """Steady-state spoiled gradient echo signal without the T2* factor."""
    return np.asarray(pd * sin_a * (1 - e1) / (1 - cos_a * e1))


def reference_signal(profile: ScannerProfile) -> float:
    """Noiseless pre-contrast signal of pure FGT at nominal flip angle: the SNR reference."""
    fgt = RELAXATION[Label.FGT]
    a = np.deg2rad(profile.flip_angle_deg)
    e1 = np.exp(-profile.repetition_time_ms / fgt.t1_ms(profile.field_strength_t, 0.0))
    te = np.exp(-profile.echo_time_ms / fgt.t2star_ms)
    return float(spgr(fgt.pd, e1, np.sin(a), np.cos(a)) * te)


def _recon_filter(image: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    """In-plane recon filter of a (z, y, x) image: Gaussian blur or unsharp-mask sharpening."""
    s = profile.recon_filter_strength
    if profile.recon_filter == "blur" and s > 0:
        return np.asarray(ndimage.gaussian_filter(image, sigma=(0, s, s), truncate=3.0))
    if profile.recon_filter == "sharpen" and s > 0:
        smooth = ndimage.gaussian_filter(image, sigma=(0, 1.0, 1.0), truncate=3.0)
        return np.asarray(image + s * (image - smooth))
    return image


def acquire(tissue: Tissue, curves: Curves, profile: ScannerProfile, grid: Grid,
            rng: np.random.Generator) -> Acquired:
    """Render every phase of one exam and quantize as the vendor does."""
    hw = draw_hardware(profile, rng)
    kappa = b1_map(hw, profile, grid)
    bias = bias_map(hw, profile, grid)
    alpha = np.float32(np.deg2rad(profile.flip_angle_deg)) * kappa
    sin_a, cos_a = np.sin(alpha), np.cos(alpha)
    tr, te = profile.repetition_time_ms, profile.echo_time_ms
    idx = tissue.index
    ff = tissue.fat_fraction
    # Static parts: water PD x T2* decay, and the (suppressed) fat signal, which has no agent.
    # Static parts: water PD x T2* decay x sin(ka) x bias, and the (suppressed) fat signal,
    # which no agent reaches. Per phase only E1 changes, looked up per compartment.
    water = (1 - ff) * (tissue.pd * np.exp(-te / tissue.t2star_ms)).astype(np.float32)[idx]
    water *= sin_a * bias
    fat = RELAXATION[Label.FAT]
    fat_e1 = np.float32(np.exp(-tr / tissue.fat_t1_ms))
    fat_signal = (ff * np.float32(fat.pd * np.exp(-te / fat.t2star_ms)
                                  * (1 - profile.fat_suppression_efficiency))
                  * spgr(1.0, fat_e1, sin_a, cos_a) * bias).astype(np.float32)
    r1_per_ms = relaxivity(profile.agent, profile.field_strength_t) / 1000.0  # L/mmol/ms
    sigma = np.float32(reference_signal(profile) / profile.snr)
    gain = profile.gain * hw.exam_gain
    out = np.empty((profile.phases, *grid.shape), dtype=np.float32)
    for p in range(profile.phases):
        r1 = 1.0 / tissue.t1_ms + r1_per_ms * curves.phases_mM[p]
        e1 = np.exp(-tr * r1).astype(np.float32)[idx]
        # S = water (1 - E1) / (1 - cos(ka) E1) + fat, computed in place to spare memory.
        real = np.multiply(cos_a, e1)
        np.subtract(1, real, out=real)
        np.subtract(1, e1, out=e1)
        e1 *= water
        np.divide(e1, real, out=real)
        real += fat_signal
        real += rng.standard_normal(grid.shape, dtype=np.float32) * sigma
        imag = rng.standard_normal(grid.shape, dtype=np.float32) * sigma
        np.hypot(_recon_filter(real, profile), _recon_filter(imag, profile), out=out[p])
        out[p] *= np.float32(gain)
    # Philips: one slope per series, chosen so the stored values fill about 12 bits.
    slope = float(f"{out.max() / PHILIPS_STORED_MAX:.6g}") if profile.rescale == "philips" else 1.0
    stored = np.clip(np.rint(out / np.float32(slope)), 0, UINT16_MAX).astype(np.uint16)
    pixels = stored.astype(np.float32) * np.float32(slope)
    return Acquired(
        pixels=pixels,
        stored=stored,
        rescale_slope=slope,
        rescale_intercept=0.0,
        private_scale_slope=gain / slope,
        noise_sigma=float(sigma) * gain,
        hardware=hw,
        b1_kappa=kappa,
        bias=bias,
    )
