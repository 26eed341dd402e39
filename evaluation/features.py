"""Radiomic features of one DCE series, for scanner identifiability and the FRD.

Features are pyradiomics' (van Griethuysen et al., Cancer Research 2017; definitions follow
the Image Biomarker Standardisation Initiative, Zwanenburg et al., Radiology 2020) of the
pre-contrast phase and of the first post-contrast phase, each over the breast and over the
fibroglandular tissue (FGT). Texture needs grey levels: a fixed bin *count* (not a bin width)
makes the discretized image, and so every texture feature, independent of the image's units,
which differ by orders of magnitude between vendors. First-order features keep the units on
purpose: the units are part of the scanner signature a harmonizer has to remove. There is no
resampling and no pyradiomics normalization, for the same reason.

Feature names are ``{pre|post1}_{breast|fgt}_{class}_{feature}`` (classes firstorder, glcm,
glrlm). Shape features are left out: they depend on the mask only, not on the scanner's
intensities, and pyradiomics' mesh takes longer than all intensity classes together.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import MetricError

# Bump whenever the settings, classes or naming below change, or evaluation/masks.py finds
# different regions: cached feature tables and fitted domain references are keyed by it.
FEATURE_SET_VERSION = "1"

_BIN_COUNT = 32
_INTENSITY_CLASSES = ("firstorder", "glcm", "glrlm")
_PHASES = (("pre", 0), ("post1", 1))
# Fewer voxels than this give a GLCM/GLRLM of a handful of counts: noise, not texture.
MIN_VOXELS = 10

_SETTINGS: dict[str, Any] = {
    "binCount": _BIN_COUNT,
    "normalize": False,
    "resampledPixelSpacing": None,
    "force2D": False,
    "label": 1,
    "additionalInfo": False,
    # The arrays come cropped to the mask's bounding box (see _crop); no pre-crop padding.
    "preCrop": False,
}


def _quiet_radiomics() -> None:
    """Silence pyradiomics' INFO/WARNING chatter; an audit runs it once per series."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)


@lru_cache(maxsize=1)
def _extractor(classes: tuple[str, ...]) -> Any:
    from radiomics import featureextractor

    _quiet_radiomics()
    extractor = featureextractor.RadiomicsFeatureExtractor(**_SETTINGS)
    extractor.disableAllFeatures()
    for name in classes:
        extractor.enableFeatureClassByName(name)
    return extractor


def _class_features(name: str) -> list[str]:
    """Names pyradiomics computes for a class when it is enabled whole (no deprecated ones)."""
    from radiomics import getFeatureClasses

    feature_class = getFeatureClasses()[name]
    return sorted(f for f, deprecated in feature_class.getFeatureNames().items() if not deprecated)


def feature_names() -> list[str]:
    """The sorted names :func:`series_features` returns, without computing anything."""
    names: list[str] = []
    for phase, _ in _PHASES:
        for region in ("breast", "fgt"):
            for cls in _INTENSITY_CLASSES:
                names += [f"{phase}_{region}_{cls}_{f}" for f in _class_features(cls)]
    return sorted(names)


def _crop(breast: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the breast mask: pyradiomics then copies megabytes, not the FOV."""
    nonzero = np.nonzero(breast)
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in nonzero)


def _image(array: np.ndarray, spacing_mm: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    # numpy (z, y, x) -> SimpleITK (x, y, z).
    image.SetSpacing((float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0])))
    return image


def _check_region(mask: np.ndarray, region: str) -> None:
    count = int(np.count_nonzero(mask))
    if count < MIN_VOXELS:
        raise MetricError(
            f"the {region} mask has {count} voxels; radiomic features need >= {MIN_VOXELS}"
        )


def _extract(extractor: Any, image: sitk.Image, mask: sitk.Image, prefix: str,
             region: str) -> dict[str, float]:
    try:
        result = extractor.execute(image, mask, label=1)
    except (ValueError, RuntimeError) as error:
        raise MetricError(f"pyradiomics failed on the {region} region: {error}") from None
    out: dict[str, float] = {}
    for key, value in result.items():
        if not key.startswith("original_"):
            continue
        name = prefix + key.removeprefix("original_")
        out[name] = float(np.asarray(value, dtype=np.float64))
    return out


def series_features(pixels: np.ndarray, spacing_mm: tuple[float, float, float],
                    breast: np.ndarray, fgt: np.ndarray) -> dict[str, float]:
    """Radiomic features of a (phase, z, y, x) series over its breast and FGT masks.

    Returns the features named in :func:`feature_names`, in sorted order, as finite Python
    floats. Raises MetricError for a series with fewer than two phases, masks of the wrong
    shape, a region of fewer than :data:`MIN_VOXELS` voxels, or a feature that comes out
    non-finite (a flat region, say), so that every returned table has the same columns.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[0] < 2:
        raise MetricError(
            f"features need a (phase, z, y, x) series with >= 2 phases, got {pixels.shape}"
        )
    breast = np.asarray(breast, dtype=bool)
    fgt = np.asarray(fgt, dtype=bool)
    if breast.shape != pixels.shape[1:] or fgt.shape != pixels.shape[1:]:
        raise MetricError(
            f"mask shapes {breast.shape}, {fgt.shape} differ from the volume {pixels.shape[1:]}"
        )
    _check_region(breast, "breast")
    fgt = fgt & breast
    _check_region(fgt, "FGT")
    box = _crop(breast)
    masks = {
        region: _image(mask[box].astype(np.uint8), spacing_mm)
        for region, mask in (("breast", breast), ("fgt", fgt))
    }
    extractor = _extractor(_INTENSITY_CLASSES)
    features: dict[str, float] = {}
    for phase, index in _PHASES:
        image = _image(pixels[index][box].astype(np.float32), spacing_mm)
        for region, mask in masks.items():
            features.update(_extract(extractor, image, mask, f"{phase}_{region}_", region))
    bad = sorted(name for name, value in features.items() if not np.isfinite(value))
    if bad:
        raise MetricError(f"{len(bad)} features are not finite, e.g. {bad[0]!r}")
    return dict(sorted(features.items()))
