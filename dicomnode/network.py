"""The network edge: a pynetdicom AE that answers C-ECHO and C-STORE.

Each instance is written to the spool and recorded in the ledger before Success goes back;
if either fails the sender hears 0xA700 (out of resources) and can send again.

Admission happens here too. An association is refused with A-ASSOCIATE-RJ (PS3.8 9.3.4,
Table 9-21) when the calling AE is not on the allowlist or sends from a host it may not use
(rejected-permanent, service-user, calling-AE-title-not-recognized), when the called AE is
not ours (called-AE-title-not-recognized), or when the node is short of disk or already
serves ``max_associations`` senders (rejected-transient, service-provider presentation
related, local-limit-exceeded: the sender should try again later). Within an association a
C-STORE that would fill the disk, or an instance above ``max_instance_mb``, is answered
0xA700 (PS3.4 Table B.2-1) and not stored. With TLS (PS3.15 B.9) every connection is wrapped
before the association starts.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from structlog.typing import FilteringBoundLogger

from dicomnode.config import NodeConfig
from dicomnode.encoding import text_value, uid_value
from dicomnode.intake import examine, record
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.metrics import MIB, NodeMetrics, free_disk_mb
from dicomnode.security import CallerPolicy, server_context
from dicomnode.spool import Spool, SpoolFile

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

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 Table 9-21.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE not recognized
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation provider, local limit

# Why pynetdicom's own checks rejected (require_called_aet and maximum_associations are the
# only ones configured), as the reason label of the metric.
_PYNETDICOM_REASONS = {
    REJECT_CALLED_AE: "called_ae_unknown",
    REJECT_LOCAL_LIMIT: "too_many_associations",
}


def set_nodelay(event: Event) -> None:
    """Turn Nagle off on every association socket: otherwise each C-STORE waits ~45 ms."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(assoc: Association) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


class Admission:
    """Association-time checks, and the log line and metric of every refusal."""

    def __init__(
        self, config: NodeConfig, spool: Spool, metrics: NodeMetrics | None
    ) -> None:
        self.callers = CallerPolicy(config.security.allowed_callers)
        self.called_ae = config.ae_title.strip()
        self.min_free_disk_mb = config.admission.min_free_disk_mb
        self.spool = spool
        self.metrics = metrics

    def refused(self, reason: str, **facts: object) -> None:
        get_logger(**facts).warning("association_rejected", reason=reason)
        if self.metrics is not None:
            self.metrics.association_rejected(reason)

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: refuse an unknown AE, a known one from a wrong host, low disk.

        The caller is checked here rather than with pynetdicom's ``require_calling_aet``,
        whose empty list means "anyone" where an empty allowlist means "no one". A request
        for another called AE is left to pynetdicom's ``require_called_aet``, so the sender
        hears that reason.
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert isinstance(request, A_ASSOCIATE)
        calling_ae = str(request.calling_ae_title).strip()
        if request.called_ae_title.strip() != self.called_ae:
            return
        if not self.callers.knows(calling_ae):
            self._reject(assoc, calling_ae, REJECT_CALLING_AE, "calling_ae_unknown")
        elif not self.callers.host_allowed(calling_ae, assoc.requestor.address):
            self._reject(assoc, calling_ae, REJECT_CALLING_AE, "calling_ae_wrong_host")
        elif (free := free_disk_mb(self.spool.root)) < self.min_free_disk_mb:
            self._reject(assoc, calling_ae, REJECT_LOCAL_LIMIT, "low_disk",
                         free_disk_mb=round(free, 1), min_free_disk_mb=self.min_free_disk_mb)

    def _reject(
        self, assoc: Association, calling_ae: str, rsd: tuple[int, int, int], reason: str,
        **facts: object,
    ) -> None:
        assoc.acse.send_reject(*rsd)
        self.refused(reason, calling_ae=calling_ae, peer=_peer(assoc), rejection=rsd, **facts)
        # As pynetdicom does after its own rejections: wait until the A-ASSOCIATE-RJ is out
        # and the sender has closed (or ARTIM expired) before the connection is dropped.
        assoc.kill()

    def on_rejected(self, event: Event) -> None:
        """EVT_REJECTED: log and count the rejections pynetdicom made itself."""
        assoc = event.assoc
        answer = assoc.acceptor.primitive
        request = assoc.requestor.primitive
        assert isinstance(answer, A_ASSOCIATE) and isinstance(request, A_ASSOCIATE)
        rsd = (int(answer.result or 0), int(answer.result_source or 0),
               int(answer.diagnostic or 0))
        self.refused(_PYNETDICOM_REASONS.get(rsd, "other"), calling_ae=request.calling_ae_title,
                     called_ae=request.called_ae_title, peer=_peer(assoc), rejection=rsd)


