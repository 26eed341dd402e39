"""Completion, late instances, discard and retention, and association reuse, in-process."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomnode.cli import main
from dicomnode.config import DeliveryPolicy, DicomDestination
from dicomnode.delivery import Outbox
from tests.peers import free_port
from tests.pipeline_harness import RULES, Harness
from tests.samples import SAMPLES, sample_files

GE_MULTIPHASE = "ge-signa-architect-3t-multiphase"


@pytest.fixture
def harness(tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    return Harness(tmp_path, settle_seconds=3600)


def test_a_series_completes_on_its_expected_count_before_the_quiet_period(
    harness: Harness,
) -> None:
    """GE multiphase: 10 temporal positions x 10 locations, from the header."""
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files[:-1])
    harness.run(now=0, ticks=1)  # the quiet period (an hour) has not passed
    assert harness.ledger.jobs() == []
    harness.receive(files[-1:])
    harness.run(now=0, ticks=1)
    (job,) = harness.ledger.jobs()
    assert len(harness.ledger.instances(job.id)) == 100


def test_a_series_without_an_expected_count_waits_for_the_quiet_period(
    harness: Harness,
) -> None:
    harness.receive(sample_files("siemens-prisma-3t-prone"))
    received = max(i.received_at for i in harness.ledger.unclaimed(
        str(dcmread(sample_files("siemens-prisma-3t-prone")[0]).StudyInstanceUID)))
    harness.run(now=received + 10, ticks=1)
    assert harness.ledger.jobs() == []
    harness.run(now=received + 3601, ticks=1)
    assert len(harness.ledger.jobs()) == 1


def test_late_instances_make_a_new_version_of_the_whole_series(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    harness = Harness(tmp_path)
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files)
    harness.run(now=1e12)
    harness.receive(files[:3])  # the scanner resends three slices after the job ran
    harness.run(now=1e12)
    first, second = harness.ledger.jobs()
    assert (first.state, second.state, second.supersedes) == ("delivered", "delivered", first.id)
    out = tmp_path / "out"
    old = sorted(dcmread(p).SOPInstanceUID for p in (out / f"job-{first.id:08d}").glob("*.dcm"))
    new = sorted(dcmread(p).SOPInstanceUID for p in (out / f"job-{second.id:08d}").glob("*.dcm"))
    assert len(new) == 100 and new == old  # the whole series again, under the same UIDs


def test_late_instances_can_be_held_for_an_admin(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    harness = Harness(tmp_path, late_instances="quarantine")
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files)
    harness.run(now=1e12)
    harness.receive(files[:3])
    harness.run(now=1e12)
    first, second = harness.ledger.jobs()
    assert second.state == "quarantined"
    assert f"arrived after job {first.id}" in (second.reason or "")


DISCARD = RULES.replace(
    "  - name: reference\n    match: {manufacturer: SIEMENS}\n    action: passthrough\n",
    "  - name: reference\n    match: {manufacturer: SIEMENS}\n    action: discard\n",
)


def test_discarded_jobs_keep_their_files_for_the_retention_period(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    harness = Harness(tmp_path, rules=DISCARD, retention={"discarded_days": 1})
    harness.receive(sample_files("siemens-prisma-3t-prone"))
    harness.run(now=time.time() + 1, ticks=1)
    (job,) = harness.ledger.jobs()
    assert job.state == "discarded"
    assert job.reason == "rule 'reference' discards it"
    kept = harness.ledger.instances(job.id)
    assert all(Path(i.path).is_file() for i in kept)
    harness.run(now=job.updated_at + 86_401, ticks=1)
    assert not any(Path(i.path).exists() for i in kept)
    assert all(i.purged_at for i in harness.ledger.instances(job.id))
    assert harness.ledger.events(job.id)[-1][2] == "files purged"


def test_jobs_purge_and_status_for_the_admin(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.receive(sample_files("siemens-prisma-3t-prone"))
    harness.run(now=1e12)
    config = harness.config.var_dir.parent / "node.yaml"
    config.write_text(f"var_dir: {harness.config.var_dir}\n")
    assert main(["--config", str(config), "status"]) == 0
    shown = capsys.readouterr().out
    assert "jobs: delivered 1" in shown and "0 instances not yet in a job" in shown
    assert main(["--config", str(config), "jobs", "purge"]) == 0
    assert "purged 1 jobs (35 received files)" in capsys.readouterr().out
    assert not list(harness.config.spool_dir.rglob("*.dcm"))


def test_rules_explain_dry_runs_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "explain", str(SAMPLES / "ispy1-breast-seg"),
                 str(SAMPLES / "ge-genesis-signa-1.5t-gauss")]) == 0
    out = capsys.readouterr().out
    assert "field '15000' -> 1.5 T" in out
    assert "matches ge-1.5t: harmonize with histogram / histogram-ge-1.5t_to_siemens-3t" in out
    assert "skipped ge-1.5t: field None not = 1.5" in out  # the SEG has no field strength
    assert "matches default: quarantine" in out


@pytest.fixture
def counting_scp() -> Iterator[tuple[int, list[str]]]:
    associations: list[str] = []

    def established(event: Event) -> None:
        associations.append(event.assoc.requestor.ae_title)

    ae = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts[:100]:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_ESTABLISHED, established), (evt.EVT_C_STORE, lambda event: 0x0000)])
    assert server is not None
    yield port, associations
    server.shutdown()


def test_the_outbox_reuses_one_association_per_destination(
    counting_scp: tuple[int, list[str]]
) -> None:
    port, associations = counting_scp
    outbox = Outbox("NODE", DeliveryPolicy())
    pacs = DicomDestination(type="dicom", ae_title="PACS", host="127.0.0.1", port=port)
    files = sample_files("siemens-prisma-3t-prone")
    outbox.send("pacs", pacs, files[:3], "job-1")
    outbox.send("pacs", pacs, files[3:6], "job-2")
    assert associations == ["NODE"]
    outbox.close_all()
    outbox.send("pacs", pacs, files[6:7], "job-3")
    assert associations == ["NODE", "NODE"]
    outbox.close_all()
