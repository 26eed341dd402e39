"""PhysicsHarmonizer: the SPGR inversion, the virtual-scanner round trip, refusals, models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from evaluation.harmonizer_quality import Case, make_case, nrmse
from evaluation.metrics import pe_error
from evaluation.virtual_scanner.kinetics import late_change
from evaluation.virtual_scanner.profiles import load_profile
from evaluation.virtual_scanner.tissues import R1_RELAXIVITY, RELAXATION, Label
from harmonizers import make_models
from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain
from harmonizers.model_store import ModelError
from harmonizers.physics import (
    R1_RELAXIVITY as PRIOR_R1,
)
from harmonizers.physics import (
    T1_FGT_MS,
    PhysicsHarmonizer,
    Protocol,
    TissueLevels,
)
from harmonizers.registry import load_model

SOURCES = ("ge-1.5t", "ge-3t", "siemens-1.5t", "philips-1.5t", "philips-3t")
# A low test seed whose patient has a lesion (held-out seeds of the evaluation are 4000+).
SEED = 15


def shipped(source: str = "ge-1.5t") -> PhysicsHarmonizer:
    harmonizer = load_model("physics", f"physics-{source}_to_siemens-3t").harmonizer
    assert isinstance(harmonizer, PhysicsHarmonizer)
    return harmonizer


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case(SEED, load_profile("ge-1.5t"), load_profile("siemens-3t"), 96, 16)


def test_priors_match_the_reference_tables_the_simulator_uses() -> None:
    fgt = RELAXATION[Label.FGT]
    assert {1.5: fgt.t1_15[0], 3.0: fgt.t1_30[0]} == T1_FGT_MS
    assert PRIOR_R1 == R1_RELAXIVITY


# The synthetic series' protocol, as its headers give it.
SOURCE = Protocol(repetition_time_ms=6.5, flip_angle_deg=12, field_t=1.5, agent="gadobutrol")


def _relative_signal(protocol: Protocol, concentration: np.ndarray) -> np.ndarray:
    """FGT water's signal at each concentration (mM), relative to its pre-contrast."""
    signal = protocol.signal(protocol.r1_0_per_ms + protocol.r1_per_mM_ms * concentration)
    return np.asarray(signal / signal[0])


def _three_classes(bright: np.ndarray) -> np.ndarray:
    """Four phases of air noise around a body of three classes: lung-like (20), dim (300) and
    bright, whose value per phase is ``bright``, noiselessly; (phase, z, y, x) float32."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.0, 2.0, size=(4, 6, 32, 32)).astype(np.float32)
    pixels[:, :, 4:28, 4:8] = 20.0
    pixels[:, :, 4:28, 8:16] = 300.0
    pixels[:, :, 4:28, 16:28] = bright[:, None, None, None]
    return pixels


def _resynthesized(pixels: np.ndarray, target: Protocol) -> np.ndarray:
    """``pixels`` as a series acquired with SOURCE, through physics to ``target``."""
    acq = Acquisition(pixels=pixels, spacing_mm=(2.0, 1.0, 1.0),
                      phase_times_s=(0.0, 60.0, 120.0, 180.0), domain=ScannerDomain("GE", 1.5),
                      repetition_time_ms=SOURCE.repetition_time_ms, echo_time_ms=2.8,
                      flip_angle_deg=SOURCE.flip_angle_deg)
    harmonizer = PhysicsHarmonizer(target=target, target_levels=TissueLevels(50.0, 200.0),
                                   source_agent="gadobutrol")
    return harmonizer.harmonize(acq)


def test_enhancement_is_resynthesized_by_the_spgr_equation() -> None:
    """Noiseless pure-FGT voxels: the harmonized ratio S(t)/S(0) is the target's for C(t)."""
    target = Protocol(repetition_time_ms=4.9, flip_angle_deg=10, field_t=3.0, agent="Dotarem")
    concentration = np.array([0.0, 0.3, 1.0, 2.5])
    pixels = _three_classes(1000.0 * _relative_signal(SOURCE, concentration))
    out = _resynthesized(pixels, target)[:, 3, 16, 20]
    np.testing.assert_allclose(out / out[0], _relative_signal(target, concentration), rtol=2e-3)
    assert out[0] == pytest.approx(200.0, rel=1e-5)  # pure FGT lands on the target's level


