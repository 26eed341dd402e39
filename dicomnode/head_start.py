"""Head start: produce a multiphase series while it is still arriving.

A job begins when its study is complete, so harmonizing, writing and sending used to follow
receiving. When a series' header gives its expected count (a multiphase series) and the
rules harmonize it, the pipeline starts its production at the first instance instead: the
production child reads the source paths as they come (the ``sources.txt`` of the head
start's folder, :func:`dicomnode.production.produce_arriving`), derives each slice once the
pre-contrast phase is in, and each derived file streams to the rule's destinations at once.

When the study completes, its job adopts the head start if it holds the same series and the
same rule: the job's output is then the head start's folder, the finished streams are the
delivery's first attempt, all recorded in the ledger as for any job. Otherwise (the rule
changed, the job holds other instances, the head start failed) the head start is cancelled
and the job produced from scratch. Until adopted, a head start is in no ledger row: after a
crash the job is produced again, and what was streamed before is sent again under the same
UIDs (derived from the source UIDs, the model and the rule), so a destination holds it once.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import wait
from pathlib import Path

from dicomnode.arriving import ArrivingTask, mark_sources_final, produce_arriving, sources_given
from dicomnode.ledger import Instance
from dicomnode.logs import get_logger
from dicomnode.production import POLL_SECONDS, Produced, Producer, hand_over_ready
from dicomnode.routing import Rule
from dicomnode.sender import Stream


class HeadStart:
    """One series produced while it arrives, and the streams that send what it makes."""

    def __init__(self, folder: Path, study_uid: str, series_uid: str, rule: Rule,
                 config_hash: str, producer: Producer, sends: list[Stream]) -> None:
        assert rule.method and rule.model
        self.folder = folder
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.rule = rule
        self.config_hash = config_hash
        self.sends = sends
        self.output_dir = folder / "out"
        self._sources = folder / "sources.txt"
        self._fed: set[int] = set()
        self._last_fed = 0
        self._handed = 0
        folder.mkdir(parents=True)
        self._sources.touch()
        self._future = producer.submit(produce_arriving, ArrivingTask(
            str(self._sources), rule.method, rule.model, rule.name, config_hash,
            str(self.output_dir)))

    @property
    def last_fed(self) -> int:
        """The highest instance id given to the child (0: none yet)."""
        return self._last_fed

    def feed(self, instances: list[Instance]) -> None:
        """Give the child the instances of the series it has not had yet, in arrival order."""
        new = [i for i in instances if i.series_uid == self.series_uid and i.id not in self._fed]
        if new:
            with self._sources.open("a") as handle:
                handle.writelines(f"{i.path}\n" for i in sorted(new, key=lambda i: i.id))
            self._fed.update(i.id for i in new)
            self._last_fed = max(self._last_fed, *(i.id for i in new))

    def hand_over(self) -> None:
        """Put each derived file written since the last call on every stream."""
        self._handed = hand_over_ready(self.output_dir, self._handed, self._put)

    def adoptable(self, instances: list[Instance], rule: Rule, config_hash: str) -> bool:
        """Whether a job of these instances under this rule makes what this head start does."""
        ids = {i.id for i in instances}
        return (rule.name == self.rule.name and config_hash == self.config_hash
                and {i.series_uid for i in instances} == {self.series_uid}
                and self._fed <= ids and not self._future.done())

    def finish(self, instances: list[Instance], job_id: int) -> Produced | None:
        """The job's whole list goes to the child; wait for the rest of the series.

        Returns what was produced, every file handed over and the streams ended complete;
        None when the head start failed (it is cancelled: the job is produced from scratch).
        """
        self.feed(instances)
        mark_sources_final(self._sources, cancel=False)
        while not self._future.done():
            self.hand_over()
            wait([self._future], timeout=POLL_SECONDS)
        self.hand_over()
        error = self._future.exception()
        if error is not None or self._handed != self._future.result().files:
            reason = repr(error) if error else f"{self._handed} files handed over"
            get_logger(job_id=job_id, series_uid=self.series_uid).warning(
                "head_start_failed", reason=reason, handed=self._handed)
            self._abort(f"head start failed: {reason}")
            return None
        for send in self.sends:
            send.job_id = job_id
            send.end(complete=True)
        return self._future.result()

    def cancel(self, why: str) -> None:
        """Stop the child, end the streams as incomplete and delete the folder."""
        mark_sources_final(self._sources, cancel=True)
        wait([self._future])
        get_logger(study_uid=self.study_uid, series_uid=self.series_uid).info(
            "head_start_cancelled", reason=why, handed_over=self._handed)
        self._abort(f"head start cancelled: {why}")

    def _abort(self, reason: str) -> None:
        """Stop the streams (what they have not sent yet stays unsent), delete the folder."""
        for send in self.sends:
            send.abort(reason)
        for send in self.sends:
            send.wait()  # a send in flight reads its file from the folder
        shutil.rmtree(self.folder, ignore_errors=True)

    def _put(self, path: Path) -> None:
        for send in self.sends:
            send.put(path)


def head_start_folder(root: Path) -> Path:
    """A new folder for a head start under ``root``."""
    return root / f"{time.time_ns():x}"


def unadopted(root: Path, adopted: set[str]) -> list[Path]:
    """Head start folders no job's output (``adopted``) is in: running, or left by a crash."""
    if not root.is_dir():
        return []
    return sorted(folder for folder in root.iterdir() if str(folder / "out") not in adopted)


def remove_unadopted(root: Path, adopted: set[str]) -> None:
    """Delete head start folders no job's output is in (at start: left by a crash)."""
    for folder in unadopted(root, adopted):
        shutil.rmtree(folder, ignore_errors=True)


def progress(folder: Path) -> tuple[int, int]:
    """How many source instances a head start was given, and how many files it made."""
    return sources_given(folder / "sources.txt"), len(list((folder / "out").glob("*.dcm")))
