"""The network edge: the node's SCP, answering C-ECHO and C-STORE.

Each instance is written to the spool and recorded in the ledger before Success goes back;
if either fails the sender hears 0xA700 (out of resources) and can send again.

Each connection is served on its own thread by :func:`dicomnode.store_scp.serve`; with TLS
(PS3.15 B.9) it is wrapped first, in that thread, so a client that connects and says nothing
holds up no one. Admission happens here too. An association is refused with A-ASSOCIATE-RJ
(PS3.8 9.3.4, Table 9-21) when the called AE is not ours (rejected-permanent, service-user,
called-AE-title-not-recognized), when the calling AE is not on the allowlist or sends from a
host it may not use (calling-AE-title-not-recognized), or when the node is short of disk or
already serves ``max_associations`` senders (rejected-transient, service-provider
presentation related, local-limit-exceeded: the sender should try again later). Within an
association a C-STORE that would fill the disk, or an instance above ``max_instance_mb``, is
answered 0xA700 (PS3.4 Table B.2-1) and not stored.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import NodeConfig
from dicomnode.encoding import text_value, uid_value
from dicomnode.intake import examine, record
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.metrics import MIB, NodeMetrics, free_disk_mb
from dicomnode.security import CallerPolicy, server_context
from dicomnode.spool import Spool, SpoolFile
from dicomnode.store_scp import AssociationRequest, Rejection, Settings, StoreRequest, serve

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

# How long a connection may take to ask for an association (and to finish its TLS
# handshake), and to send its next PDU once associated: pynetdicom's ACSE and network
# timeouts, which the node used before it served associations itself.
REQUEST_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0


class Admission:
    """Association-time checks, and the log line and metric of every refusal."""

    def __init__(
        self, config: NodeConfig, spool: Spool, metrics: NodeMetrics | None
    ) -> None:
        self.callers = CallerPolicy(config.security.allowed_callers)
        self.called_ae = config.ae_title.strip()
        self.max_associations = config.admission.max_associations
        self.min_free_disk_mb = config.admission.min_free_disk_mb
        self.spool = spool
        self.metrics = metrics

    def refused(self, reason: str, **facts: object) -> None:
        get_logger(**facts).warning("association_rejected", reason=reason)
        if self.metrics is not None:
            self.metrics.association_rejected(reason)

    def check(self, request: AssociationRequest, active: int) -> Rejection | None:
        """Why ``request`` is refused, with ``active`` associations already served; None
        to accept it. An empty allowlist means "no one" (:class:`CallerPolicy`)."""
        facts: dict[str, object] = {}
        if request.called_ae != self.called_ae:
            reason, rejection = "called_ae_unknown", REJECT_CALLED_AE
            facts["called_ae"] = request.called_ae
        elif active >= self.max_associations:
            reason, rejection = "too_many_associations", REJECT_LOCAL_LIMIT
        elif not self.callers.knows(request.calling_ae):
            reason, rejection = "calling_ae_unknown", REJECT_CALLING_AE
        elif not self.callers.host_allowed(request.calling_ae, request.host):
            reason, rejection = "calling_ae_wrong_host", REJECT_CALLING_AE
        elif (free := free_disk_mb(self.spool.root)) < self.min_free_disk_mb:
            reason, rejection = "low_disk", REJECT_LOCAL_LIMIT
            facts = {"free_disk_mb": round(free, 1), "min_free_disk_mb": self.min_free_disk_mb}
        else:
            return None
        self.refused(reason, calling_ae=request.calling_ae, peer=request.peer,
                     rejection=rejection, **facts)
        return rejection


class _Session:
    """One association's next spool file, made while the sender sends the instance (from
    its second instance on: the first one's write makes it)."""

    def __init__(self) -> None:
        self.spare: Future[SpoolFile] | None = None

    def release(self) -> None:
        """Remove the spool file made ahead and not used."""
        if self.spare is not None:
            with suppress(Exception):  # not made: nothing to remove
                self.spare.result().release()
            self.spare = None


