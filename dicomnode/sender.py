"""The streams' sending, in a child process of its own.

Sending is Python on the node's side too (reading each file, cutting it into P-DATA PDUs,
waiting for each response: about 0.5 ms of CPU per 512² instance with the node's own SCU,
:mod:`dicomnode.store_scu`), and in the node's process it would hold the GIL that receiving
needs while a series is received and streamed at once. :class:`Sender` runs each stream
(:class:`dicomnode.delivery.StreamingSend`) in a spawned child instead; the pipeline holds a
:class:`RemoteStream` with the same interface.
The child is told each file's path through a pipe and answers once per stream, when it has
finished: how many files went and the first error. A child that dies fails the streams it
was running (their deliveries are retried by the outbox, from the job's folder) and is
replaced at the next stream. The child exits when the node does: its end of the pipe closes.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from dicomnode.config import DeliveryPolicy, DicomDestination
from dicomnode.delivery import StreamingSend

_STOP_SECONDS = 10.0
# The child's first answer, before any stream: it is listening (streams count from 1).
_READY = 0
_DIED = "the sending process ended before the stream did"


class Stream(Protocol):
    """What the pipeline and a head start use of a stream, in or out of process."""

    name: str
    job_id: int | None
    error: str | None
    sent: int
    complete: bool

    def put(self, path: Path) -> None: ...
    def end(self, complete: bool) -> None: ...
    def abort(self, reason: str) -> None: ...
    @property
    def done(self) -> bool: ...
    def wait(self) -> None: ...


class Sender:
    """Opens streams in the sending child (or, ``in_process``, in this process's threads:
    tests that drive the pipeline directly)."""

    def __init__(self, calling_ae: str, policy: DeliveryPolicy, in_process: bool = False):
        self.calling_ae = calling_ae
        self.policy = policy
        self.in_process = in_process
        self._child: _SenderChild | None = None
        self._lock = threading.Lock()

    def start(self, timeout: float) -> bool:
        """Start the child now rather than at the first stream (its imports take a second);
        whether it was ready within ``timeout`` seconds."""
        return self.in_process or self._running_child().ready.wait(timeout)

    def stream(self, name: str, destination: DicomDestination, job_id: int | None,
               finished: Callable[[], None]) -> Stream:
        """A stream of files to ``destination``; ``finished`` is called once it has ended."""
        if self.in_process:
            return StreamingSend(self.calling_ae, self.policy, name, destination, job_id,
                                 finished)
        return self._running_child().open(name, destination, job_id, finished)

    def close(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.stop()

    def _running_child(self) -> _SenderChild:
        with self._lock:
            if self._child is None or not self._child.alive:
                self._child = _SenderChild(self.calling_ae, self.policy)
            return self._child


class RemoteStream:
    """A stream run by the sending child, as the pipeline sees it."""

    def __init__(self, child: _SenderChild, stream_id: int, name: str, job_id: int | None,
                 finished: Callable[[], None]) -> None:
        self.name = name
        self.job_id = job_id
        self.error: str | None = None
        self.sent = 0
        self.complete = False
        self._child = child
        self.stream_id = stream_id
        self._finished = finished
        self._ended = threading.Event()

    def put(self, path: Path) -> None:
        self._child.tell("put", self.stream_id, str(path))

    def end(self, complete: bool) -> None:
        self.complete = complete
        self._child.tell("end", self.stream_id, complete)

    def abort(self, reason: str) -> None:
        self.error = self.error or reason
        self.complete = False
        self._child.tell("abort", self.stream_id, reason)

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self) -> None:
        self._ended.wait()

    def finish(self, sent: int, error: str | None) -> None:
        """The child's answer: the stream has ended."""
        self.sent = sent
        self.error = self.error or error
        self._ended.set()
        self._finished()


class _SenderChild:
    """One sending child process and the streams it runs."""

    def __init__(self, calling_ae: str, policy: DeliveryPolicy) -> None:
        context = multiprocessing.get_context("spawn")  # forking a threaded process is unsafe
        requests_in, self._requests = context.Pipe(duplex=False)
        self._answers, answers_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(calling_ae, policy, requests_in, answers_out),
            name="dicomnode-sender", daemon=True)
        self._process.start()
        # Only the child holds these ends now: when either process exits, the other reads EOF.
        requests_in.close()
        answers_out.close()
        self._lock = threading.Lock()  # the streams and the next id
        self._telling = threading.Lock()  # one message at a time on the pipe
        self._streams: dict[int, RemoteStream] = {}
        self._next_id = 0
        self._dead = False
        self.ready = threading.Event()  # the child has imported its modules and listens
        threading.Thread(target=self._read_answers, name="sender-answers", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._dead and self._process.is_alive()

    def open(self, name: str, destination: DicomDestination, job_id: int | None,
             finished: Callable[[], None]) -> RemoteStream:
        with self._lock:
            self._next_id += 1
            stream = RemoteStream(self, self._next_id, name, job_id, finished)
            dead = self._dead  # then the answer reader has failed its streams already
            if not dead:
                self._streams[stream.stream_id] = stream
        if dead:
            stream.finish(0, _DIED)
        else:
            self.tell("open", stream.stream_id, (name, destination))
        return stream

    def tell(self, what: str, stream_id: int, argument: object) -> None:
        try:
            with self._telling:
                self._requests.send((what, stream_id, argument))
        except OSError:
            pass  # the child is gone: the answer reader fails its streams

    def stop(self) -> None:
        self.tell("stop", 0, None)
        self._process.join(_STOP_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _read_answers(self) -> None:
        while True:
            try:
                stream_id, sent, error = self._answers.recv()
            except (EOFError, OSError):
                break
            if stream_id == _READY:
                self.ready.set()
                continue
            with self._lock:
                stream = self._streams.pop(stream_id, None)
            if stream is not None:
                stream.finish(sent, error)
        with self._lock:
            self._dead = True
            orphans = list(self._streams.values())
            self._streams.clear()
        for stream in orphans:
            stream.finish(0, _DIED)


def _serve(calling_ae: str, policy: DeliveryPolicy, requests: Connection,
           answers: Connection) -> None:
    """The child: run the streams the node opens until it says stop or goes away."""
    # Ctrl-C in a terminal reaches the whole process group; the node stops its streams.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    streams: dict[int, StreamingSend] = {}
    lock = threading.Lock()
    answers.send((_READY, 0, None))

    def finished(stream_id: int) -> None:
        with lock:
            stream = streams.pop(stream_id)
            answers.send((stream_id, stream.sent, stream.error))

    while True:
        try:
            what, stream_id, argument = requests.recv()
        except EOFError:
            return  # the node is gone; what was not recorded sent is sent again after restart
        if what == "stop":
            return
        if what == "open":
            name, destination = argument
            with lock:
                streams[stream_id] = StreamingSend(calling_ae, policy, name, destination, None,
                                                   partial(finished, stream_id))
            continue
        with lock:
            stream = streams.get(stream_id)
        if stream is None:
            continue
        if what == "put":
            stream.put(Path(argument))
        elif what == "end":
            stream.end(bool(argument))
        elif what == "abort":
            stream.abort(str(argument))
