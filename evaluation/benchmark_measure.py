"""The benchmark's metrics of one method: per harmonized series, and over groups of features.

Every number comes from :mod:`evaluation.metrics`, so the benchmark, the audit and the
sidecar report mean the same thing by the same word. Image-level metrics compare a harmonized
series with the original (source) series it was made from and, on simulated data, with the
truth rendering (ideal reference-scanner physics, see
:func:`evaluation.harmonizer_quality.truth_rendering`). Feature-level metrics compare a group
of series with the reference scanner's renderings of the same virtual patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.harmonizer_quality import Case
from evaluation.metrics import (
    MetricError,
    curve_type,
    dice,
    fgt_density,
    frd,
    gradient_similarity,
    identifiability,
    lin_ccc,
    pe_error,
    roi_curve,
)
from evaluation.segmenter import Segmentation

CCC_THRESHOLDS = (0.85, 0.90)
REGIONS = ("breast", "fgt")


def _same_type(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> float:
    return float(curve_type(roi_curve(image, mask)) == curve_type(roi_curve(other, mask)))


def image_metrics(image: np.ndarray, case: Case, segmentation: Segmentation,
                  original_segmentation: Segmentation) -> dict[str, list[float]]:
    """Kinetics, structure and segmentation metrics of one harmonized series.

    Lists, so that lesions, patients and sources pool. A region whose curve has no percent
    enhancement (pre-contrast signal <= 0 after harmonization) adds no value; its failure is
    counted under ``"failed_rois"``.
    """
    original = case.acquisition.pixels
    values: dict[str, list[float]] = {"failed_rois": []}
    regions = [("lesion", m) for m in case.lesions] + [("fgt", case.fgt)]
    for kind, mask in regions:
        try:
            measured = {
                f"pe_{kind}_orig": pe_error(image, original, mask),
                f"pe_{kind}_truth": pe_error(image, case.truth, mask),
                f"type_{kind}_orig": _same_type(image, original, mask),
                f"type_{kind}_truth": _same_type(image, case.truth, mask),
            }
        except MetricError:
            values["failed_rois"].append(1.0)
            continue
        for key, value in measured.items():
            values.setdefault(key, []).append(value)
    values["gradient"] = [float(np.mean([gradient_similarity(o, h, case.breast)
                                         for o, h in zip(original, image, strict=True)]))]
    harmonized_density = fgt_density(image[0], case.breast)
    values["density_orig"] = [abs(harmonized_density - fgt_density(original[0], case.breast))]
    values["density_truth"] = [abs(harmonized_density - 100 * case.true_density)]
    values["dice_breast_truth"] = [dice(segmentation.breast, case.breast)]
    values["dice_fgt_truth"] = [dice(segmentation.fgt, case.fgt)]
    values["dice_breast_orig"] = [dice(segmentation.breast, original_segmentation.breast)]
    values["dice_fgt_orig"] = [dice(segmentation.fgt, original_segmentation.fgt)]
    return values


def usable_features(groups: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean per feature: finite in every row and not constant within any group.

    A feature constant within a group gives no Fréchet covariance, no CCC spread and no ComBat
    variance (ComBat divides by it), so every method is scored on the same usable set.
    """
    keep = np.ones(groups[0].shape[1], dtype=bool)
    for group in groups:
        keep &= np.all(np.isfinite(group), axis=0)
        if len(group) > 1:
            with np.errstate(invalid="ignore"):
                keep &= np.ptp(group, axis=0) > 0
    return keep


def region_frd(group: np.ndarray, reference: np.ndarray, names: Sequence[str],
               region: str) -> float:
    """FRD over the features of one region (names ``{phase}_{region}_{class}_{feature}``)."""
    columns = [i for i, name in enumerate(names) if name.split("_")[1] == region]
    if not columns:
        raise MetricError(f"no features of region {region!r}")
    return frd(group[:, columns], reference[:, columns])


def ccc_shares(group: np.ndarray, reference: np.ndarray) -> list[float]:
    """Percent of features whose Lin's CCC between paired rows exceeds each threshold."""
    cccs = np.asarray([lin_ccc(group[:, j], reference[:, j]) for j in range(group.shape[1])])
    return [float(100 * np.mean(cccs > t)) for t in CCC_THRESHOLDS]


def feature_metrics(group: np.ndarray, reference: np.ndarray, names: Sequence[str],
                    labels: Sequence[str], reference_label: str) -> dict[str, float]:
    """FRD per region, identifiability AUC and CCC shares of ``group`` vs paired ``reference``.

    ``group`` and ``reference`` have one row per series, row i of each the same patient;
    ``labels`` are the group rows' domains (one domain: binary AUC; several: macro
    one-vs-rest).
    """
    values = {f"frd_{region}": region_frd(group, reference, names, region)
              for region in REGIONS}
    domains = [*labels, *[reference_label] * len(reference)]
    values["auc"] = identifiability(np.vstack([group, reference]), domains).auc
    above_85, above_90 = ccc_shares(group, reference)
    values["ccc85"], values["ccc90"] = above_85, above_90
    return values
