"""The sidecar assessment and its domain reference, on small simulated patients."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.domain_reference import (
    DomainReference,
    DomainReferenceError,
    default_reference_path,
    fit,
    load,
)
from evaluation.masks import NoBreastMaskError
from evaluation.metrics import MetricError
from evaluation.sidecar import Assessment, Thresholds, assess, judge
from evaluation.virtual_scanner.profiles import load_profile
from evaluation.virtual_scanner.render import render_seed
from harmonizers.acquisition import Acquisition
from harmonizers.registry import load_model

SEED = 7  # outside every seed range a model or the reference was fitted on


@pytest.fixture(scope="module")
def reference() -> DomainReference:
    return load()


@pytest.fixture(scope="module")
def ge15() -> Acquisition:
    return render_seed(SEED, load_profile("ge-1.5t"), matrix=64, slices=16).acquisition()


@pytest.fixture(scope="module")
def identity(ge15: Acquisition, reference: DomainReference) -> Assessment:
    return assess(ge15, ge15, reference)


def _with_pixels(acquisition: Acquisition, pixels: np.ndarray) -> Acquisition:
    return dataclasses.replace(acquisition, pixels=pixels.astype(np.float32))


def test_identity_keeps_structure_and_kinetics(identity: Assessment) -> None:
    assert identity.gradient_similarity_pre.value == pytest.approx(1.0)
    assert identity.gradient_similarity_post.value == pytest.approx(1.0)
    assert identity.fgt_pe_change.value == pytest.approx(0.0, abs=1e-9)
    assert identity.lesion_pe_change.value == pytest.approx(0.0, abs=1e-9)
    assert identity.fgt_density_change.value == pytest.approx(0.0, abs=1e-9)
    for before, after in identity.curve_types().values():
        assert before is not None and before == after
    assert identity.intensity_distance_after == identity.intensity_distance_before
    assert identity.source_probability_after == identity.source_probability_before


def test_identity_verdict_rests_on_the_intensity_distance_alone(identity: Assessment) -> None:
    # A GE 1.5 T series is not in the Siemens 3 T units: only that may count against it.
    distance = identity.intensity_distance_after.value
    assert distance > Thresholds().intensity_distance_pass
    assert {r.measure for r in identity.reasons} == {"intensity_distance_after"}
    expected = "fail" if distance > Thresholds().intensity_distance_warn else "warn"
    assert identity.verdict == expected
    assert f"{distance:.3g}" in identity.reasons[0].text


def test_a_harmonizer_that_rescales_each_phase_fails_on_kinetics(
        ge15: Acquisition, reference: DomainReference) -> None:
    scale = np.resize(np.asarray([1.0, 0.5, 1.5], dtype=np.float32), ge15.n_phases)
    broken = _with_pixels(ge15, ge15.pixels * scale[:, None, None, None])
    result = assess(ge15, broken, reference)
    assert result.verdict == "fail"
    failed = {r.measure for r in result.reasons if r.verdict == "fail"}
    assert {"fgt_pe_change", "lesion_pe_change"} <= failed
    # Per-phase scaling keeps the edges where they were: structure is not blamed.
    assert result.gradient_similarity_pre.value == pytest.approx(1.0)
    assert result.gradient_similarity_post.value == pytest.approx(1.0)


def test_the_shipped_histogram_model_moves_a_15t_series_towards_the_reference(
        ge15: Acquisition, reference: DomainReference) -> None:
    model = load_model("histogram", "histogram-ge-1.5t_to_siemens-3t")
    harmonized = _with_pixels(ge15, model.harmonizer.harmonize(ge15))
    result = assess(ge15, harmonized, reference)
    before = result.intensity_distance_before.value
    after = result.intensity_distance_after.value
    assert after < 0.5 * before, (before, after)
    assert result.gradient_similarity_pre.value > Thresholds().gradient_similarity_pass


def test_thresholds_flip_the_verdict_as_documented(identity: Assessment) -> None:
    distance = identity.intensity_distance_after.value
    loose = Thresholds(intensity_distance_pass=distance + 1, intensity_distance_warn=distance + 2)
    assert judge(identity, loose) == ("pass", ())
    between = Thresholds(intensity_distance_pass=distance / 2, intensity_distance_warn=distance * 2)
    verdict, reasons = judge(identity, between)
    assert verdict == "warn" and [r.verdict for r in reasons] == ["warn"]
    tight = Thresholds(intensity_distance_pass=distance / 4, intensity_distance_warn=distance / 2)
    assert judge(identity, tight)[0] == "fail"
    # The source probability enters the verdict only once both its limits are set.
    probability = identity.source_probability_after.value
    watched = dataclasses.replace(loose, source_probability_pass=probability / 4,
                                  source_probability_warn=probability / 2)
    verdict, reasons = judge(identity, watched)
    assert verdict == "fail" and reasons[0].measure == "source_probability_after"
    # Gradient similarity is a lower limit.
    edges = dataclasses.replace(loose, gradient_similarity_pass=0.9,
                                gradient_similarity_warn=0.5)
    softened = dataclasses.replace(
        identity, gradient_similarity_post=dataclasses.replace(
            identity.gradient_similarity_post, value=0.7))
    verdict, reasons = judge(softened, edges)
    assert verdict == "warn" and [r.measure for r in reasons] == ["gradient_similarity_post"]
    assert judge(softened, dataclasses.replace(edges, gradient_similarity_warn=0.8))[0] == "fail"
    # A changed curve type fails by default (breast-dce-physics.md) and can be demoted.
    before = identity.lesion_curve_type_before
    changed = dataclasses.replace(
        identity, lesion_curve_type_after="washout" if before != "washout" else "plateau")
    assert judge(changed, loose)[0] == "fail"
    assert judge(changed, dataclasses.replace(loose, curve_type_mismatch="warn"))[0] == "warn"
    assert judge(changed, dataclasses.replace(loose, curve_type_mismatch="pass"))[0] == "pass"


@pytest.mark.parametrize("settings", [
    {"intensity_distance_pass": 2.0, "intensity_distance_warn": 1.0},
    {"gradient_similarity_pass": 0.7, "gradient_similarity_warn": 0.8},
    {"pe_change_pass_pp": -1.0},
    {"source_probability_pass": 0.5},
    {"curve_type_mismatch": "maybe"},
])
def test_inconsistent_thresholds_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**settings)  # type: ignore[arg-type]


def test_errors_propagate_with_clear_messages(ge15: Acquisition,
                                              reference: DomainReference) -> None:
    blank = _with_pixels(ge15, np.zeros_like(ge15.pixels))
    with pytest.raises(NoBreastMaskError):
        assess(blank, blank, reference)
    single = dataclasses.replace(ge15, pixels=ge15.pixels[:1],
                                 phase_times_s=ge15.phase_times_s[:1])
    with pytest.raises(MetricError, match="post-contrast"):
        assess(single, single, reference)
    unknown = dataclasses.replace(ge15, domain=None)
    with pytest.raises(MetricError, match="unknown"):
        assess(unknown, unknown, reference)
    with pytest.raises(MetricError, match="differ"):
        assess(ge15, _with_pixels(ge15, ge15.pixels[:, :-1]), reference)


def test_the_shipped_reference_covers_the_six_domains(reference: DomainReference) -> None:
    assert default_reference_path().is_file()
    assert default_reference_path().stat().st_size < 1_000_000
    assert reference.domain == "siemens-3t"
    assert set(reference.classes) == {"ge-1.5t", "ge-3t", "philips-1.5t", "philips-3t",
                                      "siemens-1.5t", "siemens-3t"}
    assert reference.provenance["cv_accuracy"] > 1 / len(reference.classes)
    assert reference.provenance["seeds"][0] >= 5000


def test_domain_probabilities_match_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    domains = ["a", "b", "c"] * 10
    centres = {"a": 0.0, "b": 1.0, "c": 2.0}
    rows = [{"f1": centres[d] + rng.normal(), "f2": rng.normal(), "flat": 3.0}
            for d in domains]
    made = fit(rows, domains, [np.linspace(0, 1, 11)], {"feature_set_version": "test"},
               reference_domain="a")
    assert made.feature_names == ("f1", "f2")  # the constant feature is left out
    x = np.asarray([[r["f1"], r["f2"]] for r in rows])
    scaler = StandardScaler().fit(x)
    expected = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x), domains)
    ours = made.predict_domain_proba(rows[4])
    theirs = expected.predict_proba(scaler.transform(x[4:5]))[0]
    np.testing.assert_allclose([ours[c] for c in expected.classes_], theirs, atol=1e-6)
    with pytest.raises(MetricError, match="missing"):
        made.predict_domain_proba({"f1": 0.0})


def test_two_domain_references_give_both_probabilities() -> None:
    rng = np.random.default_rng(1)
    domains = ["a", "b"] * 6
    rows = [{"f": (d == "b") + 0.3 * rng.normal()} for d in domains]
    made = fit(rows, domains, [np.linspace(0, 1, 11)], {}, reference_domain="b")
    probabilities = made.predict_domain_proba({"f": 1.0})
    assert probabilities["b"] > probabilities["a"]
    assert sum(probabilities.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.pop("classifier"), "missing key 'classifier'"),
    (lambda d: d.__setitem__("quantiles", "many"), "'quantiles' must be list"),
    (lambda d: d["classifier"]["coef"].pop(), "coef has shape"),
    (lambda d: d["features"]["std"].__setitem__(0, 0.0), "std must be positive"),
    (lambda d: d["provenance"].__setitem__("feature_set_version", "0"), "feature set '0'"),
])
def test_a_bad_reference_file_is_refused_with_a_clear_error(
        tmp_path: Path, corrupt: object, message: str) -> None:
    data = json.loads(default_reference_path().read_text())
    corrupt(data)  # type: ignore[operator]
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DomainReferenceError, match=message):
        load(path)
    with pytest.raises(DomainReferenceError, match="cannot read"):
        load(tmp_path / "absent.json")
