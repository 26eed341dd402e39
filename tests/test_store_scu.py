"""The node's storage SCU (dicomnode/store_scu.py) against pynetdicom SCPs and a silent peer."""

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import DeliveryPolicy, DicomDestination
from dicomnode.delivery import DeliveryError, Outbox
from dicomnode.store_scu import AssociationError, InstanceFile, StoreAssociation
from tests.peers import free_port
from tests.samples import sample_files

FOLDERS = ("ge-signa-architect-3t-multiphase", "philips-achieva-3t-dynamics",
           "siemens-prisma-3t-prone", "ge-genesis-signa-1.5t-gauss")


class Peer:
    """A pynetdicom storage SCP on loopback that keeps what it was sent, as sent."""

    def __init__(self, max_pdu: int = 16382, status: int | Dataset = 0x0000,
                 network_timeout: float | None = None) -> None:
        self.port = free_port()
        self.received: dict[str, bytes] = {}
        self.largest_p_data = 0
        self.associations = 0
        self._status = status
        ae = AE(ae_title="PACS")
        ae.maximum_pdu_size = max_pdu
        ae.require_called_aet = True
        if network_timeout is not None:
            ae.network_timeout = network_timeout
        for context in AllStoragePresentationContexts[:100]:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, [
                "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
        self.server: ThreadedAssociationServer | None = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[
                (evt.EVT_C_STORE, self._store), (evt.EVT_PDU_RECV, self._pdu),
                (evt.EVT_ESTABLISHED, self._established)])

    def _store(self, event: Event) -> int | Dataset:
        request = event.request
        assert isinstance(request, C_STORE)
        self.received[str(request.AffectedSOPInstanceUID)] = event.encoded_dataset(False)
        return self._status

    def _pdu(self, event: Event) -> None:
        if event.pdu.pdu_type == 0x04:
            self.largest_p_data = max(self.largest_p_data, event.pdu.pdu_length)

    def _established(self, event: Event) -> None:
        self.associations += 1

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()


@pytest.fixture
def peer() -> Iterator[Peer]:
    scp = Peer(max_pdu=4096)
    yield scp
    scp.stop()


def _instances() -> list[InstanceFile]:
    return [InstanceFile.read(path) for folder in FOLDERS for path in sample_files(folder)[:2]]


def test_each_data_set_arrives_as_the_file_holds_it_in_pdus_the_peer_takes(peer: Peer) -> None:
    instances = _instances()
    assoc = StoreAssociation("127.0.0.1", peer.port, "NODE", "PACS",
                             {i.context for i in instances}, timeout=10)
    try:
        assert [assoc.store(i).status for i in instances] == [0] * len(instances)
    finally:
        assoc.release()
    for instance in instances:
        data_set = instance.path.read_bytes()[instance.offset:]
        assert peer.received[instance.sop_instance] == data_set
    assert len({i.transfer_syntax for i in instances}) == 2  # explicit and implicit VR
    assert 0 < peer.largest_p_data <= 4096  # the peer's maximum length (PS3.8 D.1)


def test_a_failure_status_comes_back_with_its_comment() -> None:
    refusal = Dataset()
    refusal.Status = 0xA700
    refusal.ErrorComment = "disk full"
    scp = Peer(status=refusal)
    try:
        destination = DicomDestination(type="dicom", ae_title="PACS", host="127.0.0.1",
                                       port=scp.port)
        outbox = Outbox("NODE", DeliveryPolicy())
        path = sample_files(FOLDERS[2])[0]
        with pytest.raises(DeliveryError, match=r"failed, status 0xA700 \(disk full\)"):
            outbox.send("pacs", destination, [path], "")
        outbox.close_all()
    finally:
        scp.stop()


def test_a_rejected_association_says_why(peer: Peer) -> None:
    context = _instances()[0].context
    with pytest.raises(AssociationError, match="rejected.*Called AE title not recognised"):
        StoreAssociation("127.0.0.1", peer.port, "NODE", "NOT-PACS", [context], timeout=10)


def test_a_peer_that_never_answers_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    try:
        with pytest.raises(AssociationError, match="no answer within 0.3 s"):
            StoreAssociation("127.0.0.1", listener.getsockname()[1], "NODE", "PACS",
                             [_instances()[0].context], timeout=0.3)
    finally:
        thread.join()
        for sock in accepted:
            sock.close()
        listener.close()


def test_an_association_the_peer_ended_while_idle_is_replaced() -> None:
    scp = Peer(network_timeout=0.3)  # pynetdicom aborts an association idle this long
    try:
        destination = DicomDestination(type="dicom", ae_title="PACS", host="127.0.0.1",
                                       port=scp.port)
        outbox = Outbox("NODE", DeliveryPolicy())
        first, second = sample_files(FOLDERS[2])[:2]
        outbox.send("pacs", destination, [first], "")
        time.sleep(1.0)
        outbox.send("pacs", destination, [second], "")
        outbox.close_all()
        assert scp.associations == 2
        assert len(scp.received) == 2
    finally:
        scp.stop()


def test_a_file_without_file_meta_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bare.dcm"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="bare.dcm"):
        InstanceFile.read(path)