class StoreHandler:
    """C-STORE: limits, spool, ledger, then Success; anything else is out of resources.

    The durable write starts the moment the last fragment of a request is in, into a spool
    file made while the sender was sending, and runs in a pool while the instance is
    checked; Success only once the file and its folder entry are fsynced (the entry when
    the file was made) and the ledger row is committed.
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

    def close(self) -> None:
        """Finish the writes under way and stop the pool."""
        self._pool.shutdown(wait=True)

    def _refuse(self, reason: str, comment: str) -> tuple[int, str]:
        if self.metrics is not None:
            self.metrics.instance_refused(reason)
        return STATUS_OUT_OF_RESOURCES, comment

    def store(self, session: _Session, request: AssociationRequest,
              store: StoreRequest) -> tuple[int, str | None]:
        """The status (and error comment) of one C-STORE, once its data set is kept."""
        log = get_logger(calling_ae=request.calling_ae, peer=request.peer,
                         sop_instance_uid=store.sop_instance)
        size = store.size
        if size > self.max_instance_bytes:
            log.warning("instance_too_large", size=size,
                        max_instance_bytes=int(self.max_instance_bytes))
            return self._refuse("too_large", "instance larger than the node accepts")
        free = free_disk_mb(self.spool.root)
        if free - size / MIB < self.min_free_disk_mb:
            # Refuse before the disk is full: the ledger and the jobs' outputs need room too.
            log.error("disk_low", free_disk_mb=round(free, 1),
                      min_free_disk_mb=self.min_free_disk_mb)
            return self._refuse("low_disk", "the node is short of disk")
        data = _as_file(request, store)
        spare, session.spare = session.spare, None
        written = self._pool.submit(_commit, self.spool, spare, data)
        session.spare = self._pool.submit(self.spool.reserve)
        # The checks run while the worker waits on the disk (it needs the GIL only between
        # its system calls).
        examined = examine(data, store.sop_instance, store.sop_class)
        try:
            path = written.result()
        except Exception as exc:  # noqa: BLE001 - never answer Success for an unwritten file
            log.error("spool_write_failed", error=str(exc))
            return self._refuse("spool_write_failed", "the node could not write the instance")
        try:
            registered = record(self.ledger, path, examined, request.calling_ae, request.peer,
                                len(data))
        except Exception as exc:  # noqa: BLE001
            path.unlink(missing_ok=True)
            log.error("ledger_write_failed", error=str(exc))
            return self._refuse("ledger_write_failed", "the node could not record the instance")
        self.arrived.set()
        verdict = registered.verdict
        if not verdict.accepted:
            # Kept and quarantined for the admin; the sender hears what is wrong (PS3.4 B.2).
            log.warning("instance_not_accepted", instance_id=registered.instance_id,
                        status=f"0x{verdict.status:04X}", reason=verdict.reason)
            if self.metrics is not None:
                self.metrics.instance_refused("invalid")
            return verdict.status, verdict.reason
        log.debug("instance_stored", instance_id=registered.instance_id, path=str(path))
        if self.metrics is not None:
            self.metrics.instance_received(request.calling_ae, len(data))
        return STATUS_SUCCESS, None


def _commit(spool: Spool, spare: Future[SpoolFile] | None, data: bytes) -> Path:
    """In the pool: the durable write, into the spool file made ahead if there is one."""
    return (spare.result() if spare is not None else spool.reserve()).commit(data)


def _as_file(request: AssociationRequest, store: StoreRequest) -> bytes:
    """The instance as received, in the DICOM file format, with who sent it to whom.

    The File Meta Information (PS3.10 7.1, Table 7.1-1) is encoded here rather than with
    pydicom, which takes a quarter of a millisecond per instance on the way to the fsync.
    """
    elements = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", uid_value(store.sop_class)),
        _meta_element(0x0003, b"UI", uid_value(store.sop_instance)),
        _meta_element(0x0010, b"UI", uid_value(store.transfer_syntax)),
        _meta_element(0x0012, b"UI", uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", text_value(PYNETDICOM_IMPLEMENTATION_VERSION)),
        _meta_element(0x0017, b"AE", text_value(request.calling_ae)),
        _meta_element(0x0018, b"AE", text_value(request.called_ae)),
    ))
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"".join((b"\0" * 128, b"DICM", group_length, elements, store.data_set))


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, Explicit VR Little Endian (PS3.5 7.1.2): OB has a reserved
    field and a 4-byte length, the other VRs here a 2-byte length."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _tls_facts(connection: socket.socket) -> dict[str, object]:
    """Who the client certificate says the sender is, for the audit trail (PS3.15 B.1)."""
    if not isinstance(connection, ssl.SSLSocket):
        return {}
    subject = (connection.getpeercert() or {}).get("subject", ())
    names = [pair[1] for rdn in subject for pair in rdn if pair[0] == "commonName"]
    return {"tls": connection.version(), "tls_subject": names[0] if names else None}


class _Association:
    """One connection's association, as :func:`dicomnode.store_scp.serve` asks the node."""

    def __init__(self, server: NodeServer, connection: socket.socket) -> None:
        self.server = server
        self.connection = connection
        self.request: AssociationRequest | None = None  # once established
        self.session: _Session | None = None

    def admit(self, request: AssociationRequest) -> Rejection | None:
        with self.server.lock:
            rejection = self.server.admission.check(request, self.server.active)
            if rejection is None:
                self.server.active += 1
        return rejection

    def established(self, request: AssociationRequest) -> None:
        self.request = request
        self.session = _Session()
        get_logger().info("association_established", calling_ae=request.calling_ae,
                          peer=request.peer, **_tls_facts(self.connection))

    def store(self, request: AssociationRequest, store: StoreRequest) -> tuple[int, str | None]:
        assert self.session is not None
        return self.server.store.store(self.session, request, store)

    def ended(self, how: str) -> None:
        """Release the spool file made ahead, and log how the association ended."""
        if self.session is not None:
            self.session.release()
        with self.server.lock:
            self.server.active -= 1
        if self.request is not None:
            get_logger().info(f"association_{how}", calling_ae=self.request.calling_ae,
                              peer=self.request.peer)


