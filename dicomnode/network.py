"""The network edge: a pynetdicom AE that answers C-ECHO and C-STORE.

Each instance is written to the spool and recorded in the ledger before Success goes back;
if either fails the sender hears 0xA700 (out of resources) and can send again.
"""

from __future__ import annotations

import socket
from io import BytesIO

from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.intake import register
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.spool import Spool

# Uncompressed and the lossless/lossy compressed syntaxes scanners and PACS send. pynetdicom's
# default storage contexts accept only the uncompressed ones (shared/reference/peers.md).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700

def set_nodelay(event: Event) -> None:
    """Turn Nagle off on every association socket: otherwise each C-STORE waits ~45 ms."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StoreHandler:
    """C-STORE: spool, ledger, then Success; anything else is out of resources."""

    def __init__(self, spool: Spool, ledger: Ledger) -> None:
        self.spool = spool
        self.ledger = ledger

    def __call__(self, event: Event) -> int:
        requestor = event.assoc.requestor
        request = event.request
        assert isinstance(request, C_STORE)
        sop_uid = str(request.AffectedSOPInstanceUID)
        log = get_logger(calling_ae=requestor.ae_title, sop_instance_uid=sop_uid)
        try:
            data = _as_file(event)
            path = self.spool.store(data)
        except Exception as exc:  # noqa: BLE001 - never answer Success for an unwritten file
            log.error("spool_write_failed", error=str(exc))
            return STATUS_OUT_OF_RESOURCES
        try:
            instance_id = register(
                self.ledger, path, data, requestor.ae_title,
                f"{requestor.address}:{requestor.port}",
                sop_uid, str(request.AffectedSOPClassUID),
            )
        except Exception as exc:  # noqa: BLE001
            path.unlink(missing_ok=True)
            log.error("ledger_write_failed", error=str(exc))
            return STATUS_OUT_OF_RESOURCES
        log.debug("instance_stored", instance_id=instance_id, path=str(path))
        return STATUS_SUCCESS


def _as_file(event: Event) -> bytes:
    """The instance as received, in the DICOM file format, with who sent it to whom."""
    meta = event.file_meta
    meta.SendingApplicationEntityTitle = event.assoc.requestor.ae_title
    meta.ReceivingApplicationEntityTitle = event.assoc.acceptor.ae_title
    request = event.request
    assert isinstance(request, C_STORE) and isinstance(request.DataSet, BytesIO)
    return b"".join((b"\0" * 128, b"DICM", encode_file_meta(meta), request.DataSet.getvalue()))


def _log_association(event: Event) -> None:
    requestor = event.assoc.requestor
    get_logger().info(
        "association_" + event.event.name.removeprefix("EVT_").lower(),
        calling_ae=requestor.ae_title,
        peer=f"{requestor.address}:{requestor.port}",
    )


def start_server(
    ae_title: str, host: str, port: int, max_pdu: int, spool: Spool, ledger: Ledger
) -> ThreadedAssociationServer:
    """Start the SCP in background threads and return the server (call .shutdown())."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    # Senders must address this node by its AE title, as a PACS admin configures it.
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_C_STORE, StoreHandler(spool, ledger)),
        (evt.EVT_ESTABLISHED, _log_association),
        (evt.EVT_RELEASED, _log_association),
        (evt.EVT_ABORTED, _log_association),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    assert server is not None
    return server
