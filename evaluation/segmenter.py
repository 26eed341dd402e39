"""A breast and FGT segmenter tuned on the reference scanner, for the benchmark's downstream task.

The issue asks for segmentation Dice with "a segmenter trained or tuned on the reference
scanner's simulated data, so the domain shift is real". A CNN cannot be trained in seconds on
two CPU cores, so this is a per-voxel decision tree (scikit-learn) on features a deep model
would also lean on: the pre-contrast signal and its local means at two scales, the peak
post-contrast enhancement (the largest post - pre difference, so it does not depend on when a
scanner samples its phases) and its local mean, and the voxel's position in millimetres from
the centre of the field of view (every profile centres the field of view on the breasts;
``|x|`` so that head-first and feet-first prone agree). The intensities are absolute: a
series in other units or with other contrast is misread, as it would be by a network trained
on one scanner, and a harmonizer that brings it to reference units should repair that.

The tree is fitted on native ``siemens-3t`` renderings of training patients against the
simulator's truth labels (three classes: outside the breast, breast fat or lesion, FGT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from evaluation.virtual_scanner.profiles import load_profile
from evaluation.virtual_scanner.render import render_seed
from evaluation.virtual_scanner.tissues import Label

# Training patients: disjoint from the harmonizers' training seeds (1000-1007, 2000-2007),
# model cards (3000-3002), harmonizer quality (4000-), the domain reference (5000-) and the
# benchmark cohort (6000-).
TRAINING_SEEDS: tuple[int, ...] = (7000, 7001, 7002, 7003)
_OUTSIDE, _BREAST, _FGT = 0, 1, 2
_FINE_MM, _COARSE_MM = 2.0, 8.0  # smoothing scales of the local-mean features
_VOXELS_PER_CLASS = 4000  # sampled per class and training patient
_TREE_DEPTH = 10
_MIN_LEAF = 20
FEATURE_NAMES: tuple[str, ...] = (
    "pre", f"pre mean {_FINE_MM:g} mm", f"pre mean {_COARSE_MM:g} mm", "peak enhancement",
    f"peak enhancement mean {_FINE_MM:g} mm", "|x| mm", "y mm", "z mm",
)


def voxel_features(pixels: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """(voxels, features) float32 of a (phase, z, y, x) DCE series; rows in C order."""
    if pixels.ndim != 4 or pixels.shape[0] < 2:
        raise ValueError(f"need a (phase, z, y, x) series with >= 2 phases, got {pixels.shape}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    pre = pixels[0].astype(np.float32)
    peak = (pixels[1:].max(axis=0) - pixels[0]).astype(np.float32)

    def smooth(volume: np.ndarray, mm: float) -> np.ndarray:
        return np.asarray(ndimage.gaussian_filter(volume, sigma=mm / spacing))

    shape = pre.shape
    z, y, x = (((np.arange(n) - (n - 1) / 2) * d).astype(np.float32)
               for n, d in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, np.abs(x), indexing="ij")
    columns = (pre, smooth(pre, _FINE_MM), smooth(pre, _COARSE_MM), peak,
               smooth(peak, _FINE_MM), xx, yy, zz)
    return np.stack([c.ravel() for c in columns], axis=1).astype(np.float32)


def label_classes(labels: np.ndarray) -> np.ndarray:
    """The segmenter's classes of a truth label map: outside, breast fat or lesion, FGT."""
    classes = np.full(labels.shape, _OUTSIDE, dtype=np.uint8)
    classes[np.isin(labels, (Label.FAT, Label.LESION))] = _BREAST
    classes[labels == Label.FGT] = _FGT
    return classes


@dataclass(frozen=True)
class Segmentation:
    """Boolean (z, y, x) masks: the breast (fat, FGT and lesions) and the FGT within it."""

    breast: np.ndarray
    fgt: np.ndarray


class VoxelSegmenter:
    """A fitted per-voxel classifier; see the module docstring."""

    def __init__(self, tree: object, seeds: Sequence[int], profile: str) -> None:
        self._tree = tree
        self.seeds = tuple(seeds)
        self.profile = profile

    def segment(self, pixels: np.ndarray, spacing_mm: Sequence[float]) -> Segmentation:
        """Breast and FGT masks of a (phase, z, y, x) series in the series' own units."""
        predicted = self._tree.predict(voxel_features(pixels, spacing_mm))  # type: ignore[attr-defined]
        classes = np.asarray(predicted, dtype=np.uint8).reshape(pixels.shape[1:])
        return Segmentation(breast=classes != _OUTSIDE, fgt=classes == _FGT)


def fit_segmenter(matrix: int | None, slices: int | None,
                  seeds: Sequence[int] = TRAINING_SEEDS, profile: str = "siemens-3t",
                  random_state: int = 0) -> VoxelSegmenter:
    """Fit the tree on ``profile``'s native renderings of ``seeds`` (class-balanced samples)."""
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(random_state)
    scanner = load_profile(profile)
    rows, targets = [], []
    for seed in seeds:
        r = render_seed(seed, scanner, matrix, slices)
        features = voxel_features(r.pixels, r.spacing_mm)
        classes = label_classes(r.labels).ravel()
        for value in (_OUTSIDE, _BREAST, _FGT):
            index = np.flatnonzero(classes == value)
            take = rng.choice(index, size=min(_VOXELS_PER_CLASS, index.size), replace=False)
            rows.append(features[take])
            targets.append(classes[take])
    tree = DecisionTreeClassifier(max_depth=_TREE_DEPTH, min_samples_leaf=_MIN_LEAF,
                                  random_state=random_state)
    tree.fit(np.concatenate(rows), np.concatenate(targets))
    return VoxelSegmenter(tree, seeds, profile)
