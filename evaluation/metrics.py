"""Numeric metrics of harmonization quality: pure functions of arrays, no I/O.

Each metric names its source. They are shared by the sidecar report, ``dicomnode-eval audit``
and ``dicomnode-eval benchmark``, so all three mean the same thing by the same word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg, ndimage

from evaluation.virtual_scanner.kinetics import enhancement_type, late_change
from harmonizers.foreground import _otsu

_OTSU_BINS_RANGE = (0.1, 99.9)  # percentiles of the breast that bound the Otsu histogram


class MetricError(ValueError):
    """The data cannot give this metric (too few samples, a constant feature, ...)."""


def lin_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient (Lin, Biometrics 1989).

    ``2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)`` with population moments:
    1 for identical vectors, lower for any shift, scale or scatter between them.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise MetricError(f"CCC needs two vectors of the same length >= 2, got {x.size}, {y.size}")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = np.mean((x - mx) * (y - my))
    denominator = vx + vy + (mx - my) ** 2
    if denominator == 0:
        return 1.0  # both constant and equal
    return float(2 * cov / denominator)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sample sets (rows are samples).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Dowson & Landau 1982; the
    formula of FID, Heusel et al. 2017).
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"feature counts differ: {a.shape[1]} and {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise MetricError(f"a Fréchet distance needs >= 2 samples per set, got {len(a)}, {len(b)}")
    mean_diff = a.mean(axis=0) - b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)  # rounding leaves tiny imaginary parts
    value = mean_diff @ mean_diff + np.trace(cov_a + cov_b - 2 * root)
    return float(max(value, 0.0))


def check_not_constant(features: np.ndarray, names: Sequence[str], group: str) -> None:
    """Raise MetricError naming the first feature that is constant within ``group``."""
    features = np.atleast_2d(features)
    if len(features) < 2:
        return
    spread = np.ptp(features, axis=0)
    for index in (int(i) for i in np.flatnonzero(spread == 0)):
        raise MetricError(
            f"feature {names[index]!r} is constant ({features[0, index]:g}) across group "
            f"{group!r}; drop it (--drop-constant-features) or add series"
        )


def frd(group: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet Radiomic Distance of a group of series to the reference group.

    Features (columns) are z-scored with the mean and standard deviation of the two groups
    pooled, so every feature weighs the same whatever its units, then the Fréchet distance
    is taken (Konz et al., "Fréchet Radiomic Distance", 2024). Identical sets give 0.
    """
    group = np.atleast_2d(np.asarray(group, dtype=np.float64))
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    pooled = np.vstack([group, reference])
    std = pooled.std(axis=0)
    if np.any(std == 0):
        raise MetricError(f"{int(np.sum(std == 0))} features are constant over both groups")
    mean = pooled.mean(axis=0)
    return frechet_distance((group - mean) / std, (reference - mean) / std)


@dataclass(frozen=True)
class Identifiability:
    """How well a cross-validated classifier tells scanner domains apart from features.

    ``auc`` is the ROC AUC (macro one-vs-rest for more than two domains): 0.5 means the
    domain cannot be told, 1.0 that it always can. ``fpr``/``tpr`` is the ROC of the first
    class against the rest (micro-averaged curve for more than two classes).
    """

    auc: float
    classes: tuple[str, ...]
    fpr: np.ndarray
    tpr: np.ndarray


def identifiability(features: np.ndarray, labels: Sequence[str] | np.ndarray, folds: int = 5,
                    seed: int = 0) -> Identifiability:
    """Cross-validated scanner identifiability from radiomic features.

    A standardized L2 logistic regression (scikit-learn) predicts each series' domain in
    stratified k-fold cross-validation; every series is scored by a model that did not see
    it. Fewer folds are used when a domain has fewer series than ``folds``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler, label_binarize

    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise MetricError(f"identifiability needs two or more domains, got {list(classes)}")
    n_folds = min(folds, int(counts.min()))
    if n_folds < 2:
        raise MetricError(
            f"identifiability needs >= 2 series per domain; {classes[np.argmin(counts)]!r} has "
            f"{int(counts.min())}"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    if len(classes) == 2:
        positive = scores[:, 1]
        auc = roc_auc_score(y == classes[1], positive)
        fpr, tpr, _ = roc_curve(y == classes[1], positive)
    else:
        auc = roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=classes)
        onehot = label_binarize(y, classes=classes)
        fpr, tpr, _ = roc_curve(onehot.ravel(), scores.ravel())
    return Identifiability(float(auc), tuple(str(c) for c in classes), fpr, tpr)


def percent_enhancement(curve: np.ndarray) -> np.ndarray:
    """``100 (S(t) - S(0)) / S(0)`` of a signal curve whose first value is pre-contrast."""
    curve = np.asarray(curve, dtype=np.float64)
    baseline = curve[0]
    if not np.isfinite(baseline) or baseline <= 0:
        raise MetricError(f"pre-contrast signal {baseline:g} gives no percent enhancement")
    return 100.0 * (curve - baseline) / baseline


def curve_type(curve: np.ndarray) -> str:
    """BI-RADS kinetic curve type: ``persistent``, ``plateau`` or ``washout``.

    Needs three or more phases (pre-contrast, early post, late post); the rule is the
    simulator's, so measured and true types are judged alike.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 3:
        raise MetricError(f"a curve type needs >= 3 phases, got {curve.size}")
    return enhancement_type(curve)


