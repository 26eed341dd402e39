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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pydicom import Dataset

from dicomnode.assembly import assemble_phases, ordered_sources, rescale
from dicomnode.child_process import child_pool
from dicomnode.header_reading import read_header
from dicomnode.provenance import Derivation, Provenance, derived_series
from dicomnode.series_encoder import SeriesEncoder
from dicomnode.spool import write_durably
from dicomnode.value_tables import OutputTables, stored_range
from harmonizers.domain import ScannerDomain
from harmonizers.model_store import LoadedModel
from harmonizers.registry import harmonizer_class, load_model

# Derived files being written (fsync) at once while the next ones are encoded.
_WRITES_IN_FLIGHT = 4
# How often the pipeline looks for the next file while the child writes them (and the
# child, for the next source of a series still arriving).
POLL_SECONDS = 0.005

T = TypeVar("T")


class Recipe(Protocol):
    """How a series is harmonized: what the derived instances' provenance names."""

    @property
    def method(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def config_hash(self) -> str: ...


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
    # The method's own time: fitting its map and tables, or running it on the float series.
    harmonize_seconds: float


def output_name(index: int) -> str:
    return f"{index:05d}.dcm"


def produce_series(task: ProductionTask) -> Produced:
    """Harmonize the task's acquisition and write its derived series durably, in order.

    A method that is a function of each voxel's value is applied by table, slice by slice
    (:mod:`dicomnode.value_tables`); any other gets the whole float acquisition.
    Raises AssemblyError or ModelError (the job is quarantined with the message) for what
    cannot be harmonized.
    """
    # Deferred reads: each slice's pixels are loaded when they are needed, then dropped, so
    # the series is in memory once at most.
    phases = ordered_sources([read_header(p) for p in task.source_paths])
    loaded = load_model(task.method, task.model)
    started = time.perf_counter()
    made = ByTable.start(task, loaded, phases[0],
                         {rescale(ds) for phase in phases for ds in phase})
    instances: Iterator[Dataset]
    if made is not None:
        instances = (made.derive(ds) for phase in phases for ds in phase)
    else:
        assembled = assemble_phases(phases)
        loaded.check_source(assembled.acquisition.domain)
        harmonized = loaded.harmonizer.harmonize(assembled.acquisition)
        provenance = provenance_of(task, loaded, assembled.acquisition.domain)
        instances = derived_series(assembled, harmonized, provenance)
    harmonize_seconds = time.perf_counter() - started
    with OrderedWriter(Path(task.output_dir)) as writer:
        for ds in instances:
            writer.write(ds)
    return Produced(writer.count, harmonize_seconds)


class ByTable:
    """Derives each instance of a series by table, from its pre-contrast phase."""

    def __init__(self, tables: OutputTables, derivation: Derivation) -> None:
        self.tables = tables
        self.derivation = derivation

    @classmethod
    def start(cls, task: Recipe, loaded: LoadedModel, pre_contrast: Sequence[Dataset],
              rescales: set[tuple[float, float]]) -> ByTable | None:
        """Tables for the series' ``rescales``; None when the method is not a value map or
        the pixels cannot be tabulated."""
        acquisition = assemble_phases([pre_contrast], keep_pixels=True).acquisition
        loaded.check_source(acquisition.domain)
        value_map = loaded.harmonizer.value_map(acquisition)
        if value_map is None or stored_range(pre_contrast[0]) is None:
            return None
        tables = OutputTables(value_map, pre_contrast[0], rescales)
        provenance = provenance_of(task, loaded, acquisition.domain)
        return cls(tables, Derivation(provenance, tables.encoding(pre_contrast)))

    def derive(self, ds: Dataset) -> Dataset:
        stored = self.tables.stored(ds)
        del ds.PixelData  # read when looked up, dropped at once: one slice in memory
        return self.derivation.instance(ds, stored)


def provenance_of(task: Recipe, loaded: LoadedModel,
                domain: ScannerDomain | None) -> Provenance:
    return Provenance(
        method=task.method,
        model=loaded.name,
        model_sha256=loaded.sha256,
        rule=task.rule,
        config_hash=task.config_hash,
        source_domain=domain.name if domain else "unknown",
        target_domain=str(loaded.card.get("target_domain", "unknown")),
    )


class OrderedWriter:
    """Writes instances durably as 00000.dcm, 00001.dcm, ... in the order given.

    Each is encoded by one :class:`~dicomnode.series_encoder.SeriesEncoder`, which encodes
    the elements the series' instances share once. A durable write waits on two fsyncs
    without holding the GIL, so the writes run in a small pool while the next instances are
    made; at most _WRITES_IN_FLIGHT encoded files wait in memory.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.count = 0
        self._encoder = SeriesEncoder()
        self._writers = ThreadPoolExecutor(_WRITES_IN_FLIGHT, thread_name_prefix="output")
        self._pending: deque[Future[Path]] = deque()

    def write(self, ds: Dataset) -> None:
        self._pending.append(self._writers.submit(
            write_durably, self.output_dir, output_name(self.count),
            self._encoder.file_bytes(ds)))
        self.count += 1
        while len(self._pending) > _WRITES_IN_FLIGHT:
            self._pending.popleft().result()

    def __enter__(self) -> OrderedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._writers.shutdown()


def hand_over_ready(output_dir: Path, handed: int, on_file: Callable[[Path], None]) -> int:
    """Call ``on_file`` with each durable output file from number ``handed`` on, in order;
    return how many have been handed over now."""
    while (path := output_dir / output_name(handed)).exists():
        on_file(path)
        handed += 1
    return handed


def _ready(methods: tuple[str, ...]) -> None:
    """Import the modules of ``methods`` (scipy, torch: up to seconds) before the first job,
    rather than while it waits."""
    for method in methods:
        harmonizer_class(method)


class _DiedBeforeOutput(Exception):
    """The child died before writing a file of the job (it may have died before the job)."""


class Producer:
    """Runs :func:`produce_series` and :func:`produce_arriving` in a child process (or,
    ``in_process``, a thread: tests)."""

    def __init__(self, in_process: bool = False) -> None:
        self.in_process = in_process
        self._pool: Executor | None = None

    def start(self, methods: Iterable[str] = ()) -> Future[None]:
        """Start the child now rather than at the first job (it takes seconds to import),
        and import the harmonizers of ``methods`` (those the rules name) in it; the future
        is done once it has."""
        return self._executor().submit(_ready, tuple(sorted(set(methods))))

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

    def submit(self, work: Callable[[T], Produced], task: T) -> Future[Produced]:
        """Start ``work(task)`` in the child and return at once (a series still arriving:
        :func:`dicomnode.arriving.produce_arriving`)."""
        try:
            return self._executor().submit(work, task)
        except BrokenProcessPool:  # the child died between jobs
            self.close()
            return self._executor().submit(work, task)

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
            handed = hand_over_ready(output_dir, handed, on_file)
            if done:
                break
            wait([future], timeout=POLL_SECONDS)
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
