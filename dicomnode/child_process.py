"""The node's child processes: the production worker and the quality-report evaluator.

Each is a one-worker pool started with ``spawn`` (forking a process that runs threads, as the
SCP does, is unsafe), and each ends with the node: a node killed with -9 must not leave a
worker behind (it holds both ends of its task queue, so it would wait for work forever).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_WATCH_SECONDS = 1.0


# Children run with numpy's transparent-huge-page advice off unless the environment says
# otherwise. Each job faults in a few hundred MB of fresh arrays, once; with THP on "madvise"
# (Debian's default) numpy's advice makes the kernel compact memory at fault time. On the
# development VM that cost about 0.9 s of a 3-4 s production of a 6 x 48 x 512² series
# (alternating runs with the variable at 1 and 0, in the issue 5 note of 2026-11-26); the
# arrays are streamed through, so huge pages buy little back.
_NUMPY_THP = ("NUMPY_MADVISE_HUGEPAGE", "0")


def child_pool(niceness: int = 0) -> ProcessPoolExecutor:
    """A one-process pool whose worker runs at ``niceness`` and exits when the node does."""
    # numpy reads the variable when it is imported, which in a spawned child is before any
    # initializer runs; the child inherits this process's environment.
    os.environ.setdefault(*_NUMPY_THP)
    return ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
        initializer=_child_setup, initargs=(os.getpid(), niceness))


def _child_setup(node_pid: int, niceness: int) -> None:
    if niceness:
        os.nice(niceness)

    def watch() -> None:
        while os.getppid() == node_pid:
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="node-watch", daemon=True).start()
