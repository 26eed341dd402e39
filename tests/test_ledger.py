import os
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
