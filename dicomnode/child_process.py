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


def child_pool(niceness: int = 0) -> ProcessPoolExecutor:
    """A one-process pool whose worker runs at ``niceness`` and exits when the node does."""
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
