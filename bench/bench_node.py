"""Node benchmarks, each a ratio against a real peer measured in the same run.

1. Ingest: DCMTK storescu sends the same 200-slice 512x512 series to DCMTK storescp, Orthanc,
   a bare pynetdicom SCP and the node (all with TCP_NODELAY=1), in turns, a few rounds;
   instances per second, node / Orthanc per round.
2. End to end: a simulated 6-phase GE 1.5 T study, storescu -> node -> Orthanc until the
   harmonized series is fully stored, against storescu -> Orthanc directly.

Run with ``make bench`` (or ``python -m bench.bench_node``). Absolute figures drift between
machines and runs (shared/reference/peers.md); the ratios are what to compare.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.ledger import Ledger
from dicomnode.spool import Spool
from evaluation.virtual_scanner.cohort import simulate_cohort
from tests.peers import (
    PEER_ENV,
    Node,
    Orthanc,
    child_pids,
    echo,
    free_port,
    niceness,
    stat_field,
    stop_process,
    storescu,
    wait_for,
)
from tests.samples import sample_files

INGEST_SLICES = 200
INGEST_MATRIX = 512
INGEST_ROUNDS = 3
E2E_ROUNDS = 3


def _ingest_series(folder: Path) -> Path:
    """200 slices of 512x512 uint16 built on a real Siemens header, one series."""
    template = dcmread(sample_files("siemens-prisma-3t-prone")[0])
    rng = np.random.default_rng(0)
    series_uid, study_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for index in range(INGEST_SLICES):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.Rows = ds.Columns = INGEST_MATRIX
        pixels = rng.integers(0, 4096, (INGEST_MATRIX, INGEST_MATRIX), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{index:04d}.dcm")
    return folder


def _timed_send(folder: Path, ae_title: str, port: int) -> float:
    """Send every file under ``folder`` in path order, which is instance order for the
    simulator's series: a scanner sends a series in order (storescu's own scan of a folder
    follows the file system's order, which is not)."""
    files = sorted(folder.rglob("*.dcm"))
    started = time.perf_counter()
    result = storescu(files, ae_title, port)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr}")
    return time.perf_counter() - started


def _node_peak_rss_mb(node: Node) -> float:
    """Peak resident memory (VmHWM) of the node and of its children but the niced quality-
    report worker (so: the production and sending children, and multiprocessing's resource
    tracker), summed, read before the node stops. The quality report's own peak is
    bench_sidecar's."""
    assert node.process is not None
    workers = {pid for pid in child_pids(node.process.pid) if niceness(pid) == 0}
    total = 0.0
    for pid in [node.process.pid, *workers]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def _cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes have used so far (/proc/PID/stat fields 14-15);
    one that has ended counts nothing."""
    ticks = sum((stat_field(pid, 14) or 0) + (stat_field(pid, 15) or 0) for pid in pids)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended (storescu, once it returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _storescp_rate(series: Path, work: Path) -> float:
    port = free_port()
    received = work / "storescp"
    received.mkdir()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(received), "-pdu", "131072", str(port)],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        return INGEST_SLICES / _timed_send(series, "STORESCP", port)
    finally:
        stop_process(storescp)


def _orthanc_rate(series: Path, work: Path) -> float:
    orthanc = Orthanc(work / "orthanc").start()
    try:
        return INGEST_SLICES / _timed_send(series, orthanc.ae_title, orthanc.dicom_port)
    finally:
        orthanc.stop()


def _bare_rate(series: Path, work: Path) -> float:
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_scp", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: echo("BARE", port), 60, "the bare pynetdicom SCP", interval=0.3)
        return INGEST_SLICES / _timed_send(series, "BARE", port)
    finally:
        stop_process(bare)


def _fsync_only_rate(series: Path, work: Path) -> float:
    """The durable write alone, as the node does it before Success: this disk's share."""
    spool = Spool(work / "spool-only")
    payloads = [path.read_bytes() for path in sorted(series.glob("*.dcm"))]
    started = time.perf_counter()
    for data in payloads:
        spool.store(data)
    return INGEST_SLICES / (time.perf_counter() - started)


def _node_rate(series: Path, work: Path) -> float:
    # A long settle keeps the pipeline idle: this measures receiving only.
    node = Node(work / "node", {"settle_seconds": 3600}).start()
    try:
        return INGEST_SLICES / _timed_send(series, node.ae_title, node.port)
    finally:
        node.stop()


INGEST_RECEIVERS = {"storescp": _storescp_rate, "orthanc": _orthanc_rate,
                    "pynetdicom": _bare_rate, "fsync only": _fsync_only_rate,
                    "node": _node_rate}


