"""The production worker: a child process that harmonizes a job and writes its series."""

import os
import signal
from pathlib import Path

import pytest

from dicomnode.production import Producer, ProductionTask
from harmonizers.base import ModelError
from tests.peers import child_pids, wait_for
from tests.pipeline_harness import MODEL
from tests.samples import sample_files


def _task(folder: str, output: Path) -> ProductionTask:
    return ProductionTask(
        source_paths=tuple(str(p) for p in sample_files(folder)), method="histogram",
        model=MODEL, rule="test", config_hash="0" * 64, output_dir=str(output))


def _workers() -> set[int]:
    """This process's production children (not multiprocessing's resource tracker)."""
    return {pid for pid in child_pids(os.getpid())
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


@pytest.fixture
def producer(models: Path, monkeypatch: pytest.MonkeyPatch) -> Producer:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))  # the child inherits it
    return Producer()


def test_files_are_handed_over_in_order_as_the_child_writes_them(
    producer: Producer, tmp_path: Path
) -> None:
    handed: list[Path] = []
    try:
        produced = producer.run(_task("ge-signa-architect-3t-multiphase", tmp_path / "out"),
                                handed.append)
    finally:
        producer.close()
    assert produced.files == len(handed) == 100
    assert [p.name for p in handed] == [f"{i:05d}.dcm" for i in range(100)]
    assert all(p.is_file() for p in handed)


def test_what_the_child_refuses_arrives_as_the_same_error(
    producer: Producer, tmp_path: Path
) -> None:
    try:
        with pytest.raises(ModelError, match="siemens"):  # a GE model, a Siemens series
            producer.run(_task("siemens-prisma-3t-prone", tmp_path / "out"), print)
    finally:
        producer.close()


def test_a_worker_that_died_between_jobs_is_replaced(producer: Producer, tmp_path: Path) -> None:
    try:
        before = set(_workers())
        producer.start()
        wait_for(lambda: bool(_workers() - before), 60, "the production worker")
        (worker,) = _workers() - before
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: worker not in _workers(), 15, "the worker to die")
        produced = producer.run(_task("ge-signa-architect-3t-multiphase", tmp_path / "out"),
                                lambda path: None)
        assert produced.files == 100
    finally:
        producer.close()


def test_the_child_imports_the_methods_the_rules_name_when_it_starts(
    producer: Producer
) -> None:
    """Not while the first job waits: scipy for histogram, torch for the deep methods."""
    try:
        before = set(_workers())
        producer.start(["histogram"])
        wait_for(lambda: bool(_workers() - before), 60, "the production worker")
        (worker,) = _workers() - before
        maps = Path(f"/proc/{worker}/maps")
        wait_for(lambda: "_nd_image" in maps.read_text(), 60, "scipy.ndimage in the worker")
    finally:
        producer.close()
