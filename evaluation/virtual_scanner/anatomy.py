"""Rasterize a virtual patient onto a study grid: labels, FGT fraction and lesion masks.

Every shape is an analytic implicit surface in millimetres (patient.py), evaluated at the
voxel centres by broadcasting 1D coordinate arrays, so a patient looks the same on any grid.
Distances to surfaces use the first-order estimate G / |grad G| of an implicit function G,
which is accurate within a few centimetres of the surface, where the skin, muscle and
subcutaneous fat bands lie.

The FGT texture is a power-law (1/f^beta, beta = 3) Gaussian random field, elongated along
the anterior-posterior axis like the ducts, with a central (retro-areolar) prior. The
power-law model of breast parenchyma is the usual one for breast phantoms (Burgess, Med Phys
2001; assumption, not in the project reference). It is generated once per patient on a fixed
2 mm grid, thresholded so that the FGT share of breast volume equals the patient's BI-RADS
density, and resampled to each study grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from evaluation.virtual_scanner.grid import Grid
from evaluation.virtual_scanner.patient import Breast, Lesion, Patient
from evaluation.virtual_scanner.tissues import Label

TEXTURE_STEP_MM = 2.0
TEXTURE_BETA = 3.0
# Transition width of the FGT/fat boundary in units of the texture's standard deviation:
# gives a partial-volume rim of about one millimetre.
TEXTURE_SOFTNESS = 0.12
_EPS = np.float32(1e-6)


@dataclass(frozen=True)
class Phantom:
    """The patient on one grid. Arrays are (z, y, x); ``lesion_masks`` is (lesion, z, y, x)."""

    labels: np.ndarray  # uint8 Label codes
    fgt_fraction: np.ndarray  # float32: share of FGT in breast voxels, 0 elsewhere
    lesion_masks: np.ndarray  # bool


def _ellipse_distance(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance (mm, positive outside) to an axis-aligned ellipse."""
    g = (x / rx) ** 2 + (y / ry) ** 2 - 1
    grad = 2 * np.sqrt((x / rx**2) ** 2 + (y / ry**2) ** 2) + _EPS
    return np.asarray(g / grad, dtype=np.float32)


