"""The sharpening filter of the deep harmonizers: its response, and its unpaired fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from harmonizers.sharpness import (
    UnsharpFilter,
    bin_centres,
    fit_unsharp,
    radial_log_spectrum,
)


def textured(seed: int) -> np.ndarray:
    """(z, y, x) volumes with structure at every scale: smoothed noise plus a body."""
    rng = np.random.default_rng(seed)
    body = np.zeros((8, 96, 96), np.float32)
    body[:, 12:84, 12:84] = 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=body.shape), (0, 1.0, 1.0))
    return (body * (2.0 + texture)).astype(np.float32)


def blurred(volume: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(ndimage.gaussian_filter(volume, (0, sigma, sigma)), np.float32)


def filtered(sharpening: UnsharpFilter, volume: np.ndarray) -> np.ndarray:
    return sharpening.apply(torch.from_numpy(volume)).numpy()


def test_identity_filter_changes_nothing() -> None:
    volume = textured(0)
    np.testing.assert_array_equal(filtered(UnsharpFilter(), volume), volume)


@pytest.mark.parametrize(("sigma", "shape"), [(0.7, (3, 40, 56)), (1.5, (2, 64, 64)),
                                              (2.0, (1, 4, 9))])
def test_filter_is_scipys_unsharp_mask(sigma: float, shape: tuple[int, int, int]) -> None:
    # The torch filter (it runs on a GPU too) is the unsharp mask with scipy's Gaussian,
    # edges included, even where the kernel is wider than the image (4 x 9 pixels).
    volume = np.random.default_rng(1).random(shape, dtype=np.float32) * 100
    sharpening = UnsharpFilter(1.2, sigma)
    blur = ndimage.gaussian_filter(volume.astype(np.float64), (0, sigma, sigma), truncate=3.0)
    expected = volume + 1.2 * (volume - blur)
    np.testing.assert_allclose(filtered(sharpening, volume), expected, rtol=1e-5, atol=1e-3)


def test_shared_gain_sharpens_the_image_and_is_one_in_the_air() -> None:
    body = textured(9)
    air = np.zeros((8, 96, 40), np.float32)
    image = torch.from_numpy(np.concatenate([body, air], axis=2))
    sharpening = UnsharpFilter(0.9, 1.0)
    gain = sharpening.shared_gain(image, floor=0.3)
    sharpened = sharpening.apply(image)
    assert float(gain.min()) >= 0.5 and float(gain.max()) <= 2.0
    # Where the image is above the floor and the gain within its bounds, gain x image is
    # the filtered image; far from tissue the gain is exactly 1.
    inside = (image > 0.3) & (gain > 0.5) & (gain < 2.0)
    assert inside.sum() > 0.9 * (image > 0.3).sum()
    torch.testing.assert_close((gain * image)[inside], sharpened[inside], rtol=1e-5, atol=1e-5)
    assert torch.all(gain[..., -20:] == 1.0)
    assert torch.all(UnsharpFilter().shared_gain(image, floor=0.3) == 1.0)


def test_response_matches_the_filter_on_a_sinusoid() -> None:
    # A horizontal cosine of 0.15 cycles/pixel is scaled by H(0.15) away from the edges.
    x = np.arange(128)
    image = np.tile(np.cos(2 * np.pi * 0.15 * x), (1, 128, 1)).astype(np.float32)
    sharpening = UnsharpFilter(0.8, 1.0)
    gain = np.sqrt(np.exp(sharpening.log_power_gain(np.array([0.15]))))[0]
    inner = (slice(None), slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(filtered(sharpening, image)[inner], gain * image[inner],
                               atol=0.02 * gain)


def test_fit_sharpens_a_blurred_source_and_smooths_a_sharp_one() -> None:
    sharp = [textured(seed) for seed in (1, 2)]
    soft = [blurred(v, 1.0) for v in (textured(3), textured(4))]  # other "patients"
    to_sharp = fit_unsharp(radial_log_spectrum(soft), radial_log_spectrum(sharp))
    to_soft = fit_unsharp(radial_log_spectrum(sharp), radial_log_spectrum(soft))
    assert to_sharp.amount > 0.5
    assert to_soft.amount < -0.3
    same = radial_log_spectrum(sharp)
    assert fit_unsharp(same, same) == UnsharpFilter()


def test_fitted_filter_brings_the_spectrum_closer() -> None:
    target = [textured(seed) for seed in (5, 6)]
    source = [blurred(textured(seed), 0.8) for seed in (7, 8)]
    sharpening = fit_unsharp(radial_log_spectrum(source), radial_log_spectrum(target))
    source = [filtered(sharpening, volume) for volume in source]
    band = (bin_centres() > 0.06) & (bin_centres() < 0.19)
    gap_before = radial_log_spectrum([blurred(textured(s), 0.8) for s in (7, 8)])
    gap_before = np.abs(gap_before - radial_log_spectrum(target))[band].mean()
    gap_after = np.abs(radial_log_spectrum(source) - radial_log_spectrum(target))[band].mean()
    assert gap_after < 0.3 * gap_before


@pytest.mark.parametrize(("amount", "sigma"), [(-1.0, 1.0), (0.5, 0.0), (float("nan"), 1.0)])
def test_invalid_filters_are_refused(amount: float, sigma: float) -> None:
    with pytest.raises(ValueError, match="unsharp"):
        UnsharpFilter(amount, sigma)


def test_spectra_must_have_the_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        fit_unsharp(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="no volumes"):
        radial_log_spectrum([])
