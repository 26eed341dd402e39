"""The node's quality-report sidecar: made beside delivery, delivered apart, never in the way."""

from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from dicomnode.admin import jobs_retry
from dicomnode.config import Evaluation
from dicomnode.quality_reports import REPORT_FILE, Evaluator
from tests.pipeline_harness import Harness
from tests.samples import simulated_ge_study

RULES = """
rules:
  - name: ge-1.5t
    match: {manufacturer: GE, field_strength: 1.5}
    action: harmonize
    method: histogram
    model: histogram-ge-1.5t_to_siemens-3t
    evaluate: true
  - name: default
    action: quarantine
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return simulated_ge_study(tmp_path_factory.mktemp("sim") / "cohort", seed=21, slices=16)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    """The shipped GE 1.5 T histogram model, with a quality report."""
    return Harness(tmp_path, rules=RULES)


def test_images_are_delivered_before_the_report_and_the_report_follows(
    harness: Harness, study: list[Path], tmp_path: Path
) -> None:
    harness.receive(study)
    harness.run(now=1e12)
    (job,) = harness.ledger.jobs()
    # The images went out while the report was still waiting for the evaluator.
    assert job.state == "delivered", job.reason
    report = harness.ledger.report(job.id)
    assert report is not None and report.state == "pending"
    delivered = tmp_path / "out" / f"job-{job.id:08d}"
    assert len(list(delivered.glob("*.dcm"))) == len(study)

    assert Evaluator(harness.config, harness.ledger).run_pending(in_process=True) == 1
    report = harness.ledger.report(job.id)
    assert report is not None and report.state == "written", report
    assert report.verdict in ("pass", "warn", "fail")
    harness.run(now=1e12)
    (sent,) = harness.ledger.deliveries(job.id, kind="report")
    assert sent.state == "delivered"
    assert harness.ledger.job(job.id).state == "delivered"  # type: ignore[union-attr]

    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(delivered / REPORT_FILE))
    source = dcmread(study[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SyntheticData == "YES"
    harmonized = dcmread(sorted(delivered.glob("0*.dcm"))[0], stop_before_pixels=True)
    evidence = {item.SeriesInstanceUID for item in
                sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert {source.SeriesInstanceUID, harmonized.SeriesInstanceUID} <= evidence


def test_a_report_that_cannot_be_made_fails_alone_and_an_admin_can_retry_it(
    harness: Harness, study: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "reference.json"
    broken.write_text("{not json")
    corrupt = harness.config.model_copy(update={"evaluation": Evaluation(reference=broken)})
    harness.receive(study)
    harness.run(now=1e12)
    (job,) = harness.ledger.jobs()
    Evaluator(corrupt, harness.ledger).run_pending(in_process=True)
    report = harness.ledger.report(job.id)
    assert report is not None and report.state == "failed"
    assert str(broken) in (report.error or "")
    assert harness.ledger.job(job.id).state == "delivered"  # type: ignore[union-attr]
    assert harness.ledger.deliveries(job.id, kind="report") == []

    assert jobs_retry(harness.ledger, job.id) == 0
    assert harness.ledger.report(job.id).state == "pending"  # type: ignore[union-attr]
    Evaluator(harness.config, harness.ledger).run_pending(in_process=True)
    assert harness.ledger.report(job.id).state == "written"  # type: ignore[union-attr]


def test_a_report_is_made_in_a_child_process(harness: Harness, study: list[Path]) -> None:
    harness.receive(study)
    harness.run(now=1e12)
    evaluator = Evaluator(harness.config, harness.ledger)
    try:
        assert evaluator.run_pending() == 1
    finally:
        evaluator.close()
    (job,) = harness.ledger.jobs()
    report = harness.ledger.report(job.id)
    assert report is not None and report.state == "written", report.error if report else None
    assert Path(report.path or "").is_file()


def test_a_new_version_of_a_job_is_reported_on_every_version_s_instances(
    harness: Harness, study: list[Path]
) -> None:
    first, late = study[:-8], study[-8:]
    harness.receive(first)
    harness.run(now=1e12)
    harness.receive(late)  # after the job ran: a new version of it, on all the instances
    harness.run(now=1e12)
    old, new = harness.ledger.jobs()
    assert new.supersedes == old.id and new.state == "delivered", new.reason
    Evaluator(harness.config, harness.ledger).run_pending(in_process=True)
    report = harness.ledger.report(new.id)
    assert report is not None and report.state == "written", report.error if report else None
    sr = dcmread(report.path or "")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    source_uid = dcmread(study[0], stop_before_pixels=True).SeriesInstanceUID
    (original,) = [s for s in evidence if s.SeriesInstanceUID == source_uid]
    assert len(original.ReferencedSOPSequence) == len(study)
