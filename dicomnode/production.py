"""Production: harmonize one job's acquisition and write its derived series, in a child process.

:func:`produce_series` is the whole step (assembly -> harmonizer -> provenance -> durable
files ``00000.dcm``, ``00001.dcm``, ... in the job's ``out`` folder). The node runs it in a
child process (:class:`Producer`), so that its CPU work does not hold the GIL that receiving
and sending need, and a harmonizer that dies (out of memory, a crash in native code) fails
its job instead of the node. The pipeline learns of each file from the folder itself: a file
is there under its name only once it is durable (:func:`dicomnode.spool.write_durably`), so
each can be streamed to its destinations while the rest is still being made.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from dicomnode.assembly import assemble
from dicomnode.child_process import child_pool
from dicomnode.provenance import Provenance, derived_series
from dicomnode.spool import write_durably
from harmonizers.registry import load_model

# Derived files being written (fsync) at once while the next ones are encoded.
_WRITES_IN_FLIGHT = 4
# How often the pipeline looks for the next file while the child writes them.
_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class ProductionTask:
    """Everything the child needs, as plain picklable values."""

    source_paths: tuple[str, ...]
    method: str
    model: str
    rule: str
    config_hash: str
    output_dir: str


@dataclass(frozen=True)
class Produced:
    files: int
    harmonize_seconds: float


def output_name(index: int) -> str:
    return f"{index:05d}.dcm"


def produce_series(task: ProductionTask) -> Produced:
    """Harmonize the task's acquisition and write its derived series durably, in order.

    Raises AssemblyError or ModelError (the job is quarantined with the message) for what
    cannot be harmonized.
    """
    # Deferred reads: each slice's pixels are loaded when assembly reaches it, then
    # dropped, so the series is in memory once, as float32.
    assembled = assemble([dcmread(p, defer_size="64 KB") for p in task.source_paths])
    acquisition = assembled.acquisition
    loaded = load_model(task.method, task.model)
    loaded.check_source(acquisition.domain)
    started = time.perf_counter()
    harmonized = loaded.harmonizer.harmonize(acquisition)
    harmonize_seconds = time.perf_counter() - started
    provenance = Provenance(
        method=task.method,
        model=loaded.name,
        model_sha256=loaded.sha256,
        rule=task.rule,
        config_hash=task.config_hash,
        source_domain=acquisition.domain.name if acquisition.domain else "unknown",
        target_domain=str(loaded.card.get("target_domain", "unknown")),
    )
    output_dir = Path(task.output_dir)
    files = 0
    # A durable write waits on two fsyncs without holding the GIL, so the writes run in a
    # small pool while the next instances are encoded; at most _WRITES_IN_FLIGHT encoded
    # files wait in memory.
    with ThreadPoolExecutor(_WRITES_IN_FLIGHT, thread_name_prefix="output") as writers:
        pending: deque[Future[Path]] = deque()
        for index, ds in enumerate(derived_series(assembled, harmonized, provenance)):
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            pending.append(writers.submit(write_durably, output_dir, output_name(index),
                                          buffer.getvalue()))
            while len(pending) > _WRITES_IN_FLIGHT:
                pending.popleft().result()
            files += 1
        while pending:
            pending.popleft().result()
    return Produced(files, harmonize_seconds)


def _ready() -> None:
    """Nothing: submitted at start so the child imports the harmonizers before the first job."""


class _DiedBeforeOutput(Exception):
    """The child died before writing a file of the job (it may have died before the job)."""


class Producer:
    """Runs :func:`produce_series` in a child process (or, ``in_process``, a thread: tests)."""

    def __init__(self, in_process: bool = False) -> None:
        self.in_process = in_process
        self._pool: Executor | None = None

    def start(self) -> None:
        """Start the child now rather than at the first job (it takes seconds to import)."""
        self._executor().submit(_ready)

    def run(self, task: ProductionTask, on_file: Callable[[Path], None]) -> Produced:
        """Produce ``task``'s series, calling ``on_file`` with each file once it is durable,
        in order; returns when the child is done, raising what it raised.

        A child found dead before it wrote anything (killed between jobs, say) is replaced
        and the job given to the new one; one that dies after is this job's failure.
        """
        try:
            return self._run(task, on_file)
        except _DiedBeforeOutput:
            pass
        try:
            return self._run(task, on_file)
        except _DiedBeforeOutput as exc:
            raise RuntimeError(f"the production process died twice on this job ({exc.__cause__});"
                               " out of memory?") from exc

    def _run(self, task: ProductionTask, on_file: Callable[[Path], None]) -> Produced:
        output_dir = Path(task.output_dir)
        # A previous attempt's files must not be taken for this one's.
        shutil.rmtree(output_dir, ignore_errors=True)
        try:
            future: Future[Produced] = self._executor().submit(produce_series, task)
        except BrokenProcessPool as exc:
            self.close()
            raise _DiedBeforeOutput from exc
        handed = 0
        while True:
            done = future.done()
            while (path := output_dir / output_name(handed)).exists():
                on_file(path)
                handed += 1
            if done:
                break
            wait([future], timeout=_POLL_SECONDS)
        try:
            produced = future.result()
        except BrokenProcessPool as exc:
            self.close()
            if handed == 0:
                raise _DiedBeforeOutput from exc
            raise RuntimeError(f"the production process died ({exc}); out of memory?") from exc
        if handed != produced.files:
            raise RuntimeError(f"{produced.files} files produced, {handed} found in {output_dir}")
        return produced

    def _executor(self) -> Executor:
        if self._pool is None:
            self._pool = (ThreadPoolExecutor(1, thread_name_prefix="production")
                          if self.in_process else child_pool())
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
