"""The streams' sending child: files go out from it, and its death fails only its streams."""

import os
import signal
import threading
from pathlib import Path

import pytest

from dicomnode.config import DeliveryPolicy, DicomDestination
from dicomnode.sender import Sender
from tests.peers import child_pids, free_port
from tests.recording_scp import RecordingSCP
from tests.samples import read_sample, sample_files

GE_MULTIPHASE = "ge-signa-architect-3t-multiphase"


def _destination(port: int) -> DicomDestination:
    return DicomDestination(type="dicom", ae_title="PACS", host="127.0.0.1", port=port)


def _senders() -> set[int]:
    """This process's sending children."""
    return {pid for pid in child_pids(os.getpid())
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


@pytest.fixture
def sender() -> Sender:
    return Sender("DICOMNODE", DeliveryPolicy(timeout_seconds=5))


def test_a_stream_sends_every_file_from_the_child(sender: Sender, scp: RecordingSCP) -> None:
    files = sample_files(GE_MULTIPHASE)[:5]
    finished = threading.Event()
    try:
        before = _senders()
        stream = sender.stream("pacs", _destination(scp.port), 7, finished.set)
        for path in files:
            stream.put(path)
        stream.end(complete=True)
        stream.wait()
        assert _senders() - before, "no child was started"
    finally:
        sender.close()
    assert finished.is_set() and stream.done
    assert (stream.sent, stream.error, stream.complete, stream.job_id) == (5, None, True, 7)
    uids = {str(ds.SOPInstanceUID) for ds in read_sample(GE_MULTIPHASE)}
    assert len(scp.stored) == 5 and set(scp.stored) <= uids


def test_a_destination_that_is_not_there_fails_the_stream(sender: Sender) -> None:
    try:
        stream = sender.stream("pacs", _destination(free_port()), 1, lambda: None)
        stream.put(sample_files(GE_MULTIPHASE)[0])
        stream.end(complete=True)
        stream.wait()
    finally:
        sender.close()
    assert stream.sent == 0
    assert stream.error is not None and "cannot connect (Connection refused)" in stream.error


def test_an_aborted_stream_sends_nothing_more(sender: Sender, scp: RecordingSCP) -> None:
    try:
        stream = sender.stream("pacs", _destination(scp.port), 1, lambda: None)
        stream.abort("head start cancelled")
        stream.put(sample_files(GE_MULTIPHASE)[0])
        stream.wait()
    finally:
        sender.close()
    assert (stream.sent, stream.error, stream.complete) == (0, "head start cancelled", False)
    assert scp.stored == []


def test_a_dead_child_fails_its_streams_and_the_next_stream_gets_a_new_one(
    sender: Sender, scp: RecordingSCP
) -> None:
    try:
        before = _senders()
        assert sender.start(60), "the sending child did not say it was ready"
        (child,) = _senders() - before
        stream = sender.stream("pacs", _destination(scp.port), 1, lambda: None)
        os.kill(child, signal.SIGKILL)
        stream.wait()  # answered by the node's side, since the child never will
        assert stream.error == "the sending process ended before the stream did"
        again = sender.stream("pacs", _destination(scp.port), 2, lambda: None)
        again.put(sample_files(GE_MULTIPHASE)[0])
        again.end(complete=True)
        again.wait()
        assert (again.sent, again.error) == (1, None)
        assert child not in _senders()
    finally:
        sender.close()
    assert len(scp.stored) == 1
