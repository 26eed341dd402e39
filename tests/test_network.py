"""The SCP in-process: Success only once the instance is on disk and in the ledger."""

import socket
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from structlog.testing import capture_logs

from dicomnode import network
from dicomnode.intake import recover_spool
from dicomnode.ledger import Ledger
from dicomnode.network import STATUS_OUT_OF_RESOURCES, _as_file
from dicomnode.store_scp import AssociationRequest, StoreRequest
from dicomnode.validation import STATUS_DOES_NOT_MATCH_SOP_CLASS
from tests.peers import in_process_node, mr_instance, request_association, store_one, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path, Ledger]]:
    with in_process_node(tmp_path) as node:
        yield node.port, node.config.spool_dir, node.ledger


def test_success_means_on_disk_and_in_the_ledger(server: tuple[int, Path, Ledger]) -> None:
    port, spool_root, ledger = server
    assert store_one(port, mr_instance()) == 0x0000
    (instance,) = ledger.unclaimed("1.2.3.4")
    assert Path(instance.path).is_file()
    assert Path(instance.path).is_relative_to(spool_root)
    assert instance.calling_ae == "SCANNER"
    assert instance.parse_error is None


def test_unwritable_spool_answers_out_of_resources(server: tuple[int, Path, Ledger]) -> None:
    port, spool_root, ledger = server
    spool_root.write_text("a file where the spool folder should be")
    assert store_one(port, mr_instance()) == STATUS_OUT_OF_RESOURCES
    assert ledger.unclaimed("1.2.3.4") == []


def test_an_instance_without_study_is_kept_and_flagged(server: tuple[int, Path, Ledger]) -> None:
    port, _, ledger = server
    assert store_one(port, mr_instance(study_uid=None)) == STATUS_DOES_NOT_MATCH_SOP_CLASS
    (instance,) = ledger.unclaimed(None)
    assert instance.parse_error == "StudyInstanceUID is missing"
    assert Path(instance.path).is_file()


def test_the_called_ae_title_must_be_ours(server: tuple[int, Path, Ledger]) -> None:
    port, _, _ = server
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SOMEONE-ELSE")
    assert assoc.is_rejected


def test_a_spool_file_without_ledger_row_is_recovered(
    server: tuple[int, Path, Ledger], tmp_path: Path
) -> None:
    """The node stopped between the spool write and the ledger row: the file is the record."""
    port, spool_root, _ = server
    assert store_one(port, mr_instance()) == 0x0000
    (stored,) = spool_root.rglob("*.dcm")
    meta = dcmread(stored).file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle) == (
        "SCANNER", "NODE")
    # A spool file made but never written, and one whose write a crash cut short: neither
    # was answered Success, so neither is taken for a received instance.
    (stored.parent / "0reserved.dcm").write_bytes(b"")
    (stored.parent / "1cut.dcm").write_bytes(stored.read_bytes()[:-100])
    (stored.parent / ".abc.dcm.partial").write_bytes(b"an older node's temporary file")
    fresh = Ledger(tmp_path / "fresh.sqlite")
    assert recover_spool(spool_root, fresh) == 1
    (instance,) = fresh.unclaimed("1.2.3.4")
    assert (instance.path, instance.calling_ae) == (str(stored), "SCANNER")
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]
    assert recover_spool(spool_root, fresh) == 0


def test_the_file_meta_is_encoded_as_pydicom_encodes_it() -> None:
    """The node encodes the File Meta Information itself (it is on the way to the fsync);
    the bytes must be pydicom's, AE titles included, for odd and even lengths (PS3.10 7.1)."""
    for sop_uid, calling, called in (("1.2.3", "SCANNER", "NODE"), ("1.23", "CT01", "DICOMNODE")):
        meta = create_file_meta(sop_class_uid=MRImageStorage, sop_instance_uid=UID(sop_uid),
                                transfer_syntax=ExplicitVRLittleEndian)
        meta.SendingApplicationEntityTitle = calling
        meta.ReceivingApplicationEntityTitle = called
        request = AssociationRequest(calling, called, "127.0.0.1", 104)
        written = _as_file(request, StoreRequest(MRImageStorage, sop_uid,
                                                 ExplicitVRLittleEndian, b"DATA", 4))
        assert written == b"\0" * 128 + b"DICM" + encode_file_meta(meta) + b"DATA"