def bench_ingest(work: Path, rounds: int = INGEST_ROUNDS) -> dict[str, float]:
    """Median instances per second into each receiver, on the same series.

    This machine is shared and its disk and CPUs drift from one send to the next, so the
    receivers take turns, ``rounds`` times, in reverse order every other round, and
    ``node/orthanc`` is the median of the ratios of each round (peers.md: compare as ratios
    measured in one run).
    """
    series = _ingest_series(work / "series")
    runs: dict[str, list[float]] = {name: [] for name in INGEST_RECEIVERS}
    for turn in range(rounds):
        receivers = list(INGEST_RECEIVERS.items())
        for name, rate in receivers[::-1] if turn % 2 else receivers:
            folder = work / f"{turn}-{name.replace(' ', '-')}"
            folder.mkdir()
            # The receivers before wrote 100 MB without fsync (storescp, Orthanc): flushed
            # now, the disk does not write them back during the next receiver's fsyncs.
            os.sync()
            runs[name].append(rate(series, folder))
            _remove(folder)
    rates = {name: statistics.median(values) for name, values in runs.items()}
    rates["node/orthanc"] = statistics.median(
        node / orthanc for node, orthanc in zip(runs["node"], runs["orthanc"], strict=True))
    return rates


def _orthanc_count(orthanc: Orthanc) -> int:
    return int(orthanc.get("/statistics")["CountInstances"])


def bench_end_to_end(work: Path, matrix: int, slices: int,
                     rounds: int = E2E_ROUNDS) -> tuple[dict[str, float], list[float]]:
    """storescu -> Orthanc against storescu -> node (histogram) -> Orthanc, same study.

    The GE multiphase study carries NumberOfTemporalPositions and LocationsInAcquisition, so
    the node completes it on the expected count rather than after a quiet period. The two
    take turns ``rounds`` times, each with a fresh Orthanc (and node), since this machine
    drifts from one transfer to the next; returns the round with the median ratio (its
    ``peak_mb`` the highest of all rounds) and every round's ratio, in order.
    """
    simulate_cohort(work / "sim", patients=1, scanners=["ge-1.5t"], seed=5, progress=False,
                    matrix=matrix, slices=slices)
    (study,) = (work / "sim").glob("*/ge-1.5t")
    results = [_end_to_end_round(work / f"round-{turn}", study / "dicom", matrix)
               for turn in range(rounds)]
    ratios = [r["node"] / r["direct"] for r in results]
    median = results[ratios.index(statistics.median_low(ratios))]
    return {**median, "peak_mb": max(r["peak_mb"] for r in results)}, ratios


def _end_to_end_round(work: Path, series: Path, matrix: int) -> dict[str, float]:
    files = list(series.rglob("*.dcm"))
    count = len(files)
    pixel_mb = count * matrix * matrix * 2 / 2**20
    # Files still being written back (the simulator's, the previous round's) would make the
    # node's fsyncs wait behind them, and the direct transfer, which does not fsync, would not.
    os.sync()
    direct = Orthanc(work / "orthanc-direct").start()
    assert direct.process is not None
    cpu: dict[str, float] = {}
    try:
        orthanc_cpu, sender_cpu = _cpu_seconds([direct.process.pid]), _children_cpu_seconds()
        started = time.perf_counter()
        _timed_send(series, direct.ae_title, direct.dicom_port)
        cpu["direct storescu"] = _children_cpu_seconds() - sender_cpu
        wait_for(lambda: _orthanc_count(direct) >= count, 300, "Orthanc to store the study")
        direct_seconds = time.perf_counter() - started
        cpu["direct Orthanc"] = _cpu_seconds([direct.process.pid]) - orthanc_cpu
    finally:
        direct.stop()
        _remove(direct.folder)
    os.sync()

    pacs = Orthanc(work / "orthanc-via-node").start()
    destination = {"type": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                   "port": pacs.dicom_port}
    node = Node(work / "node-e2e", {"settle_seconds": 60, "destinations": {"pacs": destination},
                                    "default_destinations": ["pacs"]}).start()
    assert pacs.process is not None and node.process is not None
    try:
        node_pids = [node.process.pid, *child_pids(node.process.pid)]
        before = {"storescu": _children_cpu_seconds(), "node": _cpu_seconds(node_pids[:1]),
                  "node children": _cpu_seconds(node_pids[1:]),
                  "Orthanc": _cpu_seconds([pacs.process.pid])}
        started, wall = time.perf_counter(), time.time()
        _timed_send(series, node.ae_title, node.port)
        cpu["storescu"] = _children_cpu_seconds() - before["storescu"]
        received = time.perf_counter() - started
        wait_for(lambda: _orthanc_count(pacs) >= count, 600, "the harmonized series in Orthanc",
                 interval=0.1)
        node_seconds = time.perf_counter() - started
        # The last C-STORE response reaches the node just after Orthanc counts the instance;
        # its ledger says so a moment later (stopped at once, the job would be recorded
        # delivered only when the node shuts down).
        ledger_path = Path(node.config["var_dir"]) / "ledger.sqlite"
        wait_for(lambda: _job_state(ledger_path) == "delivered", 60, "the job to be delivered",
                 interval=0.05)
        peak_mb = _node_peak_rss_mb(node)
        cpu["node"] = _cpu_seconds(node_pids[:1]) - before["node"]
        # Children started before the send (production, sending, resource tracker) and any
        # started since; a child that ended meanwhile is not counted.
        children = {*node_pids[1:], *child_pids(node.process.pid)}
        cpu["node children"] = _cpu_seconds(children) - before["node children"]
        cpu["Orthanc"] = _cpu_seconds([pacs.process.pid]) - before["Orthanc"]
    finally:
        node.stop()
        pacs.stop()
    steps = _job_steps(ledger_path, wall)
    _remove(pacs.folder, node.folder)
    return {"count": count, "direct": direct_seconds, "node": node_seconds,
            "received": received, "peak_mb": peak_mb, "pixel_mb": pixel_mb, **steps,
            **{f"cpu {name}": seconds for name, seconds in cpu.items()}}


