"""Node benchmarks, each a ratio against a real peer measured in the same run.

1. Ingest: DCMTK storescu sends the same 200-slice 512x512 series to DCMTK storescp and to
   the node (both with TCP_NODELAY=1); instances per second, node / storescp.
2. End to end: a simulated 6-phase GE 1.5 T study, storescu -> node -> Orthanc until the
   harmonized series is fully stored, against storescu -> Orthanc directly.

Run with ``make bench`` (or ``python -m bench.bench_node``). Absolute figures drift between
machines and runs (shared/reference/peers.md); the ratios are what to compare.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from evaluation.virtual_scanner.cohort import simulate_cohort
from tests.peers import PEER_ENV, Node, Orthanc, free_port, stop_process, storescu, wait_for
from tests.samples import sample_files

INGEST_SLICES = 200
INGEST_MATRIX = 512


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
    started = time.perf_counter()
    result = storescu([folder], ae_title, port)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr}")
    return time.perf_counter() - started


def bench_ingest(work: Path) -> tuple[float, float]:
    series = _ingest_series(work / "series")
    port = free_port()
    received = work / "storescp"
    received.mkdir()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(received), "-pdu", "131072", str(port)],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        dcmtk_seconds = _timed_send(series, "STORESCP", port)
    finally:
        stop_process(storescp)
    # A long settle keeps the pipeline idle: this measures receiving only.
    node = Node(work / "node", {"settle_seconds": 3600}).start()
    try:
        node_seconds = _timed_send(series, node.ae_title, node.port)
    finally:
        node.stop()
    return INGEST_SLICES / dcmtk_seconds, INGEST_SLICES / node_seconds


def _orthanc_count(orthanc: Orthanc) -> int:
    return int(orthanc.get("/statistics")["CountInstances"])


def bench_end_to_end(work: Path) -> tuple[float, float, int]:
    simulate_cohort(work / "sim", patients=1, scanners=["ge-1.5t"], seed=5, progress=False,
                    matrix=128, slices=32)
    (study,) = (work / "sim").glob("*/ge-1.5t")
    count = len(list((study / "dicom").rglob("*.dcm")))

    direct = Orthanc(work / "orthanc-direct").start()
    try:
        started = time.perf_counter()
        _timed_send(study / "dicom", direct.ae_title, direct.dicom_port)
        wait_for(lambda: _orthanc_count(direct) >= count, 300, "Orthanc to store the study")
        direct_seconds = time.perf_counter() - started
    finally:
        direct.stop()

    pacs = Orthanc(work / "orthanc-via-node").start()
    destination = {"type": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                   "port": pacs.dicom_port}
    node = Node(work / "node-e2e", {"settle_seconds": 1, "destinations": {"pacs": destination},
                                    "default_destinations": ["pacs"]}).start()
    try:
        started = time.perf_counter()
        _timed_send(study / "dicom", node.ae_title, node.port)
        wait_for(lambda: _orthanc_count(pacs) >= count, 600, "the harmonized series in Orthanc",
                 interval=0.2)
        node_seconds = time.perf_counter() - started
    finally:
        node.stop()
        pacs.stop()
    return direct_seconds, node_seconds, count


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        dcmtk_rate, node_rate = bench_ingest(work / "ingest")
        print(f"ingest, {INGEST_SLICES} x {INGEST_MATRIX}x{INGEST_MATRIX} uint16, one association:")
        print(f"  DCMTK storescp   {dcmtk_rate:7.1f} instances/s")
        print(f"  dicomnode        {node_rate:7.1f} instances/s (fsync per instance + ledger row)")
        print(f"  ratio node/storescp = {node_rate / dcmtk_rate:.2f}")
        direct, via_node, count = bench_end_to_end(work / "e2e")
        print(f"end to end, simulated 6-phase GE 1.5 T study, {count} instances 128x128:")
        print(f"  storescu -> Orthanc                      {direct:6.2f} s")
        print(f"  storescu -> node -> harmonized in Orthanc {via_node:6.2f} s "
              "(includes settle_seconds = 1)")
        print(f"  ratio via node / direct = {via_node / direct:.2f}")


if __name__ == "__main__":
    main()
