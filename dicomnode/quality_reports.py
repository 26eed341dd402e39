"""The quality-report sidecar: a DICOM-SR beside each harmonized acquisition, off the image path.

A rule with ``evaluate: true`` gets a report per job (ledger table ``reports``). The
:class:`Evaluator` thread takes pending reports one at a time and computes each in a child
process (evaluation.sidecar for the measurements, evaluation.quality_report for the SR), so
the CPU work and memory of the evaluation never stall the network or the delivery of the
images. The SR is written durably into the job's folder, then queued for the rule's
destinations like the images, as deliveries of kind ``report``. A report that cannot be made
(no breast found, a corrupt reference file, a crashed child) is marked failed with the reason;
the images are untouched.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from dicomnode import __version__
from dicomnode.assembly import assemble
from dicomnode.child_process import child_pool
from dicomnode.config import NodeConfig
from dicomnode.ledger import Ledger, Report
from dicomnode.logs import get_logger
from dicomnode.provenance import read_provenance
from dicomnode.retention import job_dir
from dicomnode.spool import write_durably
from evaluation.sidecar import Thresholds

REPORT_FILE = "quality-report.dcm"
_NICENESS = 10


@dataclass(frozen=True)
class ReportTask:
    """Everything the child process needs, as plain picklable values."""

    source_paths: tuple[str, ...]
    derived_paths: tuple[str, ...]
    report_dir: str
    reference: str | None
    thresholds: Thresholds


def make_report(task: ReportTask) -> tuple[str, str]:
    """Measure, write the SR durably, and return (its path, the verdict). Runs in a child."""
    # Imported here: the evaluation stack (pyradiomics, scikit-learn) loads in the child only.
    from evaluation.domain_reference import default_reference_path, load
    from evaluation.quality_report import quality_report
    from evaluation.sidecar import assess

    source = assemble([dcmread(p, defer_size="64 KB") for p in task.source_paths])
    derived = assemble([dcmread(p, defer_size="64 KB") for p in task.derived_paths])
    provenance = read_provenance(derived.sources[0][0])
    if provenance is None:
        raise ValueError(f"{task.derived_paths[0]} has no dicomnode provenance block")
    reference = load(Path(task.reference) if task.reference else default_reference_path())
    assessment = assess(source.acquisition, derived.acquisition, reference, task.thresholds)
    report = quality_report(
        assessment,
        [ds for phase in source.sources for ds in phase],
        [ds for phase in derived.sources for ds in phase],
        method=provenance.method, model=provenance.model,
        model_sha256=provenance.model_sha256, version=__version__,
    )
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    path = write_durably(Path(task.report_dir), REPORT_FILE, buffer.getvalue())
    return str(path), str(assessment.verdict)


class Evaluator:
    """Makes the pending quality reports of the ledger, one at a time, in a child process."""

    def __init__(self, config: NodeConfig, ledger: Ledger,
                 timeout_seconds: float = 900.0) -> None:
        self.config = config
        self.ledger = ledger
        self.timeout_seconds = timeout_seconds
        self._pool: ProcessPoolExecutor | None = None

    def task(self, report: Report) -> ReportTask:
        job = self.ledger.job(report.job_id)
        if job is None or not job.output_dir:
            raise ValueError(f"job {report.job_id} has no harmonized output")
        settings = self.config.evaluation
        return ReportTask(
            source_paths=tuple(i.path for i in self.ledger.version_instances(job.id)),
            derived_paths=tuple(str(p) for p in sorted(Path(job.output_dir).glob("*.dcm"))),
            report_dir=str(job_dir(self.config, job.id) / "report"),
            reference=str(settings.reference) if settings.reference else None,
            thresholds=settings.limits(),
        )

    def run_pending(self, in_process: bool = False) -> int:
        """Make every pending report; returns how many were handled. ``in_process`` runs
        them in this process (tests, and one-shot tools)."""
        handled = 0
        for report in self.ledger.pending_reports():
            self._run(report, in_process)
            handled += 1
        return handled

    def _run(self, report: Report, in_process: bool) -> None:
        log = get_logger(job_id=report.job_id)
        try:
            task = self.task(report)
            if in_process:
                path, verdict = make_report(task)
            else:
                path, verdict = self._submit(task).result(timeout=self.timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - any failure is the report's, never the job's
            if isinstance(exc, BrokenProcessPool):
                self._pool = None
            reason = f"{type(exc).__name__}: {exc}"
            self.ledger.report_failed(report.job_id, reason)
            log.warning("report_failed", reason=reason)
            return
        self.ledger.report_written(report.job_id, path, verdict)
        log.info("report_written", verdict=verdict, path=path, destinations=report.destinations)

    def _submit(self, task: ReportTask) -> Future[tuple[str, str]]:
        if self._pool is None:
            # Niced: on a busy machine, receiving and delivering come first.
            self._pool = child_pool(_NICENESS)
        return self._pool.submit(make_report, task)

    def serve(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """The evaluator thread's loop: make pending reports until ``stop`` is set."""
        while not stop.is_set():
            self.run_pending()
            stop.wait(poll_seconds)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
