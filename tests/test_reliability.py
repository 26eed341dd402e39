"""Reliability with real processes: the node, DCMTK storescu and Orthanc.

Crashes (kill -9) mid-ingest and mid-delivery, a PACS outage, eight senders at once, and a
corpus of bad input. After each, Orthanc must hold exactly the expected derived instances:
none missing, none twice (by SOPInstanceUID).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

from dicomnode.ledger import Job, Ledger
from evaluation.virtual_scanner.cohort import simulate_cohort
from tests.peers import (
    PEER_ENV,
    Node,
    Orthanc,
    child_pids,
    echo,
    have,
    niceness,
    storescu,
    storescu_args,
    wait_for,
)
from tests.samples import sample_files

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have("storescu", "echoscu", "Orthanc"),
                       reason="needs dcmtk and orthanc (make test installs them)"),
]

TERMINAL = {"delivered", "quarantined", "discarded", "failed"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-instance GE 1.5 T multiphase study: 6 phases x 50 slices of 64 x 64."""
    out = tmp_path_factory.mktemp("reliability") / "sim"
    simulate_cohort(out, patients=1, scanners=["ge-1.5t"], seed=31, matrix=64, slices=50,
                    progress=False)
    (folder,) = out.glob("*/ge-1.5t")
    return folder / "dicom"


def _sent_uids(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.rglob("*.dcm")}


def _node(folder: Path, pacs: Orthanc, **settings: object) -> Node:
    destination = {"type": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                   "port": pacs.dicom_port}
    return Node(folder, {"settle_seconds": 2, "destinations": {"pacs": destination},
                         "default_destinations": ["pacs"], **settings})


def _jobs(node: Node) -> list[Job]:
    ledger = Ledger(Path(node.config["var_dir"]) / "ledger.sqlite")
    try:
        return ledger.jobs()
    finally:
        ledger.close()


def _received(node: Node) -> int:
    path = Path(node.config["var_dir"]) / "ledger.sqlite"
    if not path.exists():
        return 0
    ledger = Ledger(path)
    try:
        return len(ledger.instance_paths())
    finally:
        ledger.close()


def _all_done(node: Node, count: int = 1) -> Callable[[], bool]:
    def done() -> bool:
        jobs = _jobs(node)
        return len(jobs) >= count and all(j.state in TERMINAL for j in jobs)
    return done


def _derived_sources(pacs: Orthanc, jobs: int = 1) -> list[str]:
    """For every image in the PACS, the source instance it was derived from.

    Quality reports (SR) are left out, as they have no source image; there is at most one
    per job, as their UIDs are derived like the images'.
    """
    sources, reports = [], 0
    for instance in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{instance}/tags?simplify")
        if tags.get("Modality") == "SR":
            reports += 1
            continue
        sources.append(tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"])
    assert reports <= jobs, f"{reports} quality reports for {jobs} jobs"
    return sources


def _kill(node: Node) -> None:
    assert node.process is not None
    node.process.kill()
    node.process.wait(10)
    node.stop()


def _restart_and_check(
    folder: Path, pacs: Orthanc, sent: set[str], resend: Path | None = None
) -> None:
    """Restart the killed node on its folder (sending the study again if asked), then check
    that the PACS holds one derived instance per sent instance: none missing, none twice."""
    restarted = _node(folder, pacs).start()
    try:
        if resend is not None:
            assert storescu([resend], restarted.ae_title, restarted.port).returncode == 0
        wait_for(_all_done(restarted), 180, "the job to finish")
        (job,) = _jobs(restarted)
        assert job.state == "delivered", job.reason
    finally:
        restarted.stop()
    sources = _derived_sources(pacs)
    assert len(sources) == len(sent) and set(sources) == sent


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    yield orthanc
    orthanc.stop()


def test_crash_mid_ingest_then_the_scanner_sends_again(
    study: Path, pacs: Orthanc, tmp_path: Path
) -> None:
    sent = _sent_uids(study)
    node = _node(tmp_path / "node", pacs).start()
    # Without TCP_NODELAY, storescu stalls ~45 ms an instance: slow enough to kill mid-way.
    slow_env = {k: v for k, v in PEER_ENV.items() if k != "TCP_NODELAY"}
    scanner = subprocess.Popen(storescu_args([study], node.ae_title, node.port),
                               env=slow_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _received(node) >= 60, 60, "60 instances received")
        _kill(node)
        assert scanner.wait(60) != 0  # the scanner saw the association break
    finally:
        if scanner.poll() is None:
            scanner.kill()
    acknowledged = _received(node)
    assert 60 <= acknowledged < len(sent)
    _restart_and_check(tmp_path / "node", pacs, sent, resend=study)


def test_crash_while_the_series_is_harmonized_as_it_arrives(
    study: Path, pacs: Orthanc, tmp_path: Path
) -> None:
    """The head start streams derived instances before the study is complete (and before
    any job exists in the ledger); a crash then must still end with each exactly once."""
    sent = _sent_uids(study)
    node = _node(tmp_path / "node", pacs).start()
    slow_env = {k: v for k, v in PEER_ENV.items() if k != "TCP_NODELAY"}
    in_order = sorted(study.rglob("*.dcm"))  # instance order: the pre-contrast phase first
    scanner = subprocess.Popen(storescu_args(in_order, node.ae_title, node.port),
                               env=slow_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: int(pacs.get("/statistics")["CountInstances"]) >= 20, 120,
                 "derived instances in the PACS while the study arrives")
        assert scanner.poll() is None and _jobs(node) == []
        _kill(node)
        assert scanner.wait(60) != 0
    finally:
        if scanner.poll() is None:
            scanner.kill()
    _restart_and_check(tmp_path / "node", pacs, sent, resend=study)


def test_crash_mid_delivery_resends_without_duplicates(study: Path, tmp_path: Path) -> None:
    # Orthanc with Nagle on takes ~45 ms an instance: slow enough to kill the node mid-way.
    pacs = Orthanc(tmp_path / "orthanc", nodelay=False).start()
    try:
        sent = _sent_uids(study)
        node = _node(tmp_path / "node", pacs).start()
        assert storescu([study], node.ae_title, node.port).returncode == 0
        stored = lambda: int(pacs.get("/statistics")["CountInstances"])  # noqa: E731
        wait_for(lambda: stored() >= 20, 120, "delivery to start")
        assert node.process is not None
        pid = node.process.pid
        # The quality report's worker (the niced child) starts beside delivery; it and the
        # production worker must die with the node.
        wait_for(lambda: any(niceness(child) > 0 for child in child_pids(pid)), 60,
                 "the evaluator's worker")
        workers = child_pids(pid)
        _kill(node)
        assert 20 <= stored() < len(sent)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 15,
                 "the node's workers to end with the node")
        _restart_and_check(tmp_path / "node", pacs, sent)
    finally:
        pacs.stop()


