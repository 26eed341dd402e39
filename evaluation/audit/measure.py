"""Measure one acquisition: masks, radiomic features, intensities, kinetics, FGT density.

Runs in a worker process, so it takes file paths and returns plain JSON-able values (what the
cache stores). Masks come from the pre-contrast phase (phase 0), as a reader would draw them;
every quantity is from :mod:`evaluation.metrics` or :mod:`evaluation.features`, so the audit
means by each word what the benchmark and the sidecar report mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom import dcmread

from dicomnode.assembly import AssemblyError, assemble
from evaluation.features import FEATURE_SET_VERSION, series_features
from evaluation.masks import breast_mask, fgt_mask
from evaluation.metrics import (
    MetricError,
    curve_type,
    fgt_density,
    percent_enhancement,
    quantiles,
    roi_curve,
)

# Bumped whenever what is measured here changes, so cached entries are measured again.
MEASURE_VERSION = f"audit-1/{FEATURE_SET_VERSION}"
HISTOGRAM_QUANTILES = 101  # of breast pre-contrast intensities: a distribution at fixed size


def measure(files: Sequence[str]) -> dict[str, Any]:
    """The measurements of the acquisition in ``files``; ``{"error": why}`` if it has none.

    Only failures of the data (no breast found, an acquisition that will not assemble, a
    region with no signal) are returned as errors; anything else is a bug and raises.
    """
    try:
        return _measure(files)
    except (MetricError, AssemblyError) as exc:
        return {"error": str(exc)}


def _measure(files: Sequence[str]) -> dict[str, Any]:
    # Deferred reads: a slice's pixels are read when assembly reaches it, then dropped.
    assembled = assemble([dcmread(path, defer_size="64 KB") for path in files])
    acquisition = assembled.acquisition
    pixels, spacing = acquisition.pixels, acquisition.spacing_mm
    pre = pixels[0]
    breast = breast_mask(pre, spacing)
    fgt = fgt_mask(pre, breast)
    features = series_features(pixels, spacing, breast, fgt)
    breast_curve = roi_curve(pixels, breast)
    fgt_curve = roi_curve(pixels, fgt)  # series_features has checked the FGT is not empty
    return {
        "features": {name: float(value) for name, value in features.items()},
        "quantiles": quantiles(pre[breast], HISTOGRAM_QUANTILES).tolist(),
        "phase_times_s": [float(t) for t in acquisition.phase_times_s],
        "breast_curve": breast_curve.tolist(),
        "breast_pe": percent_enhancement(breast_curve).tolist(),
        "fgt_curve": fgt_curve.tolist(),
        "fgt_pe": percent_enhancement(fgt_curve).tolist(),
        "curve_type": curve_type(fgt_curve) if len(fgt_curve) >= 3 else None,
        "fgt_density": fgt_density(pre, breast),
        "breast_voxels": int(breast.sum()),
        "fgt_voxels": int(np.count_nonzero(fgt)),
        "shape": list(pixels.shape),
    }
