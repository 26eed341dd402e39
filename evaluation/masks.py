"""Breast and fibroglandular-tissue (FGT) masks found from the image alone.

A harmonized series from a real site has no ground truth, yet every image metric of the
audit is taken inside the breast. The masks are built from the pre-contrast phase:

1. The body is :func:`harmonizers.foreground.breast_foreground` (scale-free Otsu on log
   intensities).
2. Which end of the row axis is posterior is found from the data: the thorax is wide and
   runs out of the field of view posteriorly, while the breasts hang anteriorly as two narrow
   lobes (prone axial breast MRI; DICOM stores such images with columns running anterior,
   so this is normally the last row, see ``evaluation/virtual_scanner/grid.py``).
3. The anterior surface of the thorax, per column, is the least anterior extent of the body
   over the slices: the thorax is about constant along the slice axis, while each breast
   narrows to nothing at its upper and lower edges, so every column has slices where only
   the thorax (under its subcutaneous fat) reaches it. Full-breast coverage is part of every
   breast DCE protocol.
4. Subcutaneous fat over the thorax is breast-side fat, not chest wall: from that surface
   the cut moves posteriorly through the dark (fat-suppressed) fat to the first bright voxel,
   the pectoral muscle. Every profile here suppresses fat (conf/scanners/*.yaml;
   ``shared/reference/breast-dce-physics.md``, "Typical vendor protocols"), which makes fat
   the dark class of the two-class Otsu split that :func:`evaluation.metrics.fgt_density`
   also uses.

Everything anterior of that cut is breast: fat, FGT and lesions. The FGT is the bright class
of the same Otsu split, so the FGT mask's share of the breast equals ``fgt_density``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from evaluation.metrics import MetricError, fgt_threshold
from harmonizers.foreground import breast_foreground, large_components

# Smallest plausible breast region, both breasts together. Far below an adult breast (the
# simulator's smallest is ~300 mL a pair), but far above what noise specks give.
MIN_BREAST_ML = 20.0
_ROSE_SNR = 5.0
_IQR_PER_SIGMA = 1.349
# Components smaller than this share of the largest are specks, not a breast.
_MIN_COMPONENT_FRACTION = 0.05


class NoBreastMaskError(MetricError):
    """No plausible breast was found in the image."""


def breast_mask(pre_contrast: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Boolean (z, y, x) mask of the breasts (fat, FGT, lesions) in a pre-contrast volume.

    The chest wall, pectoral muscle, heart, lungs and air are left out (see module doc).
    Raises NoBreastMaskError when the image is empty or constant, or the region found is
    smaller than :data:`MIN_BREAST_ML`.
    """
    volume = np.asarray(pre_contrast, dtype=np.float32)
    if volume.ndim != 3:
        raise NoBreastMaskError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    finite = volume[np.isfinite(volume)]
    if finite.size == 0 or float(finite.max()) <= float(finite.min()):
        raise NoBreastMaskError("the pre-contrast volume is empty or constant: no breast")
    body = breast_foreground(volume)
    if body.all() or not body.any():
        raise NoBreastMaskError("no body found against the background: no breast")
    _check_tissue_stands_out(volume, body)
    flip = _posterior_is_last_row(body)
    if flip:
        body, volume = body[:, ::-1], volume[:, ::-1]
    surface, reference_slice = _thorax_surface(body)
    breasts = body & _anterior_of(surface, body.shape)
    interior = _in_plane_interior(breasts)
    threshold = _fat_fgt_threshold(volume, interior if interior.any() else breasts)
    edge = _tissue_edge(volume, body, interior, threshold)
    body = _drop_partial_volume_rim(volume, body, edge)
    cut = _muscle_surface(volume, surface, reference_slice, edge, threshold)
    mask = large_components(body & _anterior_of(cut, body.shape), _MIN_COMPONENT_FRACTION)
    if flip:
        mask = mask[:, ::-1]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    volume_ml = float(mask.sum()) * voxel_ml
    if volume_ml < MIN_BREAST_ML:
        raise NoBreastMaskError(
            f"the breast region found is {volume_ml:.1f} mL, below the {MIN_BREAST_ML:g} mL of "
            "a plausible breast: no breast in this image?"
        )
    return mask


