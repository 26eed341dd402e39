"""HistogramHarmonizer on synthetic DCE phantoms built here.

A phantom patient is an intrinsic signal ``s`` (air 0, suppressed fat, textured FGT, an
enhancing lesion) per phase; a "scanner" renders it as ``gain * 1000 * s ** gamma`` plus
magnitude noise. Different gammas are a contrast difference between domains that no linear
rescaling can remove; different gains are the arbitrary per-series scaling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain
from harmonizers.foreground import breast_foreground
from harmonizers.histogram import HistogramHarmonizer, foreground_landmarks, piecewise_linear

SOURCE = ScannerDomain("GE", 1.5)
TARGET = ScannerDomain("SIEMENS", 3.0)
SHAPE = (6, 40, 48)
PHASE_TIMES = (0.0, 90.0, 180.0, 270.0)


def intrinsic(seed: int, fgt_radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(phase, z, y, x) intrinsic signal in [0, ~1.6] and the lesion mask of one patient.

    ``fgt_radius`` (a fraction of the body) sets the FGT density; random if not given.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE, dtype=np.float64)
    centre_y, centre_x = SHAPE[1] * 0.55, SHAPE[2] / 2
    body = ((y - centre_y) / (SHAPE[1] * 0.4)) ** 2 + ((x - centre_x) / (SHAPE[2] * 0.42)) ** 2 < 1
    # Patients differ in FGT density: the FGT ellipse's size varies.
    radius = rng.uniform(0.35, 0.7) if fgt_radius is None else fgt_radius
    fgt = body & (((y - centre_y) / (SHAPE[1] * 0.4 * radius)) ** 2
                  + ((x - centre_x) / (SHAPE[2] * 0.42 * radius)) ** 2 < 1)
    lesion = fgt & ((y - centre_y) ** 2 + (x - centre_x) ** 2 + (2 * (z - 3)) ** 2 < 16)
    pre = np.where(body, rng.uniform(0.2, 0.4, size=SHAPE), 0.0)
    pre[fgt] = rng.uniform(0.55, 0.8, size=int(fgt.sum()))
    pre[lesion] = 0.65
    # Enhancement per phase: slow background in FGT, fast with washout in the lesion.
    fgt_curve = np.array([0.0, 0.1, 0.18, 0.25])
    lesion_curve = np.array([0.0, 1.4, 1.2, 1.0])
    lesion_spread = rng.uniform(0.6, 1.0, size=int(lesion.sum()))
    phases = np.repeat(pre[None], len(PHASE_TIMES), axis=0)
    for k in range(1, len(PHASE_TIMES)):
        phases[k][fgt] *= 1 + fgt_curve[k]
        phases[k][lesion] = pre[lesion] * (1 + lesion_curve[k] * lesion_spread)
    return phases, lesion


def scan(
    phases: np.ndarray, *, gain: float, gamma: float, domain: ScannerDomain | None, seed: int
) -> Acquisition:
    """Render intrinsic signal on a scanner with the given gain and contrast (gamma)."""
    rng = np.random.default_rng(seed)
    clean = gain * 1000.0 * phases**gamma
    sigma = 5.0 * gain
    noise = rng.normal(0, sigma, (2, *clean.shape))
    noisy = np.abs(clean + noise[0] + 1j * noise[1])
    return Acquisition(
        pixels=noisy.astype(np.float32),
        spacing_mm=(2.0, 1.0, 1.0),
        phase_times_s=PHASE_TIMES,
        domain=domain,
        repetition_time_ms=5.0,
        flip_angle_deg=12.0,
    )


def source_scan(seed: int, gain: float) -> Acquisition:
    return scan(intrinsic(seed)[0], gain=gain, gamma=1.6, domain=SOURCE, seed=seed + 500)


def target_scan(seed: int, gain: float = 1.0) -> Acquisition:
    return scan(intrinsic(seed)[0], gain=gain, gamma=1.0, domain=TARGET, seed=seed + 900)


def fitted() -> HistogramHarmonizer:
    """Fitted on unpaired patients, each series with its own gain.

    Source gains vary widely; target gains scatter around 1, the target scanner's scale.
    """
    rng = np.random.default_rng(7)
    source_gains, target_gains = rng.uniform(0.3, 4.0, size=6), rng.uniform(0.8, 1.25, size=6)
    source = [source_scan(100 + i, gain) for i, gain in enumerate(source_gains)]
    target = [target_scan(200 + i, gain) for i, gain in enumerate(target_gains)]
    return HistogramHarmonizer.fit(source, target)


@pytest.fixture(scope="module")
def harmonizer() -> HistogramHarmonizer:
    return fitted()


def test_mapping_is_monotone_and_extrapolates(harmonizer: HistogramHarmonizer) -> None:
    x, y = harmonizer.mapping(source_scan(1, 2.0).pre_contrast)
    grid = np.linspace(x[0] - 2 * (x[-1] - x[0]), x[-1] + 3 * (x[-1] - x[0]), 5001)
    values = piecewise_linear(grid, x, y)
    assert np.all(np.diff(values) > 0)
    assert values[-1] > y[-1] + (y[-1] - y[0])  # kept rising far past the last knot


def test_piecewise_linear_is_interp_between_knots_and_a_line_beyond() -> None:
    x = np.array([10.0, 20.0, 50.0, 55.0, 100.0])
    y = np.array([0.0, 5.0, 40.0, 80.0, 90.0])
    inside = np.linspace(10.0, 100.0, 1001)
    np.testing.assert_allclose(piecewise_linear(inside, x, y), np.interp(inside, x, y),
                               rtol=1e-12, atol=1e-9)
    slope = 90.0 / 90.0
    np.testing.assert_allclose(piecewise_linear(np.array([0.0, 130.0]), x, y),
                               [-10.0 * slope, 90.0 + 30.0 * slope])
    as_float32 = piecewise_linear(inside.astype(np.float32), x, y)
    assert as_float32.dtype == np.float32
    np.testing.assert_allclose(as_float32, np.interp(inside, x, y), atol=1e-4)


def test_same_mapping_for_every_phase(harmonizer: HistogramHarmonizer) -> None:
    acq = source_scan(2, 1.7)
    pixels = acq.pixels.copy()
    pixels[2] = pixels[0]  # a "post-contrast" phase identical to the pre-contrast
    acq = Acquisition(pixels=pixels, spacing_mm=acq.spacing_mm, phase_times_s=acq.phase_times_s)
    out = harmonizer.harmonize(acq)
    np.testing.assert_array_equal(out[2], out[0])
    x, y = harmonizer.mapping(acq.pre_contrast)
    for phase in range(acq.n_phases):
        expected = np.maximum(piecewise_linear(acq.pixels[phase], x, y), 0)
        np.testing.assert_allclose(out[phase], expected, rtol=1e-6)


def test_enhancement_order_is_kept(harmonizer: HistogramHarmonizer) -> None:
    phases, lesion = intrinsic(3)
    acq = scan(phases, gain=2.5, gamma=1.6, domain=SOURCE, seed=3)
    out = harmonizer.harmonize(acq)
    body = out[0] > 0
    # Per voxel, the sign of every phase-to-phase change survives (rising, washout).
    changes_in, changes_out = np.diff(acq.pixels, axis=0), np.diff(out, axis=0)
    assert np.array_equal(np.sign(changes_in[:, body]), np.sign(changes_out[:, body]))
    # The lesion shares one intrinsic baseline, so its percent-enhancement ranks are the
    # ranks of its peak values; they must be the same before and after.
    peak_in, peak_out = acq.pixels[1][lesion], out[1][lesion]
    assert np.array_equal(np.argsort(peak_in, kind="stable"), np.argsort(peak_out, kind="stable"))


def test_enhancement_above_p99_is_extrapolated_not_clipped(
    harmonizer: HistogramHarmonizer,
) -> None:
    acq = source_scan(4, 1.3)
    x, y = harmonizer.mapping(acq.pre_contrast)
    p99 = foreground_landmarks(acq.pre_contrast, harmonizer.percentiles)[-1]
    out = harmonizer.harmonize(acq)
    bright = acq.pixels[1] > max(p99, x[-1]) * 1.2
    assert bright.sum() > 10, "phantom lesion should enhance above the pre-contrast p99"
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    np.testing.assert_allclose(
        out[1][bright], y[-1] + (acq.pixels[1][bright] - x[-1]) * slope, rtol=1e-5
    )
    assert out[1][bright].max() > y[-1] * 1.2


def landmark_error(acq: np.ndarray, reference: np.ndarray, percentiles: tuple[float, ...]) -> float:
    """Mean landmark distance as a fraction of the reference's p_low..p_high range."""
    own = foreground_landmarks(acq, percentiles)
    ref = foreground_landmarks(reference, percentiles)
    return float(np.mean(np.abs(own - ref)) / (ref[-1] - ref[0]))


