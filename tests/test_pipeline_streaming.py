"""Harmonized files go to a DICOM destination while the series is still being written."""

from pathlib import Path

import pytest
from pydicom import dcmread

import dicomnode.production as production_module
from dicomnode.spool import write_durably
from tests.peers import free_port, wait_for
from tests.pipeline_harness import Harness, dicom_harness
from tests.recording_scp import RecordingSCP
from tests.samples import sample_files

GE_MULTIPHASE = "ge-signa-architect-3t-multiphase"
NOW = 1e12


def _until_streams_end(harness: Harness) -> None:
    """Wait for the job's stream to end, then let the pipeline record it."""
    wait_for(harness.pipeline.wake.is_set, 60, "the stream to end", interval=0.02)
    harness.pipeline.wake.clear()
    harness.run(now=NOW, ticks=1)


def _derived_uids(harness: Harness, job_id: int) -> set[str]:
    job = harness.ledger.job(job_id)
    assert job is not None and job.output_dir
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in Path(job.output_dir).glob("*.dcm")}


def test_the_destination_gets_files_while_the_series_is_written(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP
) -> None:
    harness = dicom_harness(tmp_path, models, monkeypatch, scp.port)
    written: list[str] = []

    def after_the_first_is_sent(folder: Path, name: str, data: bytes) -> Path:
        # With the send after production instead, this would wait in vain.
        if written and not scp.first.wait(30):
            raise AssertionError("nothing reached the destination while the series was written")
        written.append(name)
        return write_durably(folder, name, data)

    monkeypatch.setattr(production_module, "write_durably", after_the_first_is_sent)
    harness.receive(sample_files(GE_MULTIPHASE))
    harness.run(now=NOW, ticks=1)
    job = harness.ledger.job(1)
    assert job is not None
    assert job.state == "harmonized", job.reason
    _until_streams_end(harness)
    job = harness.ledger.job(1)
    assert job is not None and job.state == "delivered"
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    assert sorted(scp.stored) == sorted(_derived_uids(harness, 1))  # every one, once
    assert len(written) == 100


def test_a_failed_stream_is_the_first_attempt_and_the_retry_sends_the_whole_series(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens yet: the stream cannot associate
    harness = dicom_harness(tmp_path, models, monkeypatch, port)
    harness.receive(sample_files(GE_MULTIPHASE))
    harness.run(now=NOW, ticks=1)
    _until_streams_end(harness)
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert "cannot connect" in (delivery.last_error or "")
    job = harness.ledger.job(1)
    assert job is not None and job.state == "harmonized"
    scp = RecordingSCP(port)
    try:
        harness.run(now=NOW + 2, ticks=1)  # after the 1 s backoff, by the outbox
        (delivery,) = harness.ledger.deliveries(1)
        assert (delivery.state, delivery.attempts) == ("delivered", 2)
        assert sorted(scp.stored) == sorted(_derived_uids(harness, 1))
    finally:
        scp.stop()


def test_a_stream_cut_short_by_a_failed_write_records_nothing_and_the_retry_resends(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP
) -> None:
    harness = dicom_harness(tmp_path, models, monkeypatch, scp.port)
    failures = [OSError(28, "No space left on device")]

    def disk_full_once(folder: Path, name: str, data: bytes) -> Path:
        if name == "00010.dcm" and failures:
            raise failures.pop()
        return write_durably(folder, name, data)

    monkeypatch.setattr(production_module, "write_durably", disk_full_once)
    harness.receive(sample_files(GE_MULTIPHASE))
    harness.run(now=NOW, ticks=1)
    job = harness.ledger.job(1)
    assert job is not None and job.state == "failed"
    assert "No space left" in (job.reason or "")
    _until_streams_end(harness)
    assert harness.ledger.deliveries(1) == []  # the partial send is no delivery
    harness.ledger.retry(1)
    harness.run(now=NOW, ticks=1)
    _until_streams_end(harness)
    job = harness.ledger.job(1)
    assert job is not None
    assert job.state == "delivered", job.reason
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    derived = _derived_uids(harness, 1)
    # The first files went twice, with the same UIDs: the PACS holds each once.
    assert set(scp.stored) == derived and len(scp.stored) > len(derived)