def test_a_tissue_darker_than_fgt_keeps_its_washout() -> None:
    """A lesion of water whose pre-contrast lies near the dim class's level: read by level
    alone it is mostly static, its water would need more than any concentration gives, and
    every post phase was held at the inversion's ceiling (a flat curve). Its enhancement says
    it is water: the curve keeps its type, close to the target's for its concentrations."""
    target = Protocol(repetition_time_ms=4.9, flip_angle_deg=10, field_t=3.0, agent="gadobutrol")
    concentration = np.array([0.0, 1.2, 1.1, 0.8])
    pixels = _three_classes(np.full(4, 1000.0))
    pixels[:, :, 12:16, 20:24] = (340.0 * _relative_signal(SOURCE, concentration))[
        :, None, None, None]
    out = _resynthesized(pixels, target)[:, 3, 13, 21]
    expected = _relative_signal(target, concentration)
    assert late_change(expected) < -0.10
    assert late_change(out) < -0.10  # washout, as the truth; held at the ceiling it was 0
    assert late_change(out) == pytest.approx(late_change(expected), abs=0.05)


def test_round_trip_gets_closer_to_the_reference_scanner(case: Case) -> None:
    out = shipped().harmonize(case.acquisition)
    before = nrmse(case.acquisition.pixels, case.reference_norm, case.breast)
    after = nrmse(out, case.reference_norm, case.breast)
    assert after < 0.7 * before


def test_lesion_and_fgt_enhancement_move_towards_the_reference_physics(case: Case) -> None:
    """Percent enhancement vs the truth rendering (reference physics, no noise or B1+)."""
    assert case.lesions, "the test seed must have a lesion"
    out = shipped().harmonize(case.acquisition)
    for mask in [*case.lesions, case.fgt]:
        assert pe_error(out, case.truth, mask) < pe_error(case.acquisition.pixels, case.truth,
                                                          mask)


def test_every_voxel_keeps_the_direction_of_its_curve(case: Case) -> None:
    out = shipped().harmonize(case.acquisition)
    before = np.sign(np.diff(case.acquisition.pixels[:, case.breast], axis=0))
    after = np.sign(np.diff(out[:, case.breast], axis=0))
    assert np.mean(before == after) > 0.999


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repetition_time_ms": None}, "RepetitionTime"),
        ({"flip_angle_deg": None}, "FlipAngle"),
        ({"domain": None}, "MagneticFieldStrength"),
        ({"domain": ScannerDomain("GE", 1.0)}, "no T1/r1 priors at 1 T"),
        ({"extra": {"ContrastBolusAgent": "Magnevist"}}, "has no r1"),
    ],
)
def test_refuses_series_without_the_headers_it_needs(
    case: Case, change: dict[str, object], message: str
) -> None:
    acq = dataclasses.replace(case.acquisition, **change)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=message):
        shipped().harmonize(acq)


def test_refuses_non_finite_pixels(case: Case) -> None:
    pixels = case.acquisition.pixels.copy()
    pixels[2, 3, 40, 40] = np.nan
    with pytest.raises(ModelError, match="non-finite"):
        shipped().harmonize(dataclasses.replace(case.acquisition, pixels=pixels))


def test_deterministic_and_save_load_round_trip(case: Case, tmp_path: Path) -> None:
    harmonizer = shipped()
    first = harmonizer.harmonize(case.acquisition)
    harmonizer.save(tmp_path)
    again = PhysicsHarmonizer.load(tmp_path)
    np.testing.assert_array_equal(again.harmonize(case.acquisition), first)
    assert again.target == harmonizer.target and again.target_levels == harmonizer.target_levels
    assert (tmp_path / "model.json").read_bytes() == (
        load_model("physics", "physics-ge-1.5t_to_siemens-3t").folder / "model.json"
    ).read_bytes()


def test_load_refuses_invalid_weights(tmp_path: Path) -> None:
    shipped().save(tmp_path)
    weights = tmp_path / "model.json"
    weights.write_text(weights.read_text().replace('"flip_angle_deg": 10.0', '"flip_angle_deg": 0'))
    with pytest.raises(ValueError, match="invalid weights"):
        PhysicsHarmonizer.load(tmp_path)


@pytest.mark.parametrize("source", SOURCES)
def test_shipped_models_verify_against_their_cards(source: str) -> None:
    loaded = load_model("physics", f"physics-{source}_to_siemens-3t")
    assert loaded.card["method"] == "physics"
    assert loaded.card["training_command"] == "python -m harmonizers.make_models --method physics"
    loaded.check_source(ScannerDomain.parse(source))
    with pytest.raises(ModelError):
        loaded.check_source(ScannerDomain.parse("siemens-3t"))


def test_shipped_weights_come_from_the_committed_training_command(tmp_path: Path) -> None:
    args = ["--method", "physics", "--out", str(tmp_path), "--sources", "philips-3t"]
    assert make_models.main(args) == 0
    name = "physics-philips-3t_to_siemens-3t"
    assert (load_model("physics", name, root=tmp_path).sha256
            == load_model("physics", name).sha256)
