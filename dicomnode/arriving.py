"""Production of a series while it arrives, in the production child (dicomnode/head_start.py
is the pipeline's side).

The pipeline appends the path of each instance of the series, as it is received, to a
sources file, one per line, and closes the list with a line ``END`` (the study is complete:
the list is whole) or ``CANCEL``. A file is the channel because it needs nothing shared
between the processes and shows an admin what the child was given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from dicomnode.assembly import AssemblyError, expected_count, ordered_sources, rescale
from dicomnode.header_reading import read_header
from dicomnode.production import (
    POLL_SECONDS,
    ByTable,
    OrderedWriter,
    Produced,
    ProductionTask,
    produce_series,
)
from harmonizers.registry import load_model

_END, _CANCEL = "END", "CANCEL"


@dataclass(frozen=True)
class ArrivingTask:
    """A series to produce while it arrives (:func:`produce_arriving`), as plain values."""

    sources_file: str
    method: str
    model: str
    rule: str
    config_hash: str
    output_dir: str


def produce_arriving(task: ArrivingTask) -> Produced:
    """Produce a series while it arrives: each slice as soon as its pre-contrast is in.

    Reads the source paths the pipeline appends to ``task.sources_file``, one per line,
    until a line ``END`` (the list is final: the job is complete) or ``CANCEL``. Once the
    whole pre-contrast phase is in (TemporalPositionIdentifier 1, as many slices as the
    header's expected count per phase) and the method maps each voxel by its value, every
    instance is derived and written the moment it is read, in arrival order; otherwise
    nothing is written before ``END``, and then the series is produced as
    :func:`produce_series` would. Raises what went wrong; the pipeline then produces the
    job from scratch.
    """
    feed = _SourceFeed(Path(task.sources_file))
    datasets: list[Dataset] = []
    made: ByTable | None = None
    tried = False
    fit_seconds = 0.0
    with OrderedWriter(Path(task.output_dir)) as writer:
        while (last := feed.wait()) != _CANCEL:
            new: list[Dataset] = [read_header(p) for p in feed.take()]
            datasets += new
            if not tried and (pre_contrast := _pre_contrast(datasets)) is not None:
                tried = True
                # A later instance with another rescale fails the head start (the
                # job is then produced whole, with tables for every rescale).
                loaded = load_model(task.method, task.model)
                started = time.perf_counter()
                made = ByTable.start(task, loaded, ordered_sources(pre_contrast)[0],
                                     {rescale(ds) for ds in pre_contrast})
                fit_seconds = time.perf_counter() - started
                new = datasets
            if made is not None:
                for ds in new:
                    writer.write(made.derive(ds))
            if last == _END:
                break
    if last == _CANCEL:
        return Produced(writer.count, 0.0)
    if made is None:
        return produce_series(ProductionTask(tuple(feed.paths), task.method, task.model,
                                             task.rule, task.config_hash, task.output_dir))
    # What produce_series would have refused (geometry, phases, an instance sent twice)
    # is refused here too, after the fact.
    unique = sum(len(phase) for phase in ordered_sources(datasets))
    if unique != writer.count:
        raise AssemblyError(f"{writer.count} instances derived while arriving, {unique} in "
                            "the series: an instance was sent twice")
    return Produced(writer.count, fit_seconds)


def _pre_contrast(datasets: Sequence[Dataset]) -> list[Dataset] | None:
    """The whole pre-contrast phase of a multiphase series, once all of it is in."""
    first = datasets[0]
    expected = expected_count(first)
    if expected is None:
        return None
    try:
        pre = {str(ds.SOPInstanceUID): ds for ds in datasets
               if int(ds.TemporalPositionIdentifier) == 1}
    except (AttributeError, TypeError, ValueError):
        return None  # no TemporalPositionIdentifier: phases are known only at the end
    slices = expected // int(first.NumberOfTemporalPositions)
    return list(pre.values()) if len(pre) == slices else None


class _SourceFeed:
    """The source paths the pipeline appends to a file, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.paths: list[str] = []
        self._taken = 0
        self._offset = 0

    def wait(self) -> str | None:
        """Wait for new lines; the closing line (END, CANCEL) once it is there, else None."""
        while True:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line being appended is read later
            self._offset += len(complete)
            for line in complete.decode().splitlines():
                if line in (_END, _CANCEL):
                    return line
                self.paths.append(line)
            if len(self.paths) > self._taken:
                return None
            time.sleep(POLL_SECONDS)

    def take(self) -> list[str]:
        """The paths not taken before."""
        new = self.paths[self._taken:]
        self._taken = len(self.paths)
        return new


def mark_sources_final(sources_file: Path, cancel: bool) -> None:
    """Close the source list of a :class:`ArrivingTask`: whole (END), or CANCEL."""
    with sources_file.open("a") as handle:
        handle.write(f"{_CANCEL if cancel else _END}\n")


def sources_given(sources_file: Path) -> int:
    """How many source paths an arriving task's file holds (0 if there is none)."""
    try:
        lines = sources_file.read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line not in (_END, _CANCEL))