def test_source_lands_near_target_landmarks(harmonizer: HistogramHarmonizer) -> None:
    # A held-out patient scanned on both domains, with an arbitrary source gain.
    source, target = source_scan(300, 3.3), target_scan(300, 1.0)
    out = harmonizer.harmonize(source)
    p = harmonizer.percentiles
    # Baseline: only rescale the source linearly onto the target's p_low..p_high range,
    # which fixes gain but not the contrast difference.
    own = foreground_landmarks(source.pre_contrast, p)
    low, high = harmonizer.target_range
    linear = low + (source.pre_contrast - own[0]) / (own[-1] - own[0]) * (high - low)
    before = landmark_error(linear, target.pre_contrast, p)
    after = landmark_error(out[0], target.pre_contrast, p)
    assert after < 0.5 * before, (before, after)


def test_patient_differences_survive(harmonizer: HistogramHarmonizer) -> None:
    """A dense and a fatty breast stay as different as on the target scanner.

    Classic Nyúl, mapping each image's own landmarks onto one standard, would make their
    harmonized histograms the same.
    """
    p = harmonizer.percentiles
    medians = {}
    for name, radius in (("dense", 0.75), ("fatty", 0.3)):
        phases = intrinsic(310, fgt_radius=radius)[0]
        source = scan(phases, gain=2.0, gamma=1.6, domain=SOURCE, seed=311)
        target = scan(phases, gain=1.0, gamma=1.0, domain=TARGET, seed=312)
        out = harmonizer.harmonize(source)
        medians[name] = (
            foreground_landmarks(out[0], p)[p.index(50)],
            foreground_landmarks(target.pixels[0], p)[p.index(50)],
        )
    harmonized_gap = medians["dense"][0] - medians["fatty"][0]
    target_gap = medians["dense"][1] - medians["fatty"][1]
    assert target_gap > 0
    assert abs(harmonized_gap - target_gap) < 0.25 * target_gap, (harmonized_gap, target_gap)


