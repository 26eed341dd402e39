"""The quality report SR: valid DICOM, readable by DCMTK and highdicom, deterministic."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.assembly import assemble
from dicomnode.provenance import Provenance, derived_series
from evaluation.domain_reference import load
from evaluation.quality_report import (
    MEASUREMENT_CODES,
    PRIVATE_SCHEME,
    REASON_NAME,
    VERDICT_NAME,
    VERDICT_VALUES,
    quality_report,
)
from evaluation.sidecar import Assessment, assess
from harmonizers.registry import load_model
from tests.peers import dciodvfy_errors, have
from tests.samples import simulated_ge_study

MODEL = "histogram-ge-1.5t_to_siemens-3t"


@dataclass(frozen=True)
class Study:
    source: list[Dataset]
    derived: list[Dataset]
    assessment: Assessment
    provenance: Provenance
    path: Path


def _report(study: Study, derived: list[Dataset] | None = None) -> Dataset:
    return quality_report(
        study.assessment, study.source, study.derived if derived is None else derived,
        method=study.provenance.method, model=study.provenance.model,
        model_sha256=study.provenance.model_sha256, version="9.9.9",
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A simulated GE 1.5 T study, harmonized by a shipped model, assessed and reported."""
    folder = tmp_path_factory.mktemp("quality-report")
    files = simulated_ge_study(folder / "cohort", seed=7, slices=16)
    assembled = assemble([dcmread(p) for p in files])
    model = load_model("histogram", MODEL)
    harmonized = model.harmonizer.harmonize(assembled.acquisition)
    provenance = Provenance(
        method="histogram", model=MODEL, model_sha256=model.sha256, rule="ge-1.5t",
        config_hash="cd" * 32, source_domain="ge-1.5t", target_domain="siemens-3t")
    derived = list(derived_series(assembled, harmonized.copy(), provenance))
    harmonized_acquisition = assemble(derived).acquisition
    assessment = assess(assembled.acquisition, harmonized_acquisition, load())
    source = [ds for phase in assembled.sources for ds in phase]
    made = Study(source, derived, assessment, provenance, folder / "report.dcm")
    _report(made).save_as(made.path, enforce_file_format=True)
    return made


def _group(sr: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_image_measurement_groups()
    return group


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
def test_dciodvfy_finds_no_error(study: Study) -> None:
    assert dciodvfy_errors(study.path) == []


@pytest.mark.skipif(not have("dsr2html"), reason="DCMTK not installed")
def test_dsr2html_renders_the_verdict_and_the_measurements(study: Study) -> None:
    result = subprocess.run(["dsr2html", str(study.path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip()  # DCMTK warns of every content item it cannot check
    html = result.stdout
    assert VERDICT_NAME.meaning in html
    assert VERDICT_VALUES[study.assessment.verdict].meaning in html
    assert MEASUREMENT_CODES["intensity_distance_after"].meaning in html


def test_highdicom_reads_back_the_measurements(study: Study) -> None:
    sr = hd.sr.srread(study.path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.StudyInstanceUID == study.source[0].StudyInstanceUID
    assert sr.PatientID == study.source[0].PatientID
    assert sr.SyntheticData == "YES"
    assert sr.InstanceCreationDate == sr.ContentDate
    group = _group(sr)
    read = {(m.name.value, m.name.scheme_designator): m for m in group.get_measurements()}
    for key, expected in study.assessment.measurements().items():
        code = MEASUREMENT_CODES[key]
        item = read[(code.value, PRIVATE_SCHEME)]
        assert float(item.value) == pytest.approx(expected.value, rel=1e-9, abs=1e-12)
        assert item.unit.value == expected.unit
        assert item.unit.scheme_designator == "UCUM"
    verdicts = group.get_qualitative_evaluations(name=VERDICT_NAME)
    assert [v.value for v in verdicts] == [VERDICT_VALUES[study.assessment.verdict]]
    def texts(name: hd.sr.CodedConcept | Code) -> list[str]:
        return [item.value for item in hd.sr.utils.find_content_items(group[0], name=name)]

    assert texts(codes.DCM.AlgorithmName) == ["histogram"]
    assert texts(codes.DCM.AlgorithmVersion) == ["9.9.9"]
    assert any(study.provenance.model_sha256 in p for p in texts(codes.DCM.AlgorithmParameters))
    reasons = texts(REASON_NAME)
    assert len(reasons) == len(study.assessment.reasons)
    assert [str(s.CodingSchemeDesignator) for s in sr.CodingSchemeIdentificationSequence] \
        == [PRIVATE_SCHEME]


def test_the_report_references_the_original_and_the_harmonized_series(study: Study) -> None:
    sr = hd.sr.srread(study.path)
    series = {uid for _, uid in sr.get_evidence_series()}
    assert {study.source[0].SeriesInstanceUID, study.derived[0].SeriesInstanceUID} <= series
    instances = {uid for _, _, uid, _ in sr.get_evidence()}
    assert {ds.SOPInstanceUID for ds in [*study.source, *study.derived]} == instances
    group = _group(sr)
    sources = hd.sr.utils.find_content_items(
        group[0], name=codes.DCM.SourceSeriesForImageProcessingOperation)
    assert [item.value for item in sources] == [study.source[0].SeriesInstanceUID]


def test_uids_are_deterministic_so_a_rerun_sends_no_duplicate(study: Study) -> None:
    first, again = _report(study), _report(study)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert first.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in study.derived}
    other = []
    for ds in study.derived:
        copy = Dataset()
        copy.update(ds)
        copy.SeriesInstanceUID = "1.2.3.999"
        other.append(copy)
    assert _report(study, other).SOPInstanceUID != first.SOPInstanceUID


def test_a_report_needs_evidence_from_one_study(study: Study) -> None:
    stranger = Dataset()
    stranger.update(study.derived[0])
    stranger.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="studies"):
        _report(study, [stranger])
    with pytest.raises(ValueError, match="source and the derived"):
        _report(study, [])
