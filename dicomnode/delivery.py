"""Delivery: the outbox that sends a job's output to a DICOM peer or a local folder.

A delivery either sends every file or raises DeliveryError; the pipeline records the attempt
in the ledger and schedules the retry with backoff. Associations to DICOM destinations stay
open between jobs (most of a small study's send time is the association set-up) and are
released after ``idle_seconds`` or when a job needs presentation contexts they lack.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomnode.config import DeliveryPolicy, DicomDestination, FolderDestination
from dicomnode.spool import write_durably
from dicomnode.store_scu import (
    MAX_CONTEXTS,
    AssociationError,
    Context,
    InstanceFile,
    StoreAssociation,
)

# 0xB000, 0xB006, 0xB007: warnings, stored all the same (PS3.4 Table B.2-1).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """The destination did not take every file; the message says which and why."""


def backoff_seconds(attempts: int, policy: DeliveryPolicy) -> float:
    """Exponential backoff after ``attempts`` failures, capped."""
    return float(min(policy.backoff_cap_seconds, policy.backoff_seconds * 2 ** (attempts - 1)))


@dataclass
class _Open:
    assoc: StoreAssociation
    contexts: set[Context]
    last_used: float


class Outbox:
    """Sends files to destinations, keeping one association per DICOM destination."""

    def __init__(self, calling_ae: str, policy: DeliveryPolicy, idle_seconds: float = 30.0):
        self.calling_ae = calling_ae
        self.policy = policy
        self.idle_seconds = idle_seconds
        self._open: dict[str, _Open] = {}

    def send(
        self,
        name: str,
        destination: DicomDestination | FolderDestination,
        files: Sequence[Path],
        folder_name: str,
    ) -> None:
        """Send ``files`` to ``destination`` (named ``name``); folders get ``folder_name``."""
        if isinstance(destination, FolderDestination):
            _copy_to_folder(files, destination.path / folder_name)
            return
        instances = [InstanceFile.read(path) for path in files]
        current = self._association(name, destination, {i.context for i in instances})
        where = current.assoc.where
        try:
            for instance in instances:
                # From the file as it is: no decode and re-encode of every instance.
                response = current.assoc.store(instance)
                if response.status not in _STORED:
                    comment = f" ({response.comment})" if response.comment else ""
                    raise DeliveryError(f"{where}: C-STORE of {instance.path.name} failed, "
                                        f"status 0x{response.status:04X}{comment}")
        except AssociationError as exc:
            self._open.pop(name, None)  # closed already
            raise DeliveryError(str(exc)) from exc
        except BaseException:
            self._close(name)
            raise
        current.last_used = time.monotonic()

    def _association(self, name: str, destination: DicomDestination,
                     needed: set[Context]) -> _Open:
        current = self._open.get(name)
        if current and current.assoc.usable() and needed <= current.contexts:
            return current
        wanted = needed | (current.contexts if current else set())
        if len(wanted) > MAX_CONTEXTS:
            wanted = needed
        self._close(name)
        try:
            assoc = StoreAssociation(destination.host, destination.port, self.calling_ae,
                                     destination.ae_title, wanted, self.policy.timeout_seconds)
        except AssociationError as exc:
            raise DeliveryError(str(exc)) from exc
        refused = needed - set(assoc.accepted)
        if refused:
            assoc.release()
            raise DeliveryError(f"{assoc.where}: refused presentation contexts {sorted(refused)}")
        self._open[name] = _Open(assoc, set(assoc.accepted), time.monotonic())
        return self._open[name]

    def _close(self, name: str) -> None:
        current = self._open.pop(name, None)
        if current:
            current.assoc.release()

    def close_idle(self) -> None:
        """Release associations unused for ``idle_seconds``."""
        cutoff = time.monotonic() - self.idle_seconds
        for name in [n for n, o in self._open.items() if o.last_used < cutoff]:
            self._close(name)

    def close_all(self) -> None:
        for name in list(self._open):
            self._close(name)


class StreamingSend:
    """Sends one job's files to one DICOM destination, in threads, as they are handed over.

    The pipeline hands each harmonized file over the moment it is durable, so the
    destination stores the series while the rest of it is still being encoded and written:
    the two overlap instead of following each other. Files go over
    ``policy.stream_associations`` associations of the stream's own (the pipeline's outbox
    goes on serving other deliveries meanwhile), each taking the next file, since a C-STORE
    waits for its response. The first failure stops the stream (later files are not sent)
    and is kept in :attr:`error`; the pipeline records the finished stream as the
    delivery's first attempt, and a failed one is retried whole, with backoff, like any
    other.
    """

    def __init__(self, calling_ae: str, policy: DeliveryPolicy, name: str,
                 destination: DicomDestination, job_id: int | None,
                 finished: Callable[[], None] = lambda: None) -> None:
        self.name = name
        # None while a head start's job is not made yet (dicomnode/head_start.py).
        self.job_id = job_id
        self.error: str | None = None
        self.sent = 0
        # Whether the producer handed over the whole series (not cut short by an error).
        self.complete = False
        self._finished = finished
        self._destination = destination
        self._files: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(Outbox(calling_ae, policy),),
                             name=f"send-{name}-{index}", daemon=True)
            for index in range(policy.stream_associations)
        ]
        self._running = len(self._threads)
        for thread in self._threads:
            thread.start()

    def put(self, path: Path) -> None:
        self._files.put(path)

    def end(self, complete: bool) -> None:
        """No more files (``complete``: the whole series was handed over); the stream ends
        once those handed over are sent, then calls ``finished``."""
        self.complete = complete
        for _ in self._threads:
            self._files.put(None)

    def abort(self, reason: str) -> None:
        """Send nothing more (files already handed over are dropped) and end incomplete."""
        with self._lock:
            self.error = self.error or reason
        self.end(complete=False)

    @property
    def done(self) -> bool:
        """Every thread has finished (``finished`` is called at this moment)."""
        with self._lock:
            return self._running == 0

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()

    def _run(self, outbox: Outbox) -> None:
        try:
            while (path := self._files.get()) is not None:
                if self.error is not None:
                    continue
                try:
                    outbox.send(self.name, self._destination, [path], "")
                except Exception as exc:  # noqa: BLE001 - a dead thread must not read as sent
                    with self._lock:
                        self.error = self.error or (
                            str(exc) if isinstance(exc, DeliveryError) else repr(exc))
                else:
                    with self._lock:
                        self.sent += 1
        finally:
            outbox.close_all()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._finished()


def _copy_to_folder(files: Sequence[Path], folder: Path) -> None:
    try:
        for path in files:
            write_durably(folder, path.name, path.read_bytes())
    except OSError as exc:
        raise DeliveryError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