def fgt_mask(pre_contrast: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """FGT inside ``breast``: voxels above the two-class Otsu threshold of the pre-contrast.

    The rule is :func:`evaluation.metrics.fgt_density`'s, so the mask's share of the breast
    is that density. Raises NoBreastMaskError for an empty or uniform breast or empty FGT.
    """
    breast = np.asarray(breast, dtype=bool)
    threshold = _fat_fgt_threshold(np.asarray(pre_contrast), breast)
    mask = breast & (pre_contrast > threshold)
    if not mask.any():
        raise NoBreastMaskError("no fibroglandular tissue above the fat/FGT threshold")
    return mask


def _check_tissue_stands_out(volume: np.ndarray, body: np.ndarray) -> None:
    """Raise unless the body's typical voxel stands out of the background noise.

    Any image splits into two Otsu classes, pure noise too; what a body has and noise lacks
    is tissue far above the air. The body's median must exceed the background's by
    ``_ROSE_SNR`` noise standard deviations (Rose criterion: an object is seen at an SNR of
    about 5; Rose, J Opt Soc Am 1948), the deviation estimated from the background's
    interquartile range (IQR / 1.349 for Gaussian noise). Scale-free: one image's quantiles.
    """
    air = volume[~body]
    q25, q50, q75 = (float(v) for v in np.percentile(air, (25, 50, 75)))
    sigma = (q75 - q25) / _IQR_PER_SIGMA
    contrast = float(np.median(volume[body])) - q50
    if not contrast > _ROSE_SNR * sigma:
        raise NoBreastMaskError(
            f"the foreground stands {contrast:.4g} above the background, under "
            f"{_ROSE_SNR:g} noise SDs ({sigma:.4g}): noise, no body"
        )


def _fat_fgt_threshold(volume: np.ndarray, region: np.ndarray) -> float:
    """The fat/FGT threshold inside ``region``: fgt_density's, so the two always agree."""
    try:
        return fgt_threshold(volume, region)
    except MetricError as exc:
        raise NoBreastMaskError(str(exc)) from exc


def _in_plane_interior(mask: np.ndarray) -> np.ndarray:
    """``mask`` less its one-voxel in-plane rim, where air and tissue share voxels."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return np.asarray(ndimage.binary_erosion(mask, structure=structure))


def _tissue_edge(volume: np.ndarray, body: np.ndarray, interior: np.ndarray,
                 threshold: float) -> float:
    """Intensity halfway between air and the darkest tissue (fat, below ``threshold``).

    A voxel above it is more tissue than air: the half-occupancy rule a label map drawn at
    voxel centres follows. Lungs, nearly signal-free, fall below it too.
    """
    air = volume[~body]
    fat = volume[interior & (volume <= threshold)]
    if air.size == 0 or fat.size == 0:
        raise NoBreastMaskError("no air or no fat in the image: cannot find the breast")
    return 0.5 * (float(np.median(air)) + float(np.median(fat)))


def _drop_partial_volume_rim(volume: np.ndarray, body: np.ndarray, edge: float) -> np.ndarray:
    """Drop body voxels below the tissue ``edge``, keeping holes inside the body filled.

    The foreground threshold sits a few noise sigma above air, so blurred edges (a recon
    filter, partial volume) add a halo of mostly-air voxels to the body.
    """
    kept = body & (volume >= edge)
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in kept])
    return np.asarray(filled & body)


def _posterior_is_last_row(body: np.ndarray) -> bool:
    """True when the thorax lies at the last rows (breasts towards row 0).

    The body's width (columns covered per row, summed over slices) is compared at the two
    ends of its row extent: the thorax end is wide, the nipple end narrow.
    """
    width = body.sum(axis=(0, 2))
    rows = np.flatnonzero(width)
    quarter = max(1, rows.size // 4)
    first = float(width[rows[:quarter]].mean())
    last = float(width[rows[-quarter:]].mean())
    return last > first


def _anterior_of(cut: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(1, y, x) mask of rows strictly anterior of ``cut`` (one row index per column)."""
    rows = np.arange(shape[1])[:, None]
    return (rows > cut[None, :])[None]


def _thorax_surface(body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the least anterior extent of the body over slices, and that slice.

    Columns the body never reaches get -1 (all of their body is breast) and slice 0.
    """
    ny = body.shape[1]
    present = body.any(axis=1)  # (z, x)
    # Most anterior body row in each (slice, column): the last True along rows.
    extent = np.where(present, ny - 1 - np.argmax(body[:, ::-1, :], axis=1), ny)
    reference_slice = np.argmin(extent, axis=0)
    surface = extent.min(axis=0)
    surface = np.where(surface >= ny, -1, surface)
    return surface, reference_slice


def _muscle_surface(volume: np.ndarray, surface: np.ndarray, reference_slice: np.ndarray,
                    edge: float, threshold: float) -> np.ndarray:
    """Per column: the row of the pectoral muscle's anterior surface under the thorax surface.

    Walks posteriorly from the body surface in the column's thorax-only slice, through skin
    and the dark fat-suppressed subcutaneous fat, for as long as there is tissue (the lungs
    are below ``edge``). The muscle begins at the steepest rise in signal along the walk:
    fat to muscle is the largest step up there, and it starts from fat (below the fat/FGT
    ``threshold``); with no fat under the skin the surface is the cut. A step, not a fixed
    threshold, because the receive bias and B1+ shift whole regions' levels (3 T especially)
    while local contrast stays. Behind the sternum the walk can reach the bright heart or
    aorta, whose rise may be steeper; so a second walk looks only as deep as twice the
    median depth of the first, the subcutaneous fat being of about even thickness over the
    chest.
    """
    columns = np.flatnonzero(surface >= 0)
    profiles = [volume[reference_slice[x], surface[x]::-1, x].astype(np.float64)
                for x in columns]
    depth = np.asarray([_steepest_rise(p, edge, threshold, p.size) for p in profiles])
    found = depth[depth > 0]
    if found.size == 0:
        return surface
    window = max(3, int(2 * np.median(found)) + 1)
    cut = surface.copy()
    cut[columns] = surface[columns] - np.asarray([_steepest_rise(p, edge, threshold, window)
                                                   for p in profiles])
    # One noisy column can stop early or late; its neighbours agree on the muscle.
    return np.asarray(ndimage.median_filter(cut, size=5, mode="nearest"))


def _steepest_rise(profile: np.ndarray, edge: float, threshold: float, window: int) -> int:
    """Index of the steepest rise out of fat within ``window`` voxels of tissue.

    0 when there is no tissue run of three voxels or no rise out of a voxel below
    ``threshold`` (the surface itself is then the cut).
    """
    tissue = np.flatnonzero(profile >= edge)
    if tissue.size == 0:
        return 0
    first = int(tissue[0])
    below = np.flatnonzero(profile[first:] < edge)
    last = min(first + (int(below[0]) if below.size else profile.size - first), window)
    if last - first < 3:
        return 0
    segment = profile[first:last]
    rises = np.where(segment[:-1] <= threshold, np.diff(segment), -np.inf)
    best = int(np.argmax(rises))
    return first + 1 + best if rises[best] > 0 else 0