def _spool_files(spool_root: Path) -> tuple[list[Path], list[Path]]:
    """Written spool files, and those made ahead of their data (still empty)."""
    files = list(spool_root.rglob("*.dcm"))
    return [p for p in files if p.stat().st_size], [p for p in files if not p.stat().st_size]


def _send_fragments(assoc: Association, request: C_STORE, keep_last: bool) -> None:
    """Send a C-STORE request's P-DATA, without its last fragment unless ``keep_last``."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    (context,) = assoc.accepted_contexts
    assert context.context_id is not None
    fragments = list(message.encode_msg(context.context_id, 16_384))
    for fragment in fragments if keep_last else fragments[:-1]:
        assoc.dul.send_pdu(fragment)


def _c_store(ds: Dataset, sop_class: str) -> C_STORE:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    encoded = encode(ds, False, True)
    assert encoded is not None
    request.DataSet = BytesIO(encoded)
    return request


def test_a_sender_cut_off_mid_instance_leaves_no_file_and_no_row(
    server: tuple[int, Path, Ledger],
) -> None:
    port, spool_root, ledger = server
    assoc = request_association(port)
    assert int(assoc.send_c_store(mr_instance()).Status) == 0x0000
    # While the association is open the next spool file is made ahead of its data.
    wait_for(lambda: len(_spool_files(spool_root)[1]) == 1, 10, "the next spool file")
    _send_fragments(assoc, _c_store(mr_instance(pixels=60_000), MRImageStorage),
                    keep_last=False)
    assoc.abort()
    wait_for(lambda: not _spool_files(spool_root)[1], 10, "the unused spool file to go")
    (stored,), _ = _spool_files(spool_root)
    assert [i.path for i in ledger.unclaimed("1.2.3.4")] == [str(stored)]


def test_a_c_store_of_another_sop_class_than_its_context_is_refused_and_not_kept(
    server: tuple[int, Path, Ledger],
) -> None:
    """The Affected SOP Class of a C-STORE must be its presentation context's abstract syntax
    (PS3.7 9.1.1): otherwise it is refused (0x0122, SOP Class not supported) and nothing is
    written, and the association goes on."""
    port, spool_root, ledger = server
    assoc = request_association(port)
    (context,) = assoc.accepted_contexts
    assert context.context_id is not None
    # As pynetdicom's own send_* methods do: the reactor paused, the response read here.
    assoc._reactor_checkpoint.clear()
    wait_for(lambda: assoc._is_paused, 10, "pynetdicom's reactor to pause")
    assoc.dimse.send_msg(_c_store(mr_instance(), "1.2.3.999"), context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assert response is not None and response.Status == 0x0122
    assert int(assoc.send_c_store(mr_instance()).Status) == 0x0000
    assoc.release()
    (stored,), _ = _spool_files(spool_root)
    assert [i.path for i in ledger.unclaimed("1.2.3.4")] == [str(stored)]


def test_a_connection_that_breaks_the_protocol_is_aborted_and_the_node_serves_on(
    server: tuple[int, Path, Ledger],
) -> None:
    port, _, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">BxI", 4, 4) + b"\0\0\0\0")  # P-DATA before an association
        answer = sock.recv(64)
        assert sock.recv(64) == b""  # then the node closes
    assert answer[:1] == b"\x07"  # A-ABORT (PS3.8 9.3.8)
    assert store_one(port, mr_instance()) == 0x0000


def test_a_silent_association_is_aborted_and_the_node_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "IDLE_TIMEOUT", 0.5)
    with in_process_node(tmp_path) as node, capture_logs() as logs:
        assoc = request_association(node.port)
        assert assoc.is_established
        wait_for(lambda: assoc.is_aborted, 10, "the node to abort the silent association")
        wait_for(lambda: any(e["event"] == "association_aborted" for e in logs), 10,
                 "the abort in the log")
        assert store_one(node.port, mr_instance()) == 0x0000
