import os
import sqlite3
from pathlib import Path

import pytest

from dicomnode.ledger import Ledger
from dicomnode.spool import Spool, write_durably


def _add(ledger: Ledger, study: str | None, series: str = "1.2.3", name: str = "a") -> int:
    return ledger.add_instance(
        path=f"/spool/{name}", sop_instance_uid="1.2", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_uid=study, series_uid=series, calling_ae="SCANNER", peer="127.0.0.1:1", size=10,
    )


def test_a_study_settles_only_after_the_quiet_period(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _add(ledger, "1.1", name="a")
    received = ledger.unclaimed("1.1")[0].received_at
    assert ledger.settled_studies(5.0, now=received + 1) == []
    assert ledger.settled_studies(5.0, now=received + 6) == ["1.1"]


def test_late_instances_make_a_new_job_rather_than_vanish(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first = _add(ledger, "1.1", name="a")
    job = ledger.create_job("1.1", [first])
    late = _add(ledger, "1.1", name="b")
    assert [i.id for i in ledger.unclaimed("1.1")] == [late]
    second = ledger.create_job("1.1", [late])
    assert second != job
    assert [i.id for i in ledger.instances(job)] == [first]


def test_states_history_and_retry(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    job = ledger.create_job(None, [_add(ledger, None)], "malformed DICOM: boom")
    found = ledger.job(job)
    assert found is not None
    assert (found.state, found.reason) == ("quarantined", "malformed DICOM: boom")
    with pytest.raises(ValueError, match="unknown job state"):
        ledger.update_job(job, "lost", "x")
    ledger.retry(job)
    retried = ledger.job(job)
    assert retried is not None
    assert (retried.state, retried.reason) == ("complete", None)
    assert [state for _, state, _ in ledger.events(job)] == ["quarantined", "complete"]
    with pytest.raises(ValueError, match="only quarantined or failed"):
        ledger.retry(job)


def test_the_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    job = ledger.create_job("1.1", [_add(ledger, "1.1")])
    ledger.add_deliveries(job, ["pacs", "local"])
    ledger.close()
    reopened = Ledger(path)
    assert [d.destination for d in reopened.deliveries(job)] == ["pacs", "local"]
    assert reopened.jobs(["complete"])[0].id == job


def test_durable_write_leaves_nothing_behind_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_durably(tmp_path / "day", "x.dcm", b"DICM")
    assert path.read_bytes() == b"DICM"

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_durably(tmp_path / "day", "y.dcm", b"DICM")
    assert sorted(p.name for p in (tmp_path / "day").iterdir()) == ["x.dcm"]


def test_spool_names_are_never_taken_from_the_sender(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = spool.store(b"a"), spool.store(b"a")
    assert first != second
    assert first.parent.parent == tmp_path
    assert first.suffix == ".dcm" and len(first.stem) == 32


def test_a_ledger_from_before_quality_reports_keeps_its_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL,"
        " destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at REAL NOT NULL, last_error TEXT, updated_at REAL NOT NULL,"
        " UNIQUE (job_id, destination));"
        "INSERT INTO deliveries VALUES (7, 1, 'pacs', 'failed', 5, 0, 'refused', 0);"
    )
    old.commit()
    old.close()
    ledger = Ledger(path)
    (delivery,) = ledger.deliveries(1)
    assert (delivery.id, delivery.kind, delivery.state, delivery.last_error) == (
        7, "images", "failed", "refused")
    # The new uniqueness lets the same destination get the job's report too.
    ledger.add_deliveries(1, ["pacs"], kind="report")
    assert [d.kind for d in ledger.deliveries(1)] == ["images", "report"]


def test_a_report_is_delivered_apart_from_the_images(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    job = ledger.create_job("1.1", [_add(ledger, "1.1")])
    ledger.update_job(job, "harmonized", "done", output_dir="/out")
    ledger.add_deliveries(job, ["pacs"])
    ledger.request_report(job, ["pacs", "local"])
    assert [d.kind for d in ledger.due_deliveries()] == ["images"]  # report not written yet
    ledger.report_written(job, "/out/report.dcm", "pass")
    due = ledger.due_deliveries()
    assert sorted((d.kind, d.destination) for d in due) == [
        ("images", "pacs"), ("report", "local"), ("report", "pacs")]
    ledger.update_job(job, "delivered", "images sent")
    assert {d.kind for d in ledger.due_deliveries()} == {"report"}
    assert ledger.counts()["reports_written"] == 1
    ledger.request_report(job, ["pacs"])  # a retry resets the report and its sends
    assert ledger.report(job).state == "pending"  # type: ignore[union-attr]
    assert ledger.deliveries(job, kind="report") == []