def _job_state(ledger_path: Path) -> str | None:
    """The state of the (only) job, read-only while the node runs (the ledger is in WAL mode)."""
    with closing(sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT state FROM jobs ORDER BY id LIMIT 1").fetchone()
    return str(row[0]) if row else None


def _remove(*folders: Path) -> None:
    """Delete a transfer's files once it is measured.

    Left in the page cache, they made later rounds slower, and the path via the node more
    than the direct one: in the third 512² round after the ingest rounds, the node's
    children spent 1.1 s of system time instead of 0.45 (perf: the same number of page
    faults, their zeroing 20 times slower; copies into new page-cache pages 9 times
    slower). This VM seems to back memory the guest has not used lately only when it is
    touched (virtio-balloon free page reporting, DAMON pageout), and the path via the node
    writes three copies (spool, derived series, Orthanc) where the direct one writes one.
    """
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _job_steps(ledger_path: Path, wall: float) -> dict[str, float]:
    """When the job reached each state, in seconds from the first instance sent."""
    ledger = Ledger(ledger_path)
    try:
        (job,) = ledger.jobs()
        steps: dict[str, float] = {}
        for at, state, _ in ledger.events(job.id):
            # The first event of each state: later ones (the quality report's) keep the state.
            steps.setdefault(state, at - wall)
        return steps
    finally:
        ledger.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        rates = bench_ingest(work / "ingest")
        print(f"ingest, {INGEST_SLICES} x {INGEST_MATRIX}x{INGEST_MATRIX} uint16, one association, "
              f"TCP_NODELAY=1, median of {INGEST_ROUNDS} interleaved rounds:")
        for name in INGEST_RECEIVERS:
            print(f"  {name:<10} {rates[name]:7.1f} instances/s")
        print("  (pynetdicom: a bare pynetdicom SCP that answers Success at once, pynetdicom's "
              "ceiling\n   (the node serves its associations itself, dicomnode/store_scp.py);\n"
              "   fsync only: the node's durable write of each file, no network;\n"
              "   the node fsyncs each instance and its folder, and writes its ledger row, "
              "before Success)")
        print(f"  ratio node/storescp = {rates['node'] / rates['storescp']:.2f}, "
              f"node/Orthanc = {rates['node/orthanc']:.2f} (per round; target >= 1), "
              f"bare pynetdicom/Orthanc = {rates['pynetdicom'] / rates['orthanc']:.2f}")
        for matrix, slices in ((128, 32), (512, 48)):
            e2e, ratios = bench_end_to_end(work / f"e2e-{matrix}", matrix, slices)
            print(f"end to end, simulated GE 1.5 T study, 6 phases x {slices} slices of "
                  f"{matrix}x{matrix} ({e2e['count']:.0f} instances), histogram:")
            print(f"  storescu -> Orthanc                         {e2e['direct']:6.2f} s")
            print(f"  storescu -> node -> harmonized in Orthanc   {e2e['node']:6.2f} s "
                  f"(of which sending {e2e['received']:.2f} s)")
            print(f"  ratio via node / direct = {e2e['node'] / e2e['direct']:.2f} (target <= 2), "
                  f"the median of {len(ratios)} interleaved rounds: "
                  + ", ".join(f"{ratio:.2f}" for ratio in ratios))
            print("  node steps, seconds from the first instance sent: "
                  + ", ".join(f"{state} {e2e[state]:.2f}" for state in
                              ("complete", "routed", "harmonized", "delivered") if state in e2e)
                  + f", all in Orthanc {e2e['node']:.2f}")
            print("  CPU seconds of the median round (this machine has "
                  f"{os.cpu_count()} cores): direct storescu {e2e['cpu direct storescu']:.2f}, "
                  f"Orthanc {e2e['cpu direct Orthanc']:.2f}; via the node storescu "
                  f"{e2e['cpu storescu']:.2f}, node {e2e['cpu node']:.2f} + its children "
                  f"{e2e['cpu node children']:.2f} (production, sending, quality report), Orthanc "
                  f"{e2e['cpu Orthanc']:.2f}")
            budget = 3 * e2e["pixel_mb"] + 500
            print("  node peak memory (node and its children but the quality report's, highest "
                  "round) "
                  f"{e2e['peak_mb']:.0f} MB; budget 3 x {e2e['pixel_mb']:.0f} MB of pixels "
                  f"+ 500 MB = {budget:.0f} MB")


if __name__ == "__main__":
    main()
