"""The evaluation metrics against values known in closed form."""

import numpy as np
import pytest

from evaluation.metrics import (
    MetricError,
    check_not_constant,
    curve_type,
    dice,
    fgt_density,
    frd,
    frechet_distance,
    gradient_similarity,
    identifiability,
    intensity_distance,
    late_change_error,
    lin_ccc,
    percent_enhancement,
    quantiles,
    roi_curve,
)

RNG = np.random.default_rng(7)


def test_ccc_is_one_for_identical_vectors_and_penalizes_shift_and_scale() -> None:
    x = RNG.normal(size=200)
    assert lin_ccc(x, x) == pytest.approx(1.0)
    # Pearson r is 1 for both of these; Lin's CCC is not (Lin 1989, eq. 2).
    shifted = lin_ccc(x, x + 1.0)
    assert shifted == pytest.approx(2 * x.var() / (2 * x.var() + 1.0))
    assert lin_ccc(x, 2 * x) < 1.0
    centred = x - x.mean()
    assert lin_ccc(centred, -centred) == pytest.approx(-1.0)


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    a = RNG.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance, means 2 apart in each of 3 dimensions: d^2 = 3 * 2^2.
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)
    # Scaled by 3 in 1D: (sigma_a - sigma_b)^2 = (1 - 3)^2 = 4.
    b = RNG.normal(size=(20000, 1))
    assert frechet_distance(b, 3 * b) == pytest.approx(4.0, rel=0.02)


def test_frd_of_identical_sets_is_about_zero_and_grows_with_shift() -> None:
    features = RNG.normal(size=(60, 8)) * [1, 10, 100, 1e3, 1, 1, 1, 1]
    assert frd(features, features) == pytest.approx(0.0, abs=1e-8)
    near = frd(features, features + 0.1 * features.std(axis=0))
    far = frd(features, features + 2.0 * features.std(axis=0))
    assert 0 < near < far


def test_a_constant_feature_is_named() -> None:
    features = RNG.normal(size=(5, 3))
    features[:, 1] = 4.0
    with pytest.raises(MetricError, match="'glcm_Contrast' is constant .* 'GE 1.5T'"):
        check_not_constant(features, ["a", "glcm_Contrast", "c"], "GE 1.5T")
    with pytest.raises(MetricError, match="constant"):
        frd(np.ones((4, 2)), np.ones((4, 2)))


def test_identifiability_is_chance_on_random_labels_and_perfect_on_separated_domains() -> None:
    features = RNG.normal(size=(200, 6))
    labels = RNG.choice(["ge", "siemens"], size=200)
    assert identifiability(features, labels).auc == pytest.approx(0.5, abs=0.1)
    separated = features + np.where(labels == "ge", 3.0, 0.0)[:, None]
    result = identifiability(separated, labels)
    assert result.auc > 0.99
    assert result.classes == ("ge", "siemens")
    assert result.fpr[0] == 0 and result.tpr[-1] == 1
    three = RNG.choice(["a", "b", "c"], size=150)
    assert identifiability(RNG.normal(size=(150, 4)), three).auc == pytest.approx(0.5, abs=0.1)
    with pytest.raises(MetricError, match="two or more domains"):
        identifiability(features[:10], ["ge"] * 10)


def test_curve_types_of_known_curves() -> None:
    assert curve_type(np.array([100.0, 180.0, 200.0, 240.0])) == "persistent"
    assert curve_type(np.array([100.0, 200.0, 205.0, 198.0])) == "plateau"
    assert curve_type(np.array([100.0, 220.0, 210.0, 170.0])) == "washout"
    # Units do not change the type: it is read from ratios.
    assert curve_type(7.5 * np.array([100.0, 220.0, 210.0, 170.0])) == "washout"
    with pytest.raises(MetricError, match=">= 3 phases"):
        curve_type(np.array([1.0, 2.0]))


def test_late_change_error_measures_shape_within_a_type() -> None:
    """Both curves are persistent; the late change is +20 % against +10.5 %."""
    mask = np.ones((1, 2, 2), dtype=bool)
    a = np.array([100.0, 180.0, 200.0, 240.0])[:, None, None, None] * np.ones((4, 1, 2, 2))
    b = np.array([100.0, 190.0, 200.0, 221.0])[:, None, None, None] * np.ones((4, 1, 2, 2))
    assert curve_type(roi_curve(a, mask)) == curve_type(roi_curve(b, mask)) == "persistent"
    assert late_change_error(a, b, mask) == pytest.approx(9.5)
    # Units do not count: a curve in other units has the same shape.
    assert late_change_error(a, 3.0 * a, mask) == pytest.approx(0.0)


def test_percent_enhancement_and_roi_curves() -> None:
    assert percent_enhancement(np.array([50.0, 75.0, 100.0])).tolist() == [0.0, 50.0, 100.0]
    with pytest.raises(MetricError, match="pre-contrast"):
        percent_enhancement(np.array([0.0, 1.0]))
    pixels = np.stack([np.full((2, 3, 3), v, dtype=np.float32) for v in (10.0, 20.0)])
    mask = np.zeros((2, 3, 3), dtype=bool)
    mask[0, 1, 1] = True
    assert roi_curve(pixels, mask).tolist() == [10.0, 20.0]
    with pytest.raises(MetricError, match="empty"):
        roi_curve(pixels, np.zeros_like(mask))


def test_gradient_similarity_is_scale_free_and_drops_when_structure_changes() -> None:
    volume = RNG.normal(size=(4, 32, 32)).astype(np.float32)
    mask = np.ones(volume.shape, dtype=bool)
    assert gradient_similarity(volume, 40 * volume, mask) == pytest.approx(1.0, abs=1e-5)
    other = RNG.normal(size=volume.shape).astype(np.float32)
    assert gradient_similarity(volume, other, mask) < 0.3


def test_fgt_density_counts_the_bright_class() -> None:
    breast = np.ones((4, 20, 20), dtype=bool)
    pre = np.full(breast.shape, 100.0) + RNG.normal(scale=2.0, size=breast.shape)
    pre[:, :5, :] += 300.0  # a quarter of the breast is bright FGT
    assert fgt_density(pre, breast) == pytest.approx(25.0, abs=0.5)
    assert fgt_density(1000 * pre, breast) == pytest.approx(25.0, abs=0.5)


def test_dice() -> None:
    a = np.zeros(10, dtype=bool)
    a[:4] = True
    b = np.zeros(10, dtype=bool)
    b[2:6] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_intensity_distance_is_zero_for_the_same_distribution_and_counts_iqrs() -> None:
    values = RNG.normal(loc=500.0, scale=100.0, size=50000)
    reference = quantiles(values)
    assert intensity_distance(values, reference) == pytest.approx(0.0, abs=1e-9)
    iqr = reference[75] - reference[25]
    assert intensity_distance(values + iqr, reference) == pytest.approx(1.0, abs=0.02)