def test_a_pacs_outage_of_30_seconds_delays_but_loses_nothing(
    study: Path, tmp_path: Path
) -> None:
    pacs = Orthanc(tmp_path / "orthanc", nodelay=False).start()
    sent = _sent_uids(study)
    node = _node(tmp_path / "node", pacs,
                 delivery={"backoff_seconds": 1, "backoff_cap_seconds": 4,
                           "max_attempts": 100, "timeout_seconds": 5}).start()
    try:
        assert storescu([study], node.ae_title, node.port).returncode == 0
        wait_for(lambda: int(pacs.get("/statistics")["CountInstances"]) >= 20, 120,
                 "delivery to start")
        pacs.kill()  # the PACS goes away mid-association, as in a crash or a cut network
        time.sleep(30)
        (job,) = _jobs(node)
        assert job.state == "harmonized"  # still waiting, not given up
        pacs.start()
        wait_for(_all_done(node), 180, "the delivery to finish after the outage")
        (job,) = _jobs(node)
        assert job.state == "delivered", job.reason
        sources = _derived_sources(pacs)
        assert len(sources) == len(sent) and set(sources) == sent
    finally:
        node.stop()
        pacs.stop()


def test_eight_scanners_at_once(pacs: Orthanc, tmp_path: Path) -> None:
    simulate_cohort(tmp_path / "sim", patients=8, scanners=["ge-1.5t"], seed=41, matrix=48,
                    slices=8, progress=False)
    studies = sorted((tmp_path / "sim").glob("*/ge-1.5t/dicom"))
    node = _node(tmp_path / "node", pacs).start()
    try:
        results: list[int] = []
        senders = [threading.Thread(target=lambda s=s: results.append(
            storescu([s], node.ae_title, node.port, calling_ae="SCANNER").returncode))
            for s in studies]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(300)
        assert results == [0] * 8
        wait_for(_all_done(node, 8), 300, "eight jobs to finish")
        assert [j.state for j in _jobs(node)] == ["delivered"] * 8
    finally:
        node.stop()
    expected = set().union(*(_sent_uids(s) for s in studies))
    sources = _derived_sources(pacs, jobs=8)
    assert len(sources) == len(expected) and set(sources) == expected


