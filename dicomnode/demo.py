"""``make demo``: the node's main job on its embedded defaults, end to end on this machine.

1. Simulate one GE 1.5 T breast DCE study with the virtual scanner (``dicomnode-eval``).
2. Start ``dicomnode serve`` with the embedded defaults (spool, ledger and output under var/).
3. Send the study with DCMTK ``storescu``, the way a scanner would.
4. Wait for the harmonized series and its DICOM-SR quality report, then print what came in,
   which rule matched, what went out and where, how much closer it came to the reference
   scanner, and the report's verdict.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from scipy.stats import wasserstein_distance

from dicomnode.assembly import acquisitions_from_paths
from dicomnode.config import NodeConfig
from dicomnode.ledger import Ledger, Report
from dicomnode.quality_reports import REPORT_FILE
from evaluation.quality_report import REASON_NAME
from evaluation.virtual_scanner.truth import breast_mask

SCANNER = "ge-1.5t"
REFERENCE = "siemens-3t"
TERMINAL = ("delivered", "quarantined", "failed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _wait_for_echo(port: int, node: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if node.poll() is not None:
            sys.exit(f"the node exited; its log is {log}")
        echo = subprocess.run(["echoscu", "-aec", "DICOMNODE", "127.0.0.1", str(port)],
                              capture_output=True)
        if echo.returncode == 0:
            return
        time.sleep(0.3)
    sys.exit(f"the node did not answer C-ECHO within 60 s; its log is {log}")


def _foreground_distance(values: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    return float(wasserstein_distance(values[mask].ravel(), reference[mask].ravel()))


def main() -> int:
    config = NodeConfig()  # the embedded defaults, as `dicomnode serve` uses them
    work = config.var_dir / "demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "TCP_NODELAY": "1"}

    _step(f"simulating one {SCANNER} breast DCE study (reference rendering: {REFERENCE})")
    simulate = [sys.executable, "-m", "evaluation.cli", "simulate", "--out", str(work / "sim"),
                "--patients", "1", "--scanners", SCANNER, "--seed", "7", "--matrix", "128",
                "--slices", "32", "--reference", REFERENCE]
    print(" ".join(simulate[2:]), flush=True)
    subprocess.run(simulate, check=True)
    (study,) = sorted((work / "sim").glob(f"*/{SCANNER}"))

    port = _free_port()
    _step(f"starting the node: dicomnode serve --port {port} --settle-seconds 2")
    log_path = work / "node.log"
    with log_path.open("wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--port", str(port),
             "--settle-seconds", "2"], stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        _wait_for_echo(port, node, log_path)
        _step("sending the study with DCMTK storescu, as a scanner would")
        send = ["storescu", "-aet", "SCANNER", "-aec", "DICOMNODE", "+sd", "+r", "-R",
                "127.0.0.1", str(port), str(study / "dicom")]
        print(" ".join(send), flush=True)
        started, since = time.monotonic(), time.time()
        subprocess.run(send, check=True, env=env)
        jobs = _wait_for_jobs(config, study, since)
        elapsed = time.monotonic() - started
        _wait_for_reports(config, [job_id for _, job_id in jobs])
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    _report(config, study, jobs, elapsed, log_path)
    return 0 if all(job_state == "delivered" for job_state, _ in jobs) else 1


def _study_uid(study: Path) -> str:
    first = next(p for p in sorted((study / "dicom").rglob("*.dcm")))
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def _wait_for_jobs(config: NodeConfig, study: Path, since: float) -> list[tuple[str, int]]:
    """The jobs this run made for the study (a ledger from an earlier demo holds older ones:
    the same study sent again becomes a new version of its job)."""
    uid = _study_uid(study)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if config.ledger_path.exists():
            ledger = Ledger(config.ledger_path)
            jobs = [j for j in ledger.jobs() if j.study_uid == uid and j.created_at >= since]
            ledger.close()
            if jobs and all(j.state in TERMINAL for j in jobs):
                return [(j.state, j.id) for j in jobs]
        time.sleep(0.5)
    sys.exit("the harmonized series did not arrive within 300 s; see `dicomnode jobs list`")


def _wait_for_reports(config: NodeConfig, job_ids: list[int]) -> None:
    """The quality reports run beside delivery; give them time to be made and sent."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ledger = Ledger(config.ledger_path)
        reports = [r for r in map(ledger.report, job_ids) if r is not None]
        sending = [d for j in job_ids for d in ledger.deliveries(j, kind="report")
                   if d.state == "pending"]
        ledger.close()
        if all(r.state != "pending" for r in reports) and not sending:
            return
        time.sleep(0.5)
    sys.exit("the quality report was not made within 300 s; see `dicomnode jobs show`")


