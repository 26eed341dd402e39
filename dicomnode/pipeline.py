"""The job pipeline: settle -> route -> harmonize + provenance -> deliver, driven by the ledger.

Each step reads a job's state from the ledger, does one thing, and writes the next state, so
a restart resumes every unfinished job from where the ledger says it is. Data flows one way:
network -> spool/ledger -> assembly -> routing -> harmonizer -> provenance -> delivery.

One overlap: while a harmonized series is written, each file already on disk is streamed to
the rule's DICOM destinations (:mod:`dicomnode.sender`), and the finished stream is recorded
as the delivery's first attempt. Nothing about it lives outside the ledger: after a crash
the job is produced again or, if its series was written, its delivery is pending and the
outbox sends the whole series; either way with the same UIDs.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from dicomnode.assembly import AssemblyError, acquisition_key, read_header, unsupported_reason
from dicomnode.config import DicomDestination, NodeConfig
from dicomnode.delivery import DeliveryError, Outbox, backoff_seconds
from dicomnode.head_start import HeadStart, head_start_folder, remove_unadopted
from dicomnode.ledger import Delivery, Instance, Job, Ledger
from dicomnode.logs import get_logger
from dicomnode.metrics import NodeMetrics
from dicomnode.production import Producer, ProductionTask
from dicomnode.provenance import config_hash
from dicomnode.retention import DAY_SECONDS, head_starts_dir, job_dir, purge_job
from dicomnode.routing import Rule, RuleSet
from dicomnode.sender import Sender, Stream
from harmonizers.base import ModelError


class Pipeline:
    """Moves every job one step per call of :meth:`run_once`."""

    def __init__(
        self, config: NodeConfig, ledger: Ledger, rules: RuleSet,
        metrics: NodeMetrics | None = None, wake: threading.Event | None = None,
        producer: Producer | None = None, sender: Sender | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.rules = rules
        self.metrics = metrics
        self.outbox = Outbox(config.ae_title, config.delivery)
        self.started_at = time.time()
        # Production in this process unless the caller gives a producer (the node gives one
        # with a child process).
        self.producer = producer or Producer(in_process=True)
        # Streams likewise, in this process's threads unless the caller gives a sender.
        self.sender = sender or Sender(config.ae_title, config.delivery, in_process=True)
        # Sends still running from production, by destination: one at a time per destination;
        # the outbox leaves that destination alone until it is collected.
        self._streams: dict[str, Stream] = {}
        # Set when there is work for :meth:`run_once` (a stream finished).
        self.wake = wake or threading.Event()
        # At most one series produced while it arrives (the producer has one child), and
        # the series not to try again (their rule does not harmonize them, say).
        self._head_start: HeadStart | None = None
        self._no_head_start: set[str] = set()
        remove_unadopted(head_starts_dir(self.config),
                         {job.output_dir for job in ledger.jobs() if job.output_dir})

    def run_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.claim_settled(now)
        self.advance_head_start()
        for job in self.ledger.jobs(["complete"]):
            self._guarded(job, self.route)
        self._drop_orphaned_head_start()
        for job in self.ledger.jobs(["routed"]):
            if not self._waits_for_head_start(job):
                self._guarded(job, self.produce)
        self.collect_streams(now)
        self.deliver_due(now)
        self.outbox.close_idle()
        self.purge_expired(now)

    def close(self) -> None:
        if self._head_start is not None:
            self._head_start.cancel("the node is stopping")
            self._head_start = None
        for send in self._streams.values():
            send.wait()
        self.collect_streams(time.time())
        self.outbox.close_all()
        self.producer.close()
        self.sender.close()

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
        """Turn complete studies into jobs: one per acquisition, one per other series."""
        for instance in self.ledger.unclaimed(None):
            job_id = self.ledger.create_job(None, [instance.id], instance.parse_error)
            get_logger(job_id=job_id, path=instance.path).warning(
                "job_quarantined", reason=instance.parse_error, calling_ae=instance.calling_ae,
            )
        settled = self.ledger.settled_studies(self.config.settle_seconds, now, self.started_at)
        for study_uid in settled:
            for group in _split_study(self.ledger.unclaimed(study_uid)):
                self._make_job(study_uid, group)

    def _make_job(self, study_uid: str, group: JobGroup) -> None:
        earlier = self.ledger.series_jobs(group.series_uids) if group.series_uids else []
        reason = group.reason
        if earlier and reason is None and self.config.late_instances == "quarantine":
            reason = f"arrived after job {earlier[-1]} had taken its series (policy: quarantine)"
        job_id = self.ledger.create_job(
            study_uid, group.instance_ids, reason, supersedes=earlier[-1] if earlier else None
        )
        log = get_logger(job_id=job_id, study_uid=study_uid, series_uids=group.series_uids)
        if reason:
            log.warning("job_quarantined", reason=reason, instances=len(group.instance_ids))
        else:
            log.info("job_complete", instances=len(group.instance_ids),
                     supersedes=earlier[-1] if earlier else None)

    # --- head start (dicomnode/head_start.py) ---------------------------------------------

    def advance_head_start(self) -> None:
        """Feed the running head start what arrived, hand its files to the streams; or start
        one for the oldest multiphase series still arriving that a rule harmonizes."""
        if self._head_start is not None:
            head_start = self._head_start
            head_start.feed(self.ledger.unclaimed(head_start.study_uid, head_start.last_fed))
            head_start.hand_over()
            return
        if not self.config.head_start or self.ledger.jobs(["complete", "routed"]):
            return  # (the child is wanted for those first)
        arriving = self.ledger.arriving_series()
        self._no_head_start &= {series_uid for _, series_uid in arriving}
        for study_uid, series_uid in arriving:
            if series_uid not in self._no_head_start:
                self._no_head_start.add(series_uid)  # one try per series
                self._start_head_start(study_uid, series_uid)
                return

    def _start_head_start(self, study_uid: str, series_uid: str) -> None:
        instances = [i for i in self.ledger.unclaimed(study_uid) if i.series_uid == series_uid]
        if not instances or self.ledger.series_jobs([series_uid]):
            return  # a later version of a series is produced whole
        try:
            header = read_header(Path(instances[0].path))
        except AssemblyError:
            return
        rule = self.rules.route(header).rule
        if rule.action != "harmonize" or unsupported_reason(header):
            return
        head_start = HeadStart(
            head_start_folder(head_starts_dir(self.config)), study_uid, series_uid, rule,
            config_hash(rule.model_dump(mode="json")), self.producer,
            self._start_streams(rule.destinations or self.config.default_destinations, None))
        head_start.feed(instances)
        self._head_start = head_start
        get_logger(study_uid=study_uid, series_uid=series_uid, rule=rule.name).info(
            "head_start", instances=len(instances))

    def _drop_orphaned_head_start(self) -> None:
        """Cancel the head start once its series is in a job that will not adopt it (one
        that routing quarantined, say)."""
        head_start = self._head_start
        if head_start is None:
            return
        jobs = self.ledger.series_jobs([head_start.series_uid])
        job = self.ledger.job(jobs[-1]) if jobs else None
        if job is not None and job.state != "routed":
            self._head_start = None
            head_start.cancel(f"job {job.id} of the series is {job.state}")

    def _waits_for_head_start(self, job: Job) -> bool:
        """A job to harmonize waits while the child is busy with another series' head start."""
        head_start = self._head_start
        rule = self.rules.rule(job.rule) if job.rule else None
        return (head_start is not None and rule is not None and rule.action == "harmonize"
                and head_start.series_uid not in {i.series_uid
                                                  for i in self.ledger.instances(job.id)})

    def _adopt_head_start(self, job: Job, rule: Rule, instances: list[Instance]) -> Path | None:
        """The output folder of the head start this job adopts, or None (cancelled if any)."""
        head_start, self._head_start = self._head_start, None
        if head_start is None:
            return None
        if not head_start.adoptable(instances, rule, config_hash(rule.model_dump(mode="json"))):
            head_start.cancel(f"job {job.id} differs from it (instances, rule or a failure)")
            return None
        produced = head_start.finish(instances, job.id)
        if produced is None:
            return None
        if self.metrics:
            self.metrics.observe_harmonize(produced.harmonize_seconds)
        return head_start.output_dir

    # --- route ---------------------------------------------------------------------------

    def route(self, job: Job) -> None:
        log = get_logger(job_id=job.id, study_uid=job.study_uid)
        instances = self.ledger.instances(job.id)
        header = read_header(Path(instances[0].path))
        decision = self.rules.route(header)
        rule = decision.rule
        log.info("job_routed", rule=rule.name, action=rule.action, skipped=list(decision.skipped))
        if rule.action in ("quarantine", "discard"):
            state = "quarantined" if rule.action == "quarantine" else "discarded"
            what = unsupported_reason(header)
            reason = f"rule {rule.name!r} {rule.action}s it" + (f" ({what})" if what else "")
            self.ledger.update_job(job.id, state, reason, reason=reason, rule=rule.name)
            log.warning(f"job_{state}", reason=reason)
            return
        self.ledger.update_job(
            job.id, "routed", f"rule {rule.name}: {rule.action}",
            rule=rule.name, method=rule.method, model=rule.model,
        )

    # --- harmonize + provenance ----------------------------------------------------------

    def produce(self, job: Job) -> None:
        log = get_logger(job_id=job.id, study_uid=job.study_uid, rule=job.rule)
        rule = self.rules.rule(job.rule)
        if rule is None:
            self.ledger.update_job(job.id, "complete", f"rule {job.rule!r} is gone; routing again")
            return
        destinations = rule.destinations or self.config.default_destinations
        harmonize = rule.action == "harmonize"
        try:
            output_dir = self._harmonize(job, rule, destinations) if harmonize else None
        except (AssemblyError, ModelError) as exc:
            log.warning("job_quarantined", reason=str(exc))
            self.ledger.update_job(job.id, "quarantined", str(exc), reason=str(exc))
            return
        self.ledger.add_deliveries(job.id, destinations)
        if harmonize and rule.evaluate:
            self.ledger.request_report(job.id, destinations)
        message = f"output in {output_dir}" if output_dir else "passthrough: source files as sent"
        self.ledger.update_job(
            job.id, "harmonized", message, output_dir=str(output_dir) if output_dir else None
        )
        log.info("job_harmonized", output_dir=str(output_dir), destinations=destinations)

    def _version_instances(self, job: Job) -> list[Instance]:
        """The job's instances and, for a new version, those of every version before it."""
        chain = self.ledger.version_instances(job.id)
        missing = [i for i in chain if i.purged_at is not None]
        if missing:
            raise AssemblyError(
                f"{len(missing)} earlier instances of this series were purged; send the whole "
                "series again"
            )
        return chain

    def _harmonize(self, job: Job, rule: Rule, destinations: list[str]) -> Path:
        """Harmonize the job's acquisition and write the derived series to its folder.

        The producer does the work (in the node, a child process); each derived file goes to
        the job's DICOM destinations as soon as it is durable (:mod:`dicomnode.sender`; not
        to a destination still busy with an earlier job's stream, which the outbox serves
        afterwards); :meth:`collect_streams` records the outcome once the job is harmonized
        and the send has finished.
        """
        assert rule.method and rule.model
        instances = self._version_instances(job)
        adopted = self._adopt_head_start(job, rule, instances)
        if adopted is not None:
            return adopted
        output_dir = job_dir(self.config, job.id) / "out"
        task = ProductionTask(
            source_paths=tuple(i.path for i in instances),
            method=rule.method,
            model=rule.model,
            rule=rule.name,
            config_hash=config_hash(rule.model_dump(mode="json")),
            output_dir=str(output_dir),
        )
        sends = self._start_streams(destinations, job.id)

        def hand_over(path: Path) -> None:
            for send in sends:
                send.put(path)

        complete = False
        try:
            produced = self.producer.run(task, hand_over)
            complete = True
        finally:
            for send in sends:
                send.end(complete)
        if self.metrics:
            self.metrics.observe_harmonize(produced.harmonize_seconds)
        return output_dir

    def _start_streams(self, destinations: list[str], job_id: int | None) -> list[Stream]:
        """A stream to each DICOM destination that has none running (those that have get
        the series from the outbox afterwards)."""
        sends = [
            self.sender.stream(name, destination, job_id, self.wake.set)
            for name in destinations
            if name not in self._streams
            and isinstance(destination := self.config.destinations[name], DicomDestination)
        ]
        self._streams.update({send.name: send for send in sends})
        return sends

    # --- deliver -------------------------------------------------------------------------

    def collect_streams(self, now: float) -> None:
        """Record each finished stream as its delivery's first attempt.

        A stream cut short (its job failed while writing, or its head start was cancelled)
        records nothing: what it sent is sent again, with the same UIDs, when the job is
        retried or produced.
        """
        for name, send in list(self._streams.items()):
            if not send.done:
                continue
            del self._streams[name]
            job = self.ledger.job(send.job_id) if send.job_id is not None else None
            if not send.complete or job is None or job.state != "harmonized":
                continue
            for delivery in self.ledger.deliveries(job.id, kind="images"):
                if delivery.destination == name and delivery.state == "pending":
                    self._record_attempt(delivery, send.error, send.sent, now)
            self._finish_if_done(job.id)

    def deliver_due(self, now: float) -> None:
        for delivery in self.ledger.due_deliveries(now):
            if delivery.destination in self._streams:
                continue  # a stream is still sending there: the outbox waits its turn
            job = self.ledger.job(delivery.job_id)
            assert job is not None
            files = self._files(job, delivery.kind)
            destination = self.config.destinations[delivery.destination]
            try:
                self.outbox.send(delivery.destination, destination, files, f"job-{job.id:08d}")
            except (DeliveryError, OSError, ValueError) as exc:
                self._record_attempt(delivery, str(exc), len(files), now)
            else:
                self._record_attempt(delivery, None, len(files), now)
            if delivery.kind == "images":
                self._finish_if_done(job.id)

    def _record_attempt(
        self, delivery: Delivery, error: str | None, files: int, now: float
    ) -> None:
        """Delivered, or failed: retried after a backoff, or dead after the last try."""
        log = get_logger(job_id=delivery.job_id, destination=delivery.destination,
                         kind=delivery.kind)
        if error is None:
            self.ledger.record_attempt(delivery.id, "delivered", None, now)
            log.info("delivery_done", instances=files)
            return
        policy = self.config.delivery
        attempts = delivery.attempts + 1
        dead = attempts >= policy.max_attempts
        retry_at = now + backoff_seconds(attempts, policy)
        self.ledger.record_attempt(delivery.id, "failed" if dead else "pending", error, retry_at)
        log.warning("delivery_failed", attempt=attempts, error=error, final=dead)
        if self.metrics:
            self.metrics.delivery_failed(delivery.destination)

    def _files(self, job: Job, kind: str) -> list[Path]:
        if kind == "report":
            report = self.ledger.report(job.id)
            return [Path(report.path)] if report and report.path else []
        if job.output_dir:
            return sorted(Path(job.output_dir).glob("*.dcm"))
        return [Path(i.path) for i in self.ledger.instances(job.id)]

    def _finish_if_done(self, job_id: int) -> None:
        """The job's state follows its images; a report's sends do not hold it up."""
        deliveries = self.ledger.deliveries(job_id, kind="images")
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

    # --- retention -----------------------------------------------------------------------

    def purge_expired(self, now: float) -> None:
        """Delete the files of jobs past their retention period (config ``retention``)."""
        retention = self.config.retention
        for state, days in (("discarded", retention.discarded_days),
                            ("delivered", retention.delivered_days)):
            if days is not None:
                for job in self.ledger.purgeable([state], now - days * DAY_SECONDS):
                    purge_job(self.ledger, self.config, job)