@dataclass
class _Arrival:
    """One C-STORE data set from the moment its last fragment arrived: refused, or on its
    way to the spool (``data``, the file's bytes, being written by ``written``)."""

    dataset: BytesIO  # pynetdicom's buffer: its identity ties the request to its arrival
    refusal: str | None = None
    facts: dict[str, object] = field(default_factory=dict)
    data: bytes = b""
    written: Future[Path] | None = None


@dataclass
class _Session:
    """One association's requests under way (by their data set's id) and its next spool
    file, made while the sender sends."""

    arrivals: dict[int, _Arrival] = field(default_factory=dict)
    spare: Future[SpoolFile] | None = None

    def release(self, log: FilteringBoundLogger) -> None:
        """Remove the unused spool file and the files of requests never answered: their
        senders heard no Success, so the files must not be recovered as received."""
        if self.spare is not None:
            with suppress(Exception):  # not made: nothing to remove
                self.spare.result().release()
        for arrival in self.arrivals.values():
            if arrival.written is None:
                continue
            try:
                path = arrival.written.result()
            except Exception:  # noqa: BLE001 - nothing was written
                continue
            path.unlink(missing_ok=True)
            log.warning("instance_abandoned", path=str(path))


class StoreHandler:
    """C-STORE: limits, spool, ledger, then Success; anything else is out of resources.

    The durable write starts in pynetdicom's DUL thread as soon as the last P-DATA fragment
    of a request is in (EVT_DIMSE_RECV, :meth:`on_received`), into a spool file made while
    the sender was sending, and runs in a pool while pynetdicom's association reactor, which
    looks for complete messages once a millisecond, picks the request up. The C-STORE
    handler (:meth:`__call__`) checks the instance while the file is being fsynced, then
    waits for the write, adds the ledger row and answers: Success still only once the file
    and its folder entry are fsynced (the entry when the file was made) and the row is
    committed.
    """

    def __init__(
        self, config: NodeConfig, spool: Spool, ledger: Ledger, metrics: NodeMetrics | None = None,
        arrived: threading.Event | None = None,
    ) -> None:
        self.spool = spool
        self.ledger = ledger
        self.metrics = metrics
        # Set after each ledger row, so the pipeline looks for completed series at once.
        self.arrived = arrived or threading.Event()
        self.max_instance_bytes = config.admission.max_instance_mb * MIB
        self.min_free_disk_mb = config.admission.min_free_disk_mb
        # A write and the next spool file, one instance at a time per association.
        self._pool = ThreadPoolExecutor(2 * config.admission.max_associations,
                                        thread_name_prefix=f"{config.ae_title}-intake")
        self._lock = threading.Lock()
        self._sessions: dict[Association, _Session] = {}
        self._closing = False

    def close(self) -> None:
        """Finish the writes under way, stop the pool, and release what is left."""
        with self._lock:
            self._closing = True
        self._pool.shutdown(wait=True)
        with self._lock:
            left, self._sessions = self._sessions, {}
        for session in left.values():
            session.release(get_logger())

    def on_opened(self, event: Event) -> None:
        """EVT_CONN_OPEN: keep track of the association's requests from now on."""
        with self._lock:
            self._sessions[event.assoc] = _Session()

    def on_closed(self, event: Event) -> None:
        """EVT_CONN_CLOSE: release what the association left."""
        with self._lock:
            session = self._sessions.pop(event.assoc, None)
        if session is not None:
            session.release(get_logger(peer=_peer(event.assoc)))

    def _refuse(self, reason: str) -> int:
        if self.metrics is not None:
            self.metrics.instance_refused(reason)
        return STATUS_OUT_OF_RESOURCES

    def on_received(self, event: Event) -> None:
        """EVT_DIMSE_RECV, in the DUL thread: admit a complete C-STORE request and start it."""
        message = event.message
        if not isinstance(message, C_STORE_RQ) or not isinstance(message.data_set, BytesIO):
            return
        assoc = event.assoc
        context = next((cx for cx in assoc.accepted_contexts
                        if cx.context_id == message.context_id), None)
        if context is None:
            return  # pynetdicom aborts the association: no such context
        command = message.command_set
        arrival = self._admit(assoc, message.data_set, str(command.AffectedSOPClassUID),
                              str(command.AffectedSOPInstanceUID), context.transfer_syntax[0])
        with self._lock:
            session = self._sessions.get(assoc)
            if session is not None:
                session.arrivals[id(message.data_set)] = arrival

    def _admit(
        self, assoc: Association, dataset: BytesIO, sop_class: str, sop_uid: str,
        transfer_syntax: str,
    ) -> _Arrival:
        size = dataset.getbuffer().nbytes
        if size > self.max_instance_bytes:
            return _Arrival(dataset, "too_large",
                            {"size": size, "max_instance_bytes": int(self.max_instance_bytes)})
        free = free_disk_mb(self.spool.root)
        if free - size / MIB < self.min_free_disk_mb:
            # Refuse before the disk is full: the ledger and the jobs' outputs need room too.
            return _Arrival(dataset, "low_disk", {"free_disk_mb": round(free, 1),
                                                  "min_free_disk_mb": self.min_free_disk_mb})
        data = _as_file(assoc, dataset, sop_class, sop_uid, transfer_syntax)
        with self._lock:
            session = self._sessions.get(assoc)
            spare = session.spare if session is not None else None
            if session is not None:
                session.spare = None
        return _Arrival(dataset, data=data,
                        written=self._pool.submit(self._write, assoc, spare, data))

    def _write(
        self, assoc: Association, spare: Future[SpoolFile] | None, data: bytes
    ) -> Path:
        """In the pool: the durable write, then the association's next spool file."""
        path = (spare.result() if spare is not None else self.spool.reserve()).commit(data)
        with self._lock:
            session = self._sessions.get(assoc)
            if session is not None and session.spare is None and not self._closing:
                session.spare = self._pool.submit(self.spool.reserve)
        return path

    def _take(self, event: Event, dataset: BytesIO, sop_class: str, sop_uid: str) -> _Arrival:
        """The request's arrival; admitted here if EVT_DIMSE_RECV did not see it."""
        with self._lock:
            session = self._sessions.get(event.assoc)
            arrival = session.arrivals.pop(id(dataset), None) if session is not None else None
        if arrival is not None and arrival.dataset is dataset:
            return arrival
        return self._admit(event.assoc, dataset, sop_class, sop_uid, event.context.transfer_syntax)

    def __call__(self, event: Event) -> int:
        requestor = event.assoc.requestor
        request = event.request
        assert isinstance(request, C_STORE) and isinstance(request.DataSet, BytesIO)
        sop_uid = str(request.AffectedSOPInstanceUID)
        log = get_logger(calling_ae=requestor.ae_title, peer=_peer(event.assoc),
                         sop_instance_uid=sop_uid)
        arrival = self._take(event, request.DataSet, str(request.AffectedSOPClassUID), sop_uid)
        if arrival.refusal == "too_large":
            log.warning("instance_too_large", **arrival.facts)
            return self._refuse("too_large")
        if arrival.refusal == "low_disk":
            log.error("disk_low", **arrival.facts)
            return self._refuse("low_disk")
        assert arrival.written is not None
        # The checks run while the worker waits on the disk (it needs the GIL only between
        # its system calls).
        examined = examine(arrival.data, sop_uid, str(request.AffectedSOPClassUID))
        try:
            path = arrival.written.result()
        except Exception as exc:  # noqa: BLE001 - never answer Success for an unwritten file
            log.error("spool_write_failed", error=str(exc))
            return self._refuse("spool_write_failed")
        try:
            registered = record(self.ledger, path, examined, requestor.ae_title,
                                _peer(event.assoc), len(arrival.data))
        except Exception as exc:  # noqa: BLE001
            path.unlink(missing_ok=True)
            log.error("ledger_write_failed", error=str(exc))
            return self._refuse("ledger_write_failed")
        self.arrived.set()
        verdict = registered.verdict
        if not verdict.accepted:
            # Kept and quarantined for the admin; the sender hears what is wrong (PS3.4 B.2).
            log.warning("instance_not_accepted", instance_id=registered.instance_id,
                        status=f"0x{verdict.status:04X}", reason=verdict.reason)
            if self.metrics is not None:
                self.metrics.instance_refused("invalid")
            return verdict.status
        log.debug("instance_stored", instance_id=registered.instance_id, path=str(path))
        if self.metrics is not None:
            self.metrics.instance_received(requestor.ae_title, len(arrival.data))
        return STATUS_SUCCESS