@dataclass
class _Served:
    """A connection being served, and its thread."""

    connection: socket.socket
    thread: threading.Thread


class NodeServer:
    """The SCP's listening socket and the connections it serves, each on its own thread."""

    def __init__(self, config: NodeConfig, admission: Admission, store: StoreHandler) -> None:
        self.admission = admission
        self.store = store
        self.lock = threading.Lock()
        self.active = 0  # associations accepted and not yet ended
        tls = config.security.tls
        self._tls = server_context(tls) if tls else None
        # An instance over the limit is refused by its size; its bytes need not be kept.
        self._settings = Settings(_supported_contexts(), config.max_pdu,
                                  int(store.max_instance_bytes), REQUEST_TIMEOUT, IDLE_TIMEOUT)
        self._listener = socket.create_server((config.host, config.port))
        self._served: dict[int, _Served] = {}
        self._thread = threading.Thread(target=self._accept, name=f"{config.ae_title}-acceptor",
                                        daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, address = self._listener.accept()
            except OSError:  # the listener was closed: shutdown
                return
            thread = threading.Thread(target=self._serve, args=(connection, address),
                                      name=f"association-{address[1]}", daemon=True)
            with self.lock:
                self._served[id(connection)] = _Served(connection, thread)
            thread.start()

    def _serve(self, connection: socket.socket, address: tuple[str, int]) -> None:
        key = id(connection)
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                connection.settimeout(REQUEST_TIMEOUT)
                try:
                    connection = self._tls.wrap_socket(connection, server_side=True)
                except OSError as exc:  # ssl.SSLError and timeouts are OSErrors
                    self.admission.refused("tls_handshake_failed",
                                           peer=f"{address[0]}:{address[1]}", error=str(exc))
                    return
                with self.lock:
                    self._served[key].connection = connection
            try:
                serve(connection, address, _Association(self, connection), self._settings)
            except Exception as exc:  # a bug ends its association, not the node
                get_logger(peer=f"{address[0]}:{address[1]}").exception(
                    "association_failed", error=str(exc))
        except OSError:
            pass  # the connection went before it could be served
        finally:
            with suppress(OSError):
                connection.close()
            with self.lock:
                self._served.pop(key, None)

    def shutdown(self) -> None:
        """Stop accepting, end every association, then let the spool writes finish."""
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        self._listener.close()
        self._thread.join(timeout=5)
        with self.lock:
            served = list(self._served.values())
        for each in served:
            with suppress(OSError):
                each.connection.shutdown(socket.SHUT_RDWR)
        for each in served:
            each.thread.join(timeout=10)
        self.store.close()

    def is_serving(self) -> bool:
        """Whether the accept loop is running: /healthz reports the SCP down otherwise."""
        return self._thread.is_alive()


def _supported_contexts() -> list[PresentationContext]:
    """Every storage SOP class with TRANSFER_SYNTAXES, and Verification."""
    contexts = [build_context(Verification)]
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        contexts.append(build_context(context.abstract_syntax, TRANSFER_SYNTAXES))
    return contexts


def start_server(
    config: NodeConfig, spool: Spool, ledger: Ledger, metrics: NodeMetrics | None = None,
    arrived: threading.Event | None = None,
) -> NodeServer:
    """Start the SCP of ``config`` in background threads and return it (call .shutdown()).

    ``arrived`` is set each time an instance's ledger row is committed.
    """
    log = get_logger()
    admission = Admission(config, spool, metrics)
    if admission.callers.accepts_any:
        log.warning("any_calling_ae_accepted",
                    hint="set security.allowed_callers to accept only known senders")
    store = StoreHandler(config, spool, ledger, metrics, arrived)
    server = NodeServer(config, admission, store)
    log.info("scp_listening", ae_title=config.ae_title, host=config.host, port=config.port,
             tls=config.security.tls is not None,
             allowed_callers=None if admission.callers.accepts_any else admission.callers.titles)
    return server
