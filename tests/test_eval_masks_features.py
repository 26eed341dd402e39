"""Breast/FGT masks against the simulator's truth labels, and the radiomic feature table."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.features import FEATURE_SET_VERSION, MIN_VOXELS, feature_names, series_features
from evaluation.masks import NoBreastMaskError, breast_mask, fgt_mask
from evaluation.metrics import MetricError, dice, fgt_density
from evaluation.virtual_scanner.profiles import available_profiles, load_profile
from evaluation.virtual_scanner.render import Rendering, render_seed
from evaluation.virtual_scanner.tissues import Label

PROFILES = available_profiles()
SEEDS = (1, 2)
MATRIX, SLICES = 96, 24
BREAST_LABELS = (Label.FAT, Label.FGT, Label.LESION)


@pytest.fixture(scope="module")
def renderings() -> dict[tuple[str, int], Rendering]:
    return {(name, seed): render_seed(seed, load_profile(name), MATRIX, SLICES)
            for name in PROFILES for seed in SEEDS}


@pytest.fixture(scope="module")
def small() -> tuple[Rendering, np.ndarray, np.ndarray]:
    r = render_seed(1, load_profile("siemens-3t"), 64, 16)
    breast = breast_mask(r.pixels[0], r.spacing_mm)
    return r, breast, fgt_mask(r.pixels[0], breast)


def test_all_six_profiles_are_covered() -> None:
    assert len(PROFILES) == 6


@pytest.mark.parametrize("name", PROFILES)
def test_breast_mask_matches_truth(renderings: dict[tuple[str, int], Rendering],
                                   name: str) -> None:
    for seed in SEEDS:
        r = renderings[(name, seed)]
        breast = breast_mask(r.pixels[0], r.spacing_mm)
        truth = np.isin(r.labels, BREAST_LABELS)
        score = dice(breast, truth)
        assert score >= 0.80, f"{name} seed {seed}: breast Dice {score:.3f}"
        lesion = r.labels == Label.LESION
        if lesion.any():
            kept = (breast & lesion).sum() / lesion.sum()
            assert kept >= 0.9, f"{name} seed {seed}: {kept:.0%} of lesion voxels in the mask"
        heart_or_lung = np.isin(r.labels, (Label.HEART, Label.LUNG, Label.VESSEL))
        assert not (breast & heart_or_lung).any()
        fgt = fgt_mask(r.pixels[0], breast)
        fgt_score = dice(fgt, np.isin(r.labels, (Label.FGT, Label.LESION)))
        # Looser than the breast: the Otsu split blurs the 1 mm FGT/fat partial-volume rim.
        assert fgt_score >= 0.60, f"{name} seed {seed}: FGT Dice {fgt_score:.3f}"


def test_fgt_share_is_fgt_density(small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, fgt = small
    assert fgt.sum() and not (fgt & ~breast).any()
    share = 100.0 * fgt.sum() / breast.sum()
    assert share == pytest.approx(fgt_density(r.pixels[0], breast), abs=1e-9)


def test_masks_are_scale_free_and_find_the_posterior_side(
        small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, fgt = small
    pre = r.pixels[0]
    scaled = pre * np.float32(1000.0)
    assert np.array_equal(breast_mask(scaled, r.spacing_mm), breast)
    assert np.array_equal(fgt_mask(scaled, breast), fgt)
    # The same patient stored with rows running posterior: the mask flips with it.
    flipped = breast_mask(pre[:, ::-1].copy(), r.spacing_mm)
    assert np.array_equal(flipped, breast[:, ::-1])


@pytest.mark.parametrize("volume", [
    np.full((16, 64, 64), 7.0, np.float32),
    np.zeros((16, 64, 64), np.float32),
    np.random.default_rng(0).normal(100.0, 10.0, (16, 64, 64)).astype(np.float32),
    np.random.default_rng(1).rayleigh(10.0, (16, 64, 64)).astype(np.float32),
    np.random.default_rng(2).uniform(0.0, 1000.0, (16, 64, 64)).astype(np.float32),
], ids=["constant", "zeros", "gaussian-noise", "rayleigh-noise", "uniform-noise"])
def test_no_breast_in_constant_or_noise(volume: np.ndarray) -> None:
    with pytest.raises(NoBreastMaskError):
        breast_mask(volume, (5.0, 5.0, 5.0))


def test_no_breast_error_is_a_metric_error() -> None:
    assert issubclass(NoBreastMaskError, MetricError)


def test_tiny_body_is_no_breast(small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, _, _ = small
    # The same image read with voxels a thousand times smaller in volume: a few mL at most.
    with pytest.raises(NoBreastMaskError, match="mL"):
        breast_mask(r.pixels[0], tuple(s / 10.0 for s in r.spacing_mm))  # type: ignore[arg-type]


def test_fgt_mask_of_empty_breast_raises(small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, _ = small
    with pytest.raises(NoBreastMaskError):
        fgt_mask(r.pixels[0], np.zeros_like(breast))


def test_features_are_deterministic_finite_and_named(
        small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, fgt = small
    first = series_features(r.pixels, r.spacing_mm, breast, fgt)
    second = series_features(r.pixels, r.spacing_mm, breast, fgt)
    assert first == second
    assert list(first) == sorted(first) == feature_names()
    assert all(type(v) is float and np.isfinite(v) for v in first.values())
    for phase in ("pre", "post1"):
        for region in ("breast", "fgt"):
            for cls in ("firstorder", "glcm", "glrlm"):
                assert any(n.startswith(f"{phase}_{region}_{cls}_") for n in first)
    # Contrast arrives in the first post-contrast phase: the FGT brightens.
    assert first["post1_fgt_firstorder_Mean"] > first["pre_fgt_firstorder_Mean"]
    assert FEATURE_SET_VERSION


def test_units_scale_first_order_but_not_texture(
        small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, fgt = small
    base = series_features(r.pixels, r.spacing_mm, breast, fgt)
    scaled = series_features(r.pixels * np.float32(10.0), r.spacing_mm, breast, fgt)
    for key in ("pre_breast_firstorder_Mean", "post1_fgt_firstorder_Median"):
        assert scaled[key] == pytest.approx(10.0 * base[key], rel=1e-5)
    texture = [n for n in base if "_glcm_" in n or "_glrlm_" in n]
    assert texture
    for name in texture:
        assert scaled[name] == pytest.approx(base[name], rel=1e-4, abs=1e-9), name


def test_feature_errors(small: tuple[Rendering, np.ndarray, np.ndarray]) -> None:
    r, breast, fgt = small
    with pytest.raises(MetricError, match="breast mask has 0 voxels"):
        series_features(r.pixels, r.spacing_mm, np.zeros_like(breast), fgt)
    few = np.zeros_like(fgt)
    few.flat[np.flatnonzero(fgt)[: MIN_VOXELS - 1]] = True
    with pytest.raises(MetricError, match="FGT mask"):
        series_features(r.pixels, r.spacing_mm, breast, few)
    with pytest.raises(MetricError, match="2 phases"):
        series_features(r.pixels[:1], r.spacing_mm, breast, fgt)
    with pytest.raises(MetricError, match="differ"):
        series_features(r.pixels, r.spacing_mm, breast[:-1], fgt[:-1])
