"""The job pipeline: settle -> route -> harmonize + provenance -> deliver, driven by the ledger.

Each step reads a job's state from the ledger, does one thing, and writes the next state, so
a restart resumes every unfinished job from where the ledger says it is. Data flows one way:
network -> spool/ledger -> assembly -> routing -> harmonizer -> provenance -> delivery.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread

from dicomnode.assembly import (
    AssemblyError,
    assemble,
    group_acquisitions,
    read_header,
    unsupported_reason,
)
from dicomnode.config import NodeConfig
from dicomnode.delivery import DeliveryError, backoff_seconds, deliver
from dicomnode.ledger import Instance, Job, Ledger
from dicomnode.logs import get_logger
from dicomnode.provenance import Provenance, config_hash, derived_series
from dicomnode.routing import Rule, RuleSet
from dicomnode.spool import write_durably
from harmonizers.base import ModelError
from harmonizers.registry import load_model


class Pipeline:
    """Moves every job one step per call of :meth:`run_once`."""

    def __init__(self, config: NodeConfig, ledger: Ledger, rules: RuleSet) -> None:
        self.config = config
        self.ledger = ledger
        self.rules = rules

    def run_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.claim_settled(now)
        for job in self.ledger.jobs(["complete"]):
            self._guarded(job, self.route)
        for job in self.ledger.jobs(["routed"]):
            self._guarded(job, self.produce)
        self.deliver_due(now)

    def _guarded(self, job: Job, step: Callable[[Job], None]) -> None:
        """Run one step; an unexpected error fails that job and leaves the others running."""
        try:
            step(job)
        except Exception as exc:  # noqa: BLE001
            get_logger(job_id=job.id).exception("job_failed", step=step.__name__)
            reason = f"{step.__name__} failed: {type(exc).__name__}: {exc}"
            self.ledger.update_job(job.id, "failed", reason, reason=reason)

    # --- settle --------------------------------------------------------------------------

    def claim_settled(self, now: float) -> None:
        """Turn quiet studies into jobs: one per acquisition, one per unusable series."""
        for instance in self.ledger.unclaimed(None):
            job_id = self.ledger.create_job(None, [instance.id], instance.parse_error)
            get_logger(job_id=job_id).warning(
                "job_quarantined", reason=instance.parse_error, path=instance.path,
                calling_ae=instance.calling_ae,
            )
        for study_uid in self.ledger.settled_studies(self.config.settle_seconds, now):
            for instance_ids, reason in _split_study(self.ledger.unclaimed(study_uid)):
                job_id = self.ledger.create_job(study_uid, instance_ids, reason)
                log = get_logger(job_id=job_id, study_uid=study_uid)
                if reason:
                    log.warning("job_quarantined", reason=reason, instances=len(instance_ids))
                else:
                    log.info("job_complete", instances=len(instance_ids))

    # --- route ---------------------------------------------------------------------------

    def route(self, job: Job) -> None:
        log = get_logger(job_id=job.id, study_uid=job.study_uid)
        instances = self.ledger.instances(job.id)
        decision = self.rules.route(read_header(Path(instances[0].path)))
        rule = decision.rule
        log.info("job_routed", rule=rule.name, action=rule.action, skipped=list(decision.skipped))
        if rule.action == "quarantine":
            reason = f"rule {rule.name!r} quarantines it"
            self.ledger.update_job(job.id, "quarantined", reason, reason=reason, rule=rule.name)
            return
        self.ledger.update_job(
            job.id, "routed", f"rule {rule.name}: {rule.action}",
            rule=rule.name, method=rule.method, model=rule.model,
        )

    # --- harmonize + provenance ----------------------------------------------------------

    def produce(self, job: Job) -> None:
        log = get_logger(job_id=job.id, study_uid=job.study_uid, rule=job.rule)
        rule = next((r for r in self.rules.rules if r.name == job.rule), None)
        if rule is None:
            self.ledger.update_job(job.id, "complete", f"rule {job.rule!r} is gone; routing again")
            return
        instances = self.ledger.instances(job.id)
        try:
            harmonize = rule.action == "harmonize"
            output_dir = self._harmonize(job, rule, instances) if harmonize else None
        except (AssemblyError, ModelError) as exc:
            log.warning("job_quarantined", reason=str(exc))
            self.ledger.update_job(job.id, "quarantined", str(exc), reason=str(exc))
            return
        destinations = rule.destinations or self.config.default_destinations
        self.ledger.add_deliveries(job.id, destinations)
        message = f"output in {output_dir}" if output_dir else "passthrough: source files as sent"
        self.ledger.update_job(
            job.id, "harmonized", message, output_dir=str(output_dir) if output_dir else None
        )
        log.info("job_harmonized", output_dir=str(output_dir), destinations=destinations)

    def _harmonize(self, job: Job, rule: Rule, instances: list[Instance]) -> Path:
        assert rule.method and rule.model
        assembled = assemble([dcmread(instance.path) for instance in instances])
        acquisition = assembled.acquisition
        loaded = load_model(rule.method, rule.model)
        loaded.check_source(acquisition.domain)
        harmonized = loaded.harmonizer.harmonize(acquisition)
        provenance = Provenance(
            method=rule.method,
            model=loaded.name,
            model_sha256=loaded.sha256,
            rule=rule.name,
            config_hash=config_hash(rule.model_dump(mode="json")),
            source_domain=acquisition.domain.name if acquisition.domain else "unknown",
            target_domain=str(loaded.card.get("target_domain", "unknown")),
        )
        output_dir = self.config.jobs_dir / f"{job.id:08d}" / "out"
        for index, ds in enumerate(derived_series(assembled, harmonized, provenance)):
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            write_durably(output_dir, f"{index:05d}.dcm", buffer.getvalue())
        return output_dir

    # --- deliver -------------------------------------------------------------------------

    def deliver_due(self, now: float) -> None:
        policy = self.config.delivery
        for delivery in self.ledger.due_deliveries(now):
            job = self.ledger.job(delivery.job_id)
            assert job is not None
            log = get_logger(job_id=job.id, destination=delivery.destination)
            files = (
                sorted(Path(job.output_dir).glob("*.dcm"))
                if job.output_dir
                else [Path(i.path) for i in self.ledger.instances(job.id)]
            )
            destination = self.config.destinations[delivery.destination]
            try:
                deliver(files, destination, f"job-{job.id:08d}", self.config.ae_title, policy)
            except (DeliveryError, OSError, ValueError) as exc:
                attempts = delivery.attempts + 1
                dead = attempts >= policy.max_attempts
                retry_at = now + backoff_seconds(attempts, policy)
                self.ledger.record_attempt(
                    delivery.id, "failed" if dead else "pending", str(exc), retry_at
                )
                log.warning("delivery_failed", attempt=attempts, error=str(exc), final=dead)
            else:
                self.ledger.record_attempt(delivery.id, "delivered", None, now)
                log.info("delivery_done", instances=len(files))
            self._finish_if_done(job.id)

    def _finish_if_done(self, job_id: int) -> None:
        deliveries = self.ledger.deliveries(job_id)
        states = {d.state for d in deliveries}
        if states == {"delivered"}:
            names = ", ".join(d.destination for d in deliveries)
            self.ledger.update_job(job_id, "delivered", f"delivered to {names}")
            get_logger(job_id=job_id).info("job_delivered", destinations=names)
        elif "pending" not in states:
            failed = [d for d in deliveries if d.state == "failed"]
            reason = "; ".join(
                f"delivery to {d.destination} failed after {d.attempts} attempts: {d.last_error}"
                for d in failed
            )
            self.ledger.update_job(job_id, "failed", reason, reason=reason)
            get_logger(job_id=job_id).error("job_failed", step="deliver", reason=reason)


def _split_study(instances: list[Instance]) -> list[tuple[list[int], str | None]]:
    """Group a settled study's instances into jobs, each with its quarantine reason or None."""
    unusable: dict[tuple[str | None, str], list[int]] = defaultdict(list)
    usable: dict[int, int] = {}  # id(header) -> instance id
    headers: list[Dataset] = []
    for instance in instances:
        try:
            header = read_header(Path(instance.path))
        except AssemblyError as exc:
            unusable[(instance.series_uid, str(exc))].append(instance.id)
            continue
        reason = unsupported_reason(header)
        if reason:
            unusable[(instance.series_uid, reason)].append(instance.id)
        else:
            usable[id(header)] = instance.id
            headers.append(header)
    jobs: list[tuple[list[int], str | None]] = [
        ([usable[id(ds)] for ds in group], None) for group in group_acquisitions(headers)
    ]
    jobs.extend((ids, reason) for (_, reason), ids in unusable.items())
    return jobs