class JobGroup:
    """Instances that become one job, and why it is quarantined at once (or None)."""

    def __init__(self, instances: list[Instance], reason: str | None = None) -> None:
        self.instance_ids = [i.id for i in instances]
        self.series_uids = sorted({i.series_uid for i in instances if i.series_uid})
        self.reason = reason


def _split_study(instances: list[Instance]) -> list[JobGroup]:
    """Group a settled study's instances into jobs.

    MR images that can be harmonized go by acquisition (one multiphase series, or per-phase
    series on one geometry: the key intake put in the ledger); any other object goes by
    series and is routed on its own, so a rule may pass a SEG or SR through. Unreadable
    files are quarantined at once.
    """
    unreadable: dict[tuple[str | None, str], list[Instance]] = defaultdict(list)
    others: dict[str | None, list[Instance]] = defaultdict(list)
    by_key: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        key = instance.acquisition
        if key is None:  # a row from a ledger that did not keep the key yet
            try:
                key = acquisition_key(read_header(Path(instance.path)))
            except AssemblyError as exc:
                unreadable[(instance.series_uid, str(exc))].append(instance)
                continue
        if key:
            by_key[key].append(instance)
        else:
            others[instance.series_uid].append(instance)
    acquisitions = list(by_key.values())
    # A series split over several geometries is broken (a slice of other Rows, say): it is
    # held whole rather than harmonized in pieces.
    seen: dict[str | None, int] = defaultdict(int)
    for acquisition in acquisitions:
        for series_uid in {i.series_uid for i in acquisition}:
            seen[series_uid] += 1
    broken = {uid for uid, n in seen.items() if n > 1}
    touched = [a for a in acquisitions if {i.series_uid for i in a} & broken]
    groups = [JobGroup(a) for a in acquisitions if not {i.series_uid for i in a} & broken]
    if touched:
        names = ", ".join(sorted(uid or "?" for uid in broken))
        groups.append(JobGroup([i for a in touched for i in a],
                               f"series {names}: its instances differ in geometry "
                               "(Rows, Columns, orientation or pixel spacing)"))
    groups += [JobGroup(members) for members in others.values()]
    groups += [JobGroup(members, reason) for (_, reason), members in unreadable.items()]
    return groups
