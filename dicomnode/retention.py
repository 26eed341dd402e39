"""Retention: what the spool and the job folders keep, and for how long.

A purge deletes the received files and the output of a finished job; the ledger keeps the
job, its instances (marked purged) and its history, so an admin can still see what happened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dicomnode.config import NodeConfig
from dicomnode.ledger import Job, Ledger
from dicomnode.logs import get_logger

DAY_SECONDS = 86_400.0


def job_dir(config: NodeConfig, job_id: int) -> Path:
    """Where a job's output lives: var/jobs/<id>/."""
    return config.jobs_dir / f"{job_id:08d}"


def head_starts_dir(config: NodeConfig) -> Path:
    """Where series produced while they arrive live until a job adopts them (its output then
    stays there): var/jobs/arriving/<id>/ (dicomnode/head_start.py)."""
    return config.jobs_dir / "arriving"


def purge_job(ledger: Ledger, config: NodeConfig, job: Job) -> int:
    """Delete a finished job's spool files and output; return how many files were received."""
    instances = ledger.instances(job.id)
    for instance in instances:
        Path(instance.path).unlink(missing_ok=True)
    shutil.rmtree(job_dir(config, job.id), ignore_errors=True)
    if job.output_dir:  # a head start's folder (dicomnode/head_start.py) holds the output
        shutil.rmtree(Path(job.output_dir).parent, ignore_errors=True)
    ledger.mark_purged(job.id)
    get_logger(job_id=job.id).info("job_purged", state=job.state, instances=len(instances))
    return len(instances)