def _as_file(
    assoc: Association, dataset: BytesIO, sop_class: str, sop_uid: str, transfer_syntax: str
) -> bytes:
    """The instance as received, in the DICOM file format, with who sent it to whom.

    The File Meta Information (PS3.10 7.1, Table 7.1-1) is encoded here rather than with
    pydicom, which takes a quarter of a millisecond per instance on the way to the fsync.
    """
    elements = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", uid_value(sop_class)),
        _meta_element(0x0003, b"UI", uid_value(sop_uid)),
        _meta_element(0x0010, b"UI", uid_value(transfer_syntax)),
        _meta_element(0x0012, b"UI", uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", text_value(PYNETDICOM_IMPLEMENTATION_VERSION)),
        _meta_element(0x0017, b"AE", text_value(assoc.requestor.ae_title)),
        _meta_element(0x0018, b"AE", text_value(assoc.acceptor.ae_title)),
    ))
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"".join((b"\0" * 128, b"DICM", group_length, elements, dataset.getbuffer()))


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, Explicit VR Little Endian (PS3.5 7.1.2): OB has a reserved
    field and a 4-byte length, the other VRs here a 2-byte length."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _log_association(event: Event) -> None:
    assoc = event.assoc
    facts: dict[str, object] = {}
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if isinstance(sock, ssl.SSLSocket):
        # Who the certificate says the sender is, for the audit trail (PS3.15 B.1).
        subject = (sock.getpeercert() or {}).get("subject", ())
        names = [pair[1] for rdn in subject for pair in rdn if pair[0] == "commonName"]
        facts = {"tls": sock.version(), "tls_subject": names[0] if names else None}
    get_logger().info(
        "association_" + event.event.name.removeprefix("EVT_").lower(),
        calling_ae=assoc.requestor.ae_title, peer=_peer(assoc), **facts,
    )


