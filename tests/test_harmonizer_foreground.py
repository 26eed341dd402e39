"""breast_foreground on magnitude phantoms: air with Rayleigh noise, dim fat, bright FGT."""

from __future__ import annotations

import numpy as np
import pytest

from harmonizers.foreground import breast_foreground


def phantom(
    *, slices: int = 6, size: int = 96, radius: float = 0.4, fat: float = 40.0,
    fgt: float = 200.0, fgt_radius: float = 0.5, sigma: float = 5.0, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume, body mask and fat mask; ``radius`` is the body's share of the field of view."""
    rng = np.random.default_rng(seed)
    _, y, x = np.indices((slices, size, size), dtype=np.float64)
    r2 = ((y - size / 2) ** 2 + (x - size / 2) ** 2) / (radius * size) ** 2
    body = r2 < 1
    gland = r2 < fgt_radius**2
    signal = np.where(body, fat, 0.0)
    signal[gland] = fgt
    noise = rng.normal(0, sigma, (2, *signal.shape))
    volume = np.abs(signal + noise[0] + 1j * noise[1]).astype(np.float32)
    return volume, body, body & ~gland


@pytest.mark.parametrize(
    "case",
    [
        {},  # typical: fat suppressed to 8x the noise
        {"radius": 0.2},  # small body, mostly air
        {"radius": 0.49},  # body fills the field of view
        {"fat": 40.0, "fgt": 500.0, "fgt_radius": 0.9},  # dense breast, strong suppression
        {"fat": 400.0, "fgt": 150.0},  # no fat suppression: fat brighter than FGT
        {"sigma": 0.01},  # almost noiseless air
    ],
)
def test_body_in_air_out(case: dict[str, float]) -> None:
    volume, body, fat = phantom(**case)  # type: ignore[arg-type]
    mask = breast_foreground(volume)
    assert (mask & fat).sum() > 0.98 * fat.sum()
    assert (mask & body).sum() > 0.98 * body.sum()
    assert (mask & ~body).sum() < 0.005 * (~body).sum()


def test_single_slice_and_offset_intensities() -> None:
    volume, body, _ = phantom(slices=1)
    for shifted in (volume, volume - 1000.0, volume * 1e-4):
        mask = breast_foreground(shifted.astype(np.float32))
        assert mask.shape == volume.shape
        assert (mask & body).sum() > 0.98 * body.sum()
        assert (mask & ~body).sum() < 0.005 * (~body).sum()


def test_zero_filled_corners_stay_background() -> None:
    volume, body, _ = phantom()
    _, y, x = np.indices(volume.shape)
    corners = (y - 48) ** 2 + (x - 48) ** 2 > 46**2
    volume[corners] = 0.0
    mask = breast_foreground(volume)
    assert (mask & body).sum() > 0.98 * body.sum()
    assert (mask & ~body).sum() < 0.005 * (~body).sum()


def test_dark_cyst_inside_and_hot_specks_outside() -> None:
    volume, body, _ = phantom(seed=3)
    _, y, x = np.indices(volume.shape)
    cyst = (y - 48) ** 2 + (x - 52) ** 2 < 6**2  # dark as air, but inside the gland
    volume[cyst] = np.float32(2.0)
    specks = np.zeros_like(body)
    specks[:, 3:90:9, 4] = True  # isolated spikes in the air at the left edge
    volume[specks] = np.float32(300.0)
    mask = breast_foreground(volume)
    assert mask[cyst].all()
    assert not mask[specks].any()


def test_never_empty() -> None:
    assert breast_foreground(np.full((1, 8, 8), 3.0, np.float32)).all()
    with_nan = np.full((2, 8, 8), np.nan, np.float32)
    with_nan[0, 4, 4] = 1.0
    assert breast_foreground(with_nan).any()


def test_rejects_non_3d() -> None:
    with pytest.raises(ValueError, match="z, y, x"):
        breast_foreground(np.zeros((8, 8), np.float32))
