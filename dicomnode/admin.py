"""What an admin runs against a node's ledger: jobs list/show/retry/purge and status.

Every command reads the ledger file directly (SQLite WAL allows it while the node runs), so
they work whether or not the node is up.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sequence

from dicomnode.config import NodeConfig
from dicomnode.head_start import progress, unadopted
from dicomnode.ledger import Job, Ledger
from dicomnode.metrics import free_disk_mb
from dicomnode.retention import DAY_SECONDS, head_starts_dir, purge_job


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def open_ledger(config: NodeConfig) -> Ledger | None:
    if not config.ledger_path.exists():
        print(f"no ledger at {config.ledger_path}: the node has received nothing yet")
        return None
    return Ledger(config.ledger_path)


def jobs_list(ledger: Ledger, states: Sequence[str] | None) -> int:
    print(f"{'job':>6}  {'state':<12} {'updated':<19}  {'rule':<18} {'report':<14} reason")
    for job in ledger.jobs(states):
        report = ledger.report(job.id)
        quality = "-" if report is None else (
            report.verdict if report.state == "written" and report.verdict else report.state)
        print(f"{job.id:>6}  {job.state:<12} {_when(job.updated_at):<19}  "
              f"{job.rule or '-':<18} {quality:<14} {job.reason or ''}")
    return 0


def _find(ledger: Ledger, job_id: int) -> Job | None:
    job = ledger.job(job_id)
    if job is None:
        print(f"no job {job_id}", file=sys.stderr)
    return job


def jobs_show(ledger: Ledger, job_id: int) -> int:
    job = _find(ledger, job_id)
    if job is None:
        return 2
    print(f"job {job.id}: {job.state}  study {job.study_uid}")
    if job.supersedes:
        print(f"  new version of job {job.supersedes}")
    print(f"  rule {job.rule}  method {job.method}  model {job.model}")
    print(f"  reason: {job.reason or '-'}\n  output: {job.output_dir or '-'}")
    instances = ledger.instances(job.id)
    senders = sorted({i.calling_ae for i in instances})
    series = sorted({i.series_uid or "?" for i in instances})
    print(f"  {len(instances)} instances from {', '.join(senders)} in series {', '.join(series)}")
    report = ledger.report(job.id)
    if report:
        detail = report.verdict if report.state == "written" else report.error
        print(f"  quality report: {report.state}{': ' + detail if detail else ''}"
              f"{'  ' + report.path if report.path else ''}")
    for delivery in ledger.deliveries(job.id):
        print(f"  delivery {delivery.destination} ({delivery.kind}): {delivery.state}, "
              f"{delivery.attempts} attempts"
              f"{', last error: ' + delivery.last_error if delivery.last_error else ''}")
    for at, state, message in ledger.events(job.id):
        print(f"  {_when(at)}  {state:<12} {message}")
    return 0


def jobs_retry(ledger: Ledger, job_id: int) -> int:
    job = _find(ledger, job_id)
    if job is None:
        return 2
    report = ledger.report(job.id)
    if job.state not in ("quarantined", "failed") and report and report.state == "failed":
        ledger.request_report(job.id, report.destinations.split(","))
        print(f"job {job.id}: its quality report will be made again")
        return 0
    try:
        ledger.retry(job.id)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"job {job.id} will be routed again")
    return 0


def jobs_purge(
    ledger: Ledger, config: NodeConfig, states: Sequence[str], older_than_days: float
) -> int:
    """Delete the files of finished jobs; their ledger history stays."""
    before = time.time() - older_than_days * DAY_SECONDS
    jobs = ledger.purgeable(states, before)
    files = sum(purge_job(ledger, config, job) for job in jobs)
    print(f"purged {len(jobs)} jobs ({files} received files) in states {', '.join(states)}, "
          f"last changed over {older_than_days:g} days ago")
    return 0


def status(config: NodeConfig) -> int:
    """One screen: where the node listens, what it holds, and what waits."""
    print(f"node {config.ae_title} on {config.host}:{config.port}, var {config.var_dir}")
    destinations = ", ".join(f"{name} ({d.type})" for name, d in config.destinations.items())
    print(f"destinations: {destinations}; rules {config.rules}")
    free_mb = free_disk_mb(config.spool_dir)  # what admission control compares
    low = free_mb < config.admission.min_free_disk_mb
    warning = " (below the admission threshold)" if low else ""
    print(f"free disk: {free_mb / 1024:.1f} GiB{warning}")
    ledger = open_ledger(config)
    if ledger is None:
        return 0
    counts = ledger.counts()
    jobs = ", ".join(f"{state} {n}" for state, n in counts.items() if n and state in (
        "complete", "routed", "harmonized", "delivered", "quarantined", "discarded", "failed"))
    print(f"jobs: {jobs or 'none'}")
    print(f"waiting: {counts['unclaimed_instances']} instances not yet in a job, "
          f"{counts['pending_deliveries']} deliveries pending")
    adopted = {job.output_dir for job in ledger.jobs() if job.output_dir}
    for folder in unadopted(head_starts_dir(config), adopted):
        given, made = progress(folder)
        print(f"harmonizing while arriving: {folder} ({given} instances given, {made} derived"
              " files; a job adopts it when its study is complete)")
    if any(counts[f"reports_{s}"] for s in ("pending", "written", "failed")):
        print(f"quality reports: {counts['reports_written']} written, "
              f"{counts['reports_pending']} pending, {counts['reports_failed']} failed")
    last = ledger.last_received()
    print(f"last instance received: {_when(last) if last else 'never'}")
    ledger.close()
    return 0
