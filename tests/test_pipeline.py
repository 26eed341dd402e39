"""The job pipeline in-process, on real vendor files: route, harmonize, quarantine, deliver."""

import json
import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.provenance import PRIVATE_CREATOR, PRIVATE_GROUP
from tests.peers import free_port
from tests.pipeline_harness import MODEL, Harness
from tests.samples import SAMPLES, sample_files


@pytest.fixture
def harness(tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    return Harness(tmp_path)


def test_every_real_file_is_routed_by_its_header_or_quarantined_with_a_reason(
    harness: Harness, tmp_path: Path
) -> None:
    harness.receive([p for p in SAMPLES.rglob("*.dcm")])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"1.2" * 3)
    harness.ledger.add_instance(
        path=str(broken), sop_instance_uid=None, sop_class_uid=None, study_uid=None,
        series_uid=None, calling_ae="SCANNER", peer="127.0.0.1:1", size=140,
        parse_error="malformed DICOM: truncated",
    )
    harness.run(now=1e12)
    jobs = {job.id: job for job in harness.ledger.jobs()}
    by_rule = {job.rule: job for job in jobs.values() if job.rule}
    # GE 3 T multiphase: harmonized, one derived series of 100 instances.
    ge = by_rule["ge-3t"]
    assert ge.state == "delivered"
    delivered = sorted((tmp_path / "out" / f"job-{ge.id:08d}").glob("*.dcm"))
    assert len(delivered) == 100
    first = dcmread(delivered[0])
    assert first.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value == MODEL
    # Siemens 3 T, classic and Enhanced MR: the reference scanner, passed through unchanged.
    reference = [job for job in jobs.values() if job.rule == "reference"]
    assert [job.state for job in reference] == ["delivered"] * 2
    # Philips (classic and enhanced), the 1996 GE Genesis image (gauss, 1.5 T) and the SEG
    # (no field strength) have no rule of their own: the default rule quarantines them and
    # says what they are.
    reasons = sorted(job.reason or "" for job in jobs.values() if job.state == "quarantined")
    assert sum(r.startswith("rule 'default' quarantines it") for r in reasons) == 4
    assert any("(not an MR image (Modality SEG" in r for r in reasons)
    assert sum("Enhanced MR" in r for r in reasons) == 1
    assert "malformed DICOM: truncated" in reasons
    assert {job.state for job in jobs.values()} <= {"delivered", "quarantined"}


def test_a_tampered_model_quarantines_the_job_until_an_admin_retries(
    harness: Harness, models: Path, tmp_path: Path
) -> None:
    weights = models / MODEL / "model.json"
    original = weights.read_text()
    weights.write_text(json.dumps({**json.loads(original), "target_range": [0, 1]}))
    try:
        harness.receive(sample_files("ge-signa-architect-3t-multiphase"))
        harness.run(now=1e12)
        (job,) = harness.ledger.jobs()
        assert job.state == "quarantined"
        assert "sha256" in (job.reason or "") and "model.json" in (job.reason or "")
    finally:
        weights.write_text(original)
    harness.ledger.retry(job.id)
    harness.run(now=1e12)
    retried = harness.ledger.job(job.id)
    assert retried is not None and retried.state == "delivered"


def test_an_unreachable_destination_is_retried_then_failed(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    closed_port = free_port()
    harness = Harness(tmp_path, {"pacs": {"type": "dicom", "ae_title": "PACS",
                                          "host": "127.0.0.1", "port": closed_port}})
    harness.receive(sample_files("siemens-prisma-3t-prone")[:2])
    harness.run(now=1e12, ticks=1)
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert delivery.next_attempt_at == pytest.approx(1e12 + 1)
    harness.run(now=1e12 + 0.5, ticks=1)  # not yet due: backoff
    assert harness.ledger.deliveries(1)[0].attempts == 1
    harness.run(now=1e12 + 2, ticks=1)
    job = harness.ledger.job(1)
    assert job is not None and job.state == "failed"
    assert "delivery to pacs failed after 2 attempts" in (job.reason or "")
    # Nothing lost: the received files are still in the spool for a retry.
    assert all(Path(i.path).is_file() for i in harness.ledger.instances(1))


def test_restart_resumes_an_unfinished_job(harness: Harness, tmp_path: Path) -> None:
    harness.receive(sample_files("ge-signa-architect-3t-multiphase"))
    harness.pipeline.claim_settled(1e12)
    (job,) = harness.ledger.jobs()
    harness.pipeline.route(job)
    harness.ledger.close()  # the node dies between routing and harmonizing
    restarted = Harness(tmp_path)
    restarted.run(now=1e12)
    done = restarted.ledger.job(job.id)
    assert done is not None and done.state == "delivered"
    assert [state for _, state, _ in restarted.ledger.events(job.id)][:2] == ["complete", "routed"]


def test_rows_from_a_ledger_without_acquisition_keys_are_grouped_from_their_headers(
    harness: Harness, tmp_path: Path
) -> None:
    """A ledger written before intake kept each instance's acquisition key: per-phase
    series are still joined into one acquisition, from their headers."""
    per_phase = []
    for path in sample_files("ge-signa-architect-3t-multiphase"):
        ds = dcmread(path)
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.2.1143.77.{ds.TemporalPositionIdentifier}"
        ds.SeriesNumber = 100 + int(ds.TemporalPositionIdentifier)
        ds.save_as(tmp_path / path.name)
        per_phase.append(tmp_path / path.name)
    harness.receive(per_phase)
    with sqlite3.connect(harness.config.ledger_path) as db:
        db.execute("UPDATE instances SET acquisition = NULL")
    harness.run(now=1e12)
    (job,) = harness.ledger.jobs()
    assert len(harness.ledger.instances(job.id)) == 100
    assert job.state == "delivered", job.reason