def test_series_gain_does_not_matter(harmonizer: HistogramHarmonizer) -> None:
    a = source_scan(5, 0.5)
    b = Acquisition(pixels=a.pixels * np.float32(4.0), spacing_mm=a.spacing_mm,
                    phase_times_s=a.phase_times_s, domain=SOURCE)
    np.testing.assert_allclose(harmonizer.harmonize(a), harmonizer.harmonize(b), rtol=1e-4,
                               atol=1e-3)


def test_output_contract(harmonizer: HistogramHarmonizer) -> None:
    acq = source_scan(6, 0.8)
    out = harmonizer.harmonize(acq)
    assert out.dtype == np.float32 and out.shape == acq.pixels.shape
    assert out.min() >= 0
    # Air stays near the target's darkest values rather than being lifted to tissue.
    air = ~breast_foreground(acq.pre_contrast)
    assert np.median(out[0][air]) < harmonizer.target_range[0]


def test_save_load_round_trip(harmonizer: HistogramHarmonizer, tmp_path: Path) -> None:
    harmonizer.save(tmp_path)
    loaded = HistogramHarmonizer.load(tmp_path)
    assert loaded.percentiles == harmonizer.percentiles
    assert (loaded.source_domain, loaded.target_domain) == (SOURCE, TARGET)
    acq = source_scan(7, 1.1)
    np.testing.assert_array_equal(loaded.harmonize(acq), harmonizer.harmonize(acq))


def test_fit_rejects_mixed_domains() -> None:
    mixed = [source_scan(8, 1.0), target_scan(9)]
    with pytest.raises(ValueError, match="mix scanner domains"):
        HistogramHarmonizer.fit(mixed, [target_scan(10)])


def test_flat_series_is_rejected(harmonizer: HistogramHarmonizer) -> None:
    flat = Acquisition(pixels=np.full((2, 2, 8, 8), 7, np.float32), spacing_mm=(1, 1, 1),
                       phase_times_s=(0.0, 60.0))
    with pytest.raises(ValueError, match="flat"):
        harmonizer.harmonize(flat)