def late_change_error(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> float:
    """|difference| of the ROI curves' late change (the quantity a curve type thresholds at
    +-10 %), in percentage points: how far a curve's shape moved, including within a type."""
    a, b = (late_change(roi_curve(pixels, mask)) for pixels in (image, other))
    return float(100.0 * abs(a - b))


def roi_curve(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean signal per phase of a (phase, z, y, x) array inside a (z, y, x) mask."""
    if not mask.any():
        raise MetricError("the region is empty")
    return np.asarray(pixels[:, mask].astype(np.float64).mean(axis=1))


def pe_error(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> float:
    """Mean |difference| of the ROI's percent-enhancement curves over the post-contrast
    phases, in percentage points."""
    a = percent_enhancement(roi_curve(image, mask))
    b = percent_enhancement(roi_curve(other, mask))
    return float(np.mean(np.abs(a[1:] - b[1:])))


def gradient_similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Correlation of in-plane gradient magnitudes of two volumes inside ``mask``.

    Scale-free (a harmonizer may change units) and 1 when edges are where they were with
    the same relative strength; created or removed structure lowers it.
    """
    if a.shape != b.shape or a.shape != mask.shape:
        raise MetricError(f"shapes differ: {a.shape}, {b.shape}, mask {mask.shape}")

    def magnitude(volume: np.ndarray) -> np.ndarray:
        volume = volume.astype(np.float32)
        gy = ndimage.sobel(volume, axis=-2)
        gx = ndimage.sobel(volume, axis=-1)
        return np.hypot(gx, gy)[mask]

    ga, gb = magnitude(a), magnitude(b)
    if ga.size < 2 or ga.std() == 0 or gb.std() == 0:
        raise MetricError("no gradients inside the region")
    return float(np.corrcoef(ga, gb)[0, 1])


def fgt_threshold(pre_contrast: np.ndarray, breast: np.ndarray) -> float:
    """Two-class Otsu threshold between fat and FGT in the breast's pre-contrast.

    The histogram spans the breast's 0.1-99.9th percentiles, so a few hot voxels do not
    squeeze it; scale-free, so it means the same in any scanner's units.
    """
    values = pre_contrast[breast].astype(np.float64)
    if values.size < 2:
        raise MetricError("the breast region is empty")
    low, high = np.percentile(values, _OTSU_BINS_RANGE)
    if high <= low:
        raise MetricError("the breast is uniform: no fat/FGT contrast")
    return _otsu(values, float(low), float(high))


def fgt_density(pre_contrast: np.ndarray, breast: np.ndarray) -> float:
    """Percent of breast voxels above :func:`fgt_threshold` in the pre-contrast.

    With fat suppression FGT is the bright class (every profile here suppresses fat).
    """
    threshold = fgt_threshold(pre_contrast, breast)
    return float(100.0 * np.mean(pre_contrast[breast] > threshold))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen-Dice overlap of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def intensity_distance(values: np.ndarray, reference_quantiles: np.ndarray) -> float:
    """Distance of an intensity distribution to a reference one, relative to its scale.

    The 1-Wasserstein distance between the two distributions, computed on matched
    quantiles (``reference_quantiles`` at evenly spaced probabilities 0.5/n ... 1-0.5/n),
    divided by the reference's interquartile range: 0 for the same distribution, about 1
    for a shift by one IQR. Units matter on purpose: harmonizing to the reference scanner
    includes its units.
    """
    reference_quantiles = np.asarray(reference_quantiles, dtype=np.float64)
    n = reference_quantiles.size
    if n < 4 or np.asarray(values).size < 2:
        raise MetricError("too few intensities for a distribution distance")
    probabilities = (np.arange(n) + 0.5) / n
    quantiles = np.quantile(np.asarray(values, dtype=np.float64), probabilities)
    iqr = float(np.interp(0.75, probabilities, reference_quantiles)
                - np.interp(0.25, probabilities, reference_quantiles))
    if iqr <= 0:
        raise MetricError("the reference distribution has no spread")
    return float(np.mean(np.abs(quantiles - reference_quantiles)) / iqr)


def quantiles(values: np.ndarray, n: int = 101) -> np.ndarray:
    """``n`` quantiles at 0.5/n ... 1-0.5/n: the form :func:`intensity_distance` compares."""
    return np.quantile(np.asarray(values, dtype=np.float64), (np.arange(n) + 0.5) / n)