def _breast_distance(b: Breast, chest_wall_y: float, x: np.ndarray, y: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
    """Approximate signed distance to a breast: r^2 + u^p = 1 in front of the chest wall.

    ``u`` is the fraction of the way from the chest-wall plane to the nipple; behind the
    plane the breast continues as a cylinder so that it meets the curved thorax.
    Inputs broadcast as x (1, 1, nx), y (1, ny, 1), z (nz, 1, 1).
    """
    ax = (x - b.center_x) / b.radius_x
    az = (z - b.center_z) / b.radius_z
    u = np.clip((chest_wall_y - y) / b.depth, 0, None)
    up = u**b.taper
    g = ax**2 + az**2 + up - 1
    dgy = b.taper * u ** (b.taper - 1) / b.depth
    grad_xz = (2 * ax / b.radius_x) ** 2 + (2 * az / b.radius_z) ** 2
    grad = np.sqrt(grad_xz + dgy**2) + _EPS
    return np.asarray(g / grad, dtype=np.float32)


def _central_prior(b: Breast, chest_wall_y: float, x: np.ndarray, y: np.ndarray,
                   z: np.ndarray) -> np.ndarray:
    """1 on the breast's nipple axis, falling to 0 at its surface: FGT lies centrally."""
    u = np.clip((chest_wall_y - y) / b.depth, 0, 1)
    section = np.maximum(1 - u**b.taper, 0.05)
    rho2 = ((x - b.center_x) / b.radius_x) ** 2 + ((z - b.center_z) / b.radius_z) ** 2
    return np.asarray(np.clip(1 - rho2 / section, 0, 1), dtype=np.float32)


def _axis(lo: float, hi: float) -> np.ndarray:
    return np.arange(lo, hi + TEXTURE_STEP_MM, TEXTURE_STEP_MM, dtype=np.float32)


@lru_cache(maxsize=8)
def _texture(texture_seed: int, breasts: tuple[Breast, Breast], chest_wall_y: float,
             margin: float, fgt_fraction: float, thorax: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The patient's FGT field minus its density threshold, on a fixed 2 mm grid.

    Returns the grid's x, y, z axes and the field (z, y, x); FGT is where the field > 0.
    Cached because a cohort renders each patient on several scanners.
    """
    x = _axis(min(b.center_x - b.radius_x for b in breasts) - 4,
              max(b.center_x + b.radius_x for b in breasts) + 4)
    # Behind the chest-wall plane the breast runs on to the curved thorax, up to ry deep:
    # the field must cover it, or resampling would smear its last row into stripes.
    y = _axis(chest_wall_y - max(b.depth for b in breasts) - 4, chest_wall_y + thorax[1] + 4)
    z = _axis(min(b.center_z - b.radius_z for b in breasts) - 4,
              max(b.center_z + b.radius_z for b in breasts) + 4)
    shape = (z.size, y.size, x.size)
    rng = np.random.default_rng(texture_seed)
    spectrum = np.fft.rfftn(rng.standard_normal(shape, dtype=np.float32))
    kz = np.fft.fftfreq(shape[0], TEXTURE_STEP_MM)[:, None, None]
    ky = np.fft.fftfreq(shape[1], TEXTURE_STEP_MM)[None, :, None]
    kx = np.fft.rfftfreq(shape[2], TEXTURE_STEP_MM)[None, None, :]
    # Power-law spectrum; scaling ky by 1.4 stretches structures along y (towards the nipple).
    # k0 = 1/40 mm^-1 caps the largest structures at a few centimetres.
    k2 = kx**2 + (1.4 * ky) ** 2 + kz**2 + (1 / 40.0) ** 2
    field = np.fft.irfftn(spectrum * k2 ** (-TEXTURE_BETA / 4), s=shape, axes=(0, 1, 2))
    field = field.astype(np.float32)
    field /= field.std() + _EPS
    xx, yy, zz = x[None, None, :], y[None, :, None], z[:, None, None]
    d_breast = np.minimum(*(_breast_distance(b, chest_wall_y, xx, yy, zz) for b in breasts))
    prior = np.maximum(*(_central_prior(b, chest_wall_y, xx, yy, zz) for b in breasts))
    field += 1.2 * prior
    rx, ry = thorax
    d_thorax = _ellipse_distance(xx, yy - (chest_wall_y + ry), rx, ry)
    breast = (d_breast < 0) & (d_thorax > 0)
    eligible = breast & (d_breast < -margin) & (d_thorax > margin)
    # Share of the eligible (non-marginal) volume that must be FGT for the whole-breast
    # density to equal the target; capped because a sliver of fat always remains.
    share = min(fgt_fraction * breast.sum() / max(int(eligible.sum()), 1), 0.98)
    threshold = np.quantile(field[eligible], 1 - share) if eligible.any() else np.inf
    field -= np.float32(threshold)
    field[~eligible] = -10.0
    return x, y, z, field


def _interp_axis(arr: np.ndarray, src: np.ndarray, dst: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` from uniform ``src`` to ``dst``."""
    f = np.clip((dst - src[0]) / (src[1] - src[0]), 0, src.size - 1)
    i0 = np.floor(f).astype(np.intp)
    i1 = np.minimum(i0 + 1, src.size - 1)
    w = (f - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = dst.size
    w = w.reshape(shape)
    return np.asarray(np.take(arr, i0, axis) * (1 - w) + np.take(arr, i1, axis) * w)


def _resample(field: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
              x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Resample the coarse texture to the grid axes (separable trilinear)."""
    fx, fy, fz, values = field
    out = _interp_axis(values, fz, z, 0)
    out = _interp_axis(out, fy, y, 1)
    return _interp_axis(out, fx, x, 2)


def _lesion_mask(lesion: Lesion, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Boolean mask of one lesion on the grid axes.

    The surface is an ellipsoid whose radius is modulated by direction: smooth lobes
    (sum of cosines of the direction's projection on random axes) make it irregular, and
    narrow cones (cos^m of the angle to random spike axes) add spicules.
    """
    mask = np.zeros((z.size, y.size, x.size), dtype=bool)
    reach = max(lesion.radii) * (1.3 + max((s[3] for s in lesion.spikes), default=0.0))
    sel = [np.flatnonzero(np.abs(a - c) <= reach) for a, c in zip((z, y, x),
                                                                   lesion.center[::-1],
                                                                   strict=True)]
    if any(s.size == 0 for s in sel):
        return mask
    pz = (z[sel[0]] - lesion.center[2])[:, None, None]
    py = (y[sel[1]] - lesion.center[1])[None, :, None]
    px = (x[sel[2]] - lesion.center[0])[None, None, :]
    rot = np.asarray(lesion.rotation, dtype=np.float32)
    # Coordinates in the lesion frame: q = R^T p.
    q = [rot[0, i] * px + rot[1, i] * py + rot[2, i] * pz for i in range(3)]
    rho = np.sqrt(sum((qi / r) ** 2 for qi, r in zip(q, lesion.radii, strict=True)))
    norm = np.sqrt(px**2 + py**2 + pz**2) + _EPS
    bound = np.ones(rho.shape, dtype=np.float32)
    for ux, uy, uz, amp, freq, phase in lesion.lobes:
        bound += amp * np.cos(freq * (ux * px + uy * py + uz * pz) / norm + phase)
    for ux, uy, uz, length in lesion.spikes:
        cos = np.clip((ux * px + uy * py + uz * pz) / norm, 0, 1)
        bound += length * cos**300
    mask[np.ix_(sel[0], sel[1], sel[2])] = rho <= bound
    return mask


def rasterize(patient: Patient, grid: Grid) -> Phantom:
    """Labels, FGT fraction and lesion masks of ``patient`` on ``grid``."""
    x1, y1, z1 = grid.axes_mm()
    x, y, z = x1[None, None, :], y1[None, :, None], z1[:, None, None]
    p = patient
    d_thorax = _ellipse_distance(x, y - p.thorax_center_y, p.thorax_rx, p.thorax_ry)  # (1,ny,nx)
    d_breast = np.minimum(*(_breast_distance(b, p.chest_wall_y, x, y, z) for b in p.breasts))
    d_body = np.minimum(d_thorax - p.subcutaneous_fat, d_breast)
    body = d_body < 0

    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[body] = Label.FAT
    # Inside the thorax: muscle, then chest wall, then mediastinum (heart, aorta) and lungs.
    inner_depth = p.muscle_thickness + p.chest_wall_thickness
    interior = np.broadcast_to(d_thorax <= -inner_depth, grid.shape)
    mediastinum = np.abs(x - 10.0) < 45.0
    labels[interior & mediastinum] = Label.CHEST_WALL
    labels[interior & ~mediastinum] = Label.LUNG
    hx, hy, hz = p.heart_center
    hrx, hry, hrz = p.heart_radii
    heart = ((x - hx) / hrx) ** 2 + ((y - hy) / hry) ** 2 + ((z - hz) / hrz) ** 2 <= 1
    labels[interior & heart] = Label.HEART
    ax, ay = p.aorta_center_xy
    aorta = ((x - ax) ** 2 + (y - ay) ** 2 <= p.aorta_radius**2) & (z >= hz)
    labels[interior & aorta & ~heart] = Label.VESSEL
    band = np.broadcast_to(d_thorax, grid.shape)
    labels[(band < 0) & (band > -inner_depth)] = Label.CHEST_WALL
    labels[(band < 0) & (band > -p.muscle_thickness)] = Label.MUSCLE

    breast = (d_breast < 0) & (d_thorax >= 0)
    field = _resample(_texture(p.texture_seed, p.breasts, p.chest_wall_y, p.breast_fat_margin,
                               p.fgt_fraction, (p.thorax_rx, p.thorax_ry)), x1, y1, z1)
    fgt = np.where(breast, 1 / (1 + np.exp(-field / TEXTURE_SOFTNESS)), 0).astype(np.float32)
    labels[breast & (fgt >= 0.5)] = Label.FGT

    skin = body & (d_body > -p.skin_thickness)
    tissue = breast & ~skin  # lesions grow in breast parenchyma, never in skin or muscle
    masks = np.stack([_lesion_mask(les, x1, y1, z1) & tissue for les in p.lesions]) \
        if p.lesions else np.zeros((0, *grid.shape), dtype=bool)
    if masks.shape[0]:
        labels[masks.any(axis=0)] = Label.LESION
    labels[skin] = Label.SKIN
    fgt[skin] = 0
    return Phantom(labels=labels, fgt_fraction=fgt, lesion_masks=masks)