class NodeServer(ThreadedAssociationServer):
    """The SCP's listening socket, with the TLS handshake moved off the accept loop.

    pynetdicom wraps each accepted socket in TLS inside ``get_request``, in the one thread
    that accepts every connection, and the accepted socket has no timeout: one client that
    connects and says nothing would stop the node from accepting anyone. Here the handshake
    runs in the connection's own thread, bounded by the ACSE timeout.
    """

    metrics: NodeMetrics | None = None
    thread: threading.Thread | None = None
    store: StoreHandler | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if self.ssl_context is not None and isinstance(request, socket.socket):
            wrapped = self._handshake(request, client_address)
            if wrapped is None:
                return
            request = wrapped
        super().process_request_thread(request, client_address)

    def _handshake(
        self, client: socket.socket, address: tuple[str, int] | str
    ) -> ssl.SSLSocket | None:
        assert self.ssl_context is not None
        client.settimeout(self.ae.acse_timeout)
        try:
            wrapped = self.ssl_context.wrap_socket(client, server_side=True)
        except OSError as exc:  # ssl.SSLError and timeouts are OSErrors
            peer = ":".join(map(str, address)) if isinstance(address, tuple) else address
            get_logger(peer=peer).warning(
                "association_rejected", reason="tls_handshake_failed", error=str(exc))
            if self.metrics is not None:
                self.metrics.association_rejected("tls_handshake_failed")
            self.shutdown_request(client)
            return None
        # Back to blocking, as pynetdicom expects of an accepted socket (it selects first).
        wrapped.settimeout(None)
        return wrapped

    def shutdown(self) -> None:
        """Stop accepting and close every association, then let the spool writes finish."""
        super().shutdown()
        if self.store is not None:
            self.store.close()

    def is_serving(self) -> bool:
        """Whether the accept loop is running: /healthz reports the SCP down otherwise."""
        return self.thread is not None and self.thread.is_alive()


def start_server(
    config: NodeConfig, spool: Spool, ledger: Ledger, metrics: NodeMetrics | None = None,
    arrived: threading.Event | None = None,
) -> NodeServer:
    """Start the SCP of ``config`` in background threads and return it (call .shutdown()).

    ``arrived`` is set each time an instance's ledger row is committed.
    """
    log = get_logger()
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.max_pdu
    ae.maximum_associations = config.admission.max_associations
    # Senders must address this node by its AE title, as a PACS admin configures it.
    ae.require_called_aet = True
    admission = Admission(config, spool, metrics)
    if admission.callers.accepts_any:
        log.warning("any_calling_ae_accepted",
                    hint="set security.allowed_callers to accept only known senders")
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    store = StoreHandler(config, spool, ledger, metrics, arrived)
    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_CONN_OPEN, store.on_opened),
        (evt.EVT_REQUESTED, admission.on_requested),
        (evt.EVT_REJECTED, admission.on_rejected),
        (evt.EVT_DIMSE_RECV, store.on_received),
        (evt.EVT_C_STORE, store),
        (evt.EVT_CONN_CLOSE, store.on_closed),
        (evt.EVT_ESTABLISHED, _log_association),
        (evt.EVT_RELEASED, _log_association),
        (evt.EVT_ABORTED, _log_association),
    ]
    tls = config.security.tls
    server = ae.make_server(
        (config.host, config.port), evt_handlers=handlers,
        ssl_context=server_context(tls) if tls else None, server_class=NodeServer,
    )
    assert isinstance(server, NodeServer)
    server.metrics = metrics
    server.store = store
    # What AE.start_server(block=False) does, with our server class: a daemon accept thread,
    # and the server listed on the AE so that its shutdown() finds it.
    server.thread = threading.Thread(
        target=server.serve_forever, name=f"{config.ae_title}-acceptor", daemon=True)
    server.thread.start()
    ae._servers.append(server)
    log.info("scp_listening", ae_title=config.ae_title, host=config.host, port=config.port,
             tls=tls is not None, allowed_callers=None if admission.callers.accepts_any
             else admission.callers.titles)
    return server