def _report(
    config: NodeConfig, study: Path, jobs: list[tuple[str, int]], elapsed: float, log: Path
) -> None:
    ledger = Ledger(config.ledger_path)
    _step(f"done in {elapsed:.1f} s after the first instance was sent")
    for state, job_id in jobs:
        job = ledger.job(job_id)
        assert job is not None
        instances = ledger.instances(job_id)
        first = dcmread(instances[0].path, stop_before_pixels=True)
        series = {i.series_uid for i in instances}
        print(f"{'job':<10}{job_id} ({state})")
        print(f"{'in':<10}{len(instances)} instances in {len(series)} series from "
              f"{instances[0].calling_ae}: {first.Manufacturer} {first.ManufacturerModelName}, "
              f"{first.MagneticFieldStrength} T, \"{first.SeriesDescription}\"")
        print(f"{'rule':<10}{job.rule}: {job.method or 'passthrough'} / {job.model or '-'}")
        if job.reason:
            print(f"{'reason':<10}{job.reason}")
        for delivery in ledger.deliveries(job_id, kind="images"):
            target = config.destinations[delivery.destination]
            where = getattr(target, "path", None)
            place = f"{where}/job-{job_id:08d}" if where else delivery.destination
            out = [p for p in sorted(Path(place).glob("*.dcm")) if p.name != REPORT_FILE
                   ] if where else []
            description = dcmread(out[0], stop_before_pixels=True).SeriesDescription if out else ""
            print(f"{'out':<10}{len(out)} instances, \"{description}\" -> "
                  f"{delivery.destination} ({delivery.state}): {place}")
            if out and job.output_dir:
                _closeness(study, Path(place))
        report = ledger.report(job_id)
        if report is not None:
            _quality(report)
    ledger.close()
    print(f"{'log':<10}{log}; the admin's view: dicomnode jobs list")


def _quality(report: Report) -> None:
    """The sidecar's verdict and what drove it, from the SR the node wrote."""
    if report.state != "written" or not report.path:
        print(f"{'quality':<10}report {report.state}: {report.error}")
        return
    def texts(items: Sequence[Dataset]) -> Iterator[str]:
        for item in items:
            if item.ConceptNameCodeSequence[0].CodeValue == REASON_NAME.value:
                yield str(item.TextValue)
            yield from texts(item.get("ContentSequence", []))

    reasons = list(texts(dcmread(report.path).ContentSequence))
    print(f"{'quality':<10}DICOM-SR {report.path}: verdict {report.verdict}"
          + "".join(f"\n{'':<10}- {text}" for text in reasons))


def _closeness(study: Path, delivered: Path) -> None:
    """How far the breast histogram is from the reference scanner, before and after."""
    reference = np.load(study / "truth" / "truth.npz")["reference"]
    (before,) = acquisitions_from_paths([study / "dicom"])
    (after,) = acquisitions_from_paths([delivered])
    mask = np.broadcast_to(breast_mask(study / "truth"), before.pixels.shape)
    print(f"{'check':<10}breast-foreground Wasserstein distance to the {REFERENCE} rendering "
          f"of the same virtual patient: {_foreground_distance(before.pixels, reference, mask):.1f}"
          f" before, {_foreground_distance(after.pixels, reference, mask):.1f} after")


if __name__ == "__main__":
    sys.exit(main())