def _bad_corpus(folder: Path) -> dict[str, tuple[Path, int]]:
    """Each bad file and the C-STORE status it must get (PS3.4 Table B.2-1)."""
    folder.mkdir()
    good = sample_files("siemens-prisma-3t-prone")[0]
    cases: dict[str, tuple[Path, int]] = {}

    def variant(name: str, change: Callable[[Dataset], None], status: int) -> None:
        ds = dcmread(good)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        change(ds)
        path = folder / f"{name}.dcm"
        ds.save_as(path)
        cases[name] = (path, status)

    data = good.read_bytes()
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 3])
    cases["truncated"] = (truncated, 0xC000)
    variant("wrong-sop-class", lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
            0xA900)
    variant("no-pixel-data", lambda ds: delattr(ds, "PixelData"), 0xA900)
    variant("absurd-dimensions", lambda ds: setattr(ds, "Rows", 60000), 0xA900)
    variant("malformed-uid", lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.x.07"), 0xA900)
    variant("path-traversal", lambda ds: setattr(ds, "StudyInstanceUID", "../../../tmp/pwned"),
            0xA900)
    return cases


def test_bad_input_gets_its_status_and_a_quarantine_record(tmp_path: Path) -> None:
    folder = tmp_path / "node"
    node = Node(folder, {"settle_seconds": 1}).start()
    try:
        cases = _bad_corpus(tmp_path / "corpus")
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        statuses = {}
        # Send the bytes as they are on disk, without pynetdicom decoding them first.
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for name, (path, _) in cases.items():
                assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
                assert assoc.is_established
                status = assoc.send_c_store(path)
                statuses[name] = int(status.Status) if "Status" in status else None
                assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert statuses == {name: status for name, (_, status) in cases.items()}
        wait_for(_all_done(node, len(cases)), 60, "quarantine records")
        jobs = _jobs(node)
        assert [j.state for j in jobs] == ["quarantined"] * len(cases)
        reasons = " | ".join(j.reason or "" for j in jobs)
        for fragment in ("malformed DICOM: truncated: element", "is not the C-STORE's",
                         "without PixelData", "Rows 60000", "'1.2.x.07' is not a valid UID",
                         "'../../../tmp/pwned' is not a valid UID"):
            assert fragment in reasons
        assert not os.path.exists("/tmp/pwned")
        assert echo(node.ae_title, node.port)  # still serving
        # Every rejected file is kept for the admin, inside the spool.
        spool = folder / "var" / "spool"
        assert len(list(spool.rglob("*.dcm"))) == len(cases)
    finally:
        node.stop()


def test_slices_of_one_series_with_different_rows_quarantine_the_series(
    tmp_path: Path
) -> None:
    first, second = sample_files("siemens-prisma-3t-prone")[:2]
    odd = dcmread(second)
    odd.Rows = odd.Columns = 128
    odd.PixelData = odd.pixel_array[::2, ::2].tobytes()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    odd.save_as(corpus / "odd.dcm")
    (corpus / "first.dcm").write_bytes(first.read_bytes())
    node = Node(tmp_path / "node", {"settle_seconds": 1}).start()
    try:
        assert storescu([corpus], node.ae_title, node.port).returncode == 0
        wait_for(_all_done(node), 30, "the job")
        (job,) = _jobs(node)
        assert job.state == "quarantined"
        assert "instances differ in geometry" in (job.reason or "")
    finally:
        node.stop()


def test_an_unknown_sender_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", {
        # ECHOSCU: the test harness's readiness probe.
        "security": {"allowed_callers": [{"ae_title": "SCANNER"}, {"ae_title": "ECHOSCU"}]},
    }).start()
    try:
        good = sample_files("siemens-prisma-3t-prone")[:1]
        assert storescu(good, node.ae_title, node.port, calling_ae="SCANNER").returncode == 0
        refused = storescu(good, node.ae_title, node.port, calling_ae="INTRUDER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr or "rejected" in refused.stderr.lower()
        assert _received(node) == 1
    finally:
        node.stop()


def test_sighup_reloads_rules_and_a_bad_file_keeps_the_old_ones(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: everything\n    action: discard\n")
    node = Node(tmp_path / "node", {"settle_seconds": 0.5, "rules": str(rules)}).start()
    try:
        assert node.process is not None
        rules.write_text("rules:\n  - name: broken\n    action: explode\n")
        node.process.send_signal(1)  # SIGHUP
        wait_for(lambda: any(e["event"] == "rules_reload_refused" for e in node.log_events()),
                 10, "the refused reload in the log")
        refused = next(e for e in node.log_events() if e["event"] == "rules_reload_refused")
        assert f"{rules}:3: rules.0.action" in refused["error"]
        good = sample_files("siemens-prisma-3t-prone")[:1]
        assert storescu(good, node.ae_title, node.port).returncode == 0
        wait_for(_all_done(node), 30, "the job")
        assert _jobs(node)[0].rule == "everything"  # the old rules kept working
        rules.write_text("rules:\n  - name: hold\n    action: quarantine\n")
        node.process.send_signal(1)
        wait_for(lambda: any(e["event"] == "rules_reloaded" for e in node.log_events()),
                 10, "the reload")
        assert storescu(sample_files("siemens-prisma-3t-prone")[1:2], node.ae_title,
                        node.port).returncode == 0
        wait_for(_all_done(node, 2), 30, "the second job")
        assert [j.rule for j in _jobs(node)] == ["everything", "hold"]
    finally:
        node.stop()
