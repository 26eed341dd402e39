"""A storage SCU association driven on the caller's thread: the node's delivery to DICOM peers.

pynetdicom's :class:`~pynetdicom.association.Association` runs two reactor threads per
association that look for work every millisecond: about 5 % of a core for each open
association, idle or not, on the development VM, on top of passing every PDU through its
queues and state machine (the issue 5 note of 2026-11-26, 9th session, has the figures).
The node streams whole series over two associations at once while it receives and
harmonizes on the same cores, and that polling and the queues' latency were most of its
sending.

:class:`StoreAssociation` negotiates with pynetdicom's own PDU classes (A-ASSOCIATE-RQ/AC/RJ,
PS3.8 9.3.2-9.3.4) and then writes each C-STORE request's P-DATA-TF PDUs (PS3.8 9.3.5, Annex
E) and reads its response on the calling thread: nothing runs between C-STOREs, and a
response is read the moment it arrives. The data set goes out as the file holds it, after its
File Meta Information (PS3.10 7.1), in the transfer syntax the file meta names.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from dicomnode.encoding import (
    command_fields,
    command_set,
    pdv_items,
    read_pdu,
    uid_value,
    user_information,
)

Context = tuple[str, str]  # (SOP class UID, transfer syntax UID)

# PS3.7 Annex A.2.1: the DICOM application context.
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# PS3.8 9.3.2.2: at most 128 presentation contexts, odd ids 1-255.
MAX_CONTEXTS = 128
# What the node accepts in a P-DATA-TF from the peer (only responses: small).
_MAX_PDU_RECEIVED = 131072
# PS3.8 Table 9-1: PDU types.
_AC, _RJ, _P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
_RELEASE_RQ_PDU = struct.pack(">BxI4x", _RELEASE_RQ, 4)
_RELEASE_RP_PDU = struct.pack(">BxI4x", _RELEASE_RP, 4)
# Bytes of P-DATA gathered into one send: few system calls, bounded memory for large files.
_SEND_BATCH = 1 << 20
# PS3.7 E.2: message control header bits: 1 = command, 2 = last fragment.
_COMMAND, _LAST = 0x01, 0x02
# PS3.7 Table 9.3-1 / E.1-1: C-STORE-RQ and C-STORE-RSP command fields.
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_DATA_SET_PRESENT = 0x0000  # PS3.7 E.1-1: anything but 0x0101


class AssociationError(RuntimeError):
    """The peer or the connection failed: rejected, aborted, closed or silent."""


@dataclass(frozen=True)
class StoreResponse:
    """A C-STORE-RSP's status (PS3.4 Table B.2-1) and its error comment, if any."""

    status: int
    comment: str | None = None


@dataclass(frozen=True)
class InstanceFile:
    """A DICOM file to send: what its File Meta Information says, and where its data set
    starts (PS3.10 7.1)."""

    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    offset: int

    @classmethod
    def read(cls, path: Path) -> InstanceFile:
        """Raises ValueError for a file without File Meta Information."""
        try:
            meta, offset = split_dataset(path)
        except InvalidDicomError:
            meta, offset = Dataset(), 0
        if "TransferSyntaxUID" not in meta or "MediaStorageSOPClassUID" not in meta:
            raise ValueError(f"{path}: not a DICOM file with File Meta Information")
        return cls(path, str(meta.MediaStorageSOPClassUID),
                   str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), offset)

    @property
    def context(self) -> Context:
        return (self.sop_class, self.transfer_syntax)


class StoreAssociation:
    """One association to a storage SCP, as its requestor; a C-STORE at a time.

    Not thread-safe: each sending thread opens its own.
    """

    def __init__(self, host: str, port: int, calling_ae: str, called_ae: str,
                 contexts: Iterable[Context], timeout: float) -> None:
        wanted = sorted(set(contexts))
        if not 0 < len(wanted) <= MAX_CONTEXTS:
            raise ValueError(f"{len(wanted)} presentation contexts: 1 to {MAX_CONTEXTS} allowed")
        self.where = f"{called_ae}@{host}:{port}"
        self._timeout = timeout
        self._message_id = 0
        try:
            self._socket = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AssociationError(f"{self.where}: cannot connect ({_describe(exc)})") from exc
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.accepted, self.peer_max_pdu = self._negotiate(calling_ae, called_ae, wanted)
        except BaseException:
            self._socket.close()
            raise

    def store(self, instance: InstanceFile) -> StoreResponse:
        """Send ``instance``; its response.

        Raises ValueError when the association has no context for the file's SOP class and
        transfer syntax, and AssociationError when the association fails (it is closed then).
        """
        context_id = self.accepted.get(instance.context)
        if context_id is None:
            raise ValueError(f"{self.where}: no accepted presentation context for "
                             f"{instance.context}")
        self._message_id = self._message_id % 0xFFFF + 1
        command = _store_command(instance.sop_class, instance.sop_instance, self._message_id)
        try:
            self._send_part(context_id, BytesIO(command), len(command), _COMMAND)
            with instance.path.open("rb") as handle:
                length = os.fstat(handle.fileno()).st_size - instance.offset
                handle.seek(instance.offset)
                self._send_part(context_id, handle, length, 0)
            return self._response()
        except (OSError, AssociationError) as exc:
            self.abort()
            if isinstance(exc, AssociationError):
                raise
            raise AssociationError(f"{self.where}: {_describe(exc)}") from exc

    def usable(self) -> bool:
        """Whether the peer has not ended the association meanwhile (an idle association
        may be released or aborted by the peer at any time); one that has is closed now."""
        if self._socket.fileno() < 0:
            return False
        try:
            readable, _, _ = select.select([self._socket], [], [], 0)
            if not readable:
                return True
            kind, _ = self._read_pdu()  # nothing is due: it ends the association
            if kind == _RELEASE_RQ:
                self._socket.sendall(_RELEASE_RP_PDU)
        except (OSError, AssociationError):
            pass
        self._socket.close()
        return False

    def release(self) -> None:
        """End the association politely (A-RELEASE, PS3.8 7.2); close it in any case."""
        if self._socket.fileno() < 0:
            return
        try:
            self._socket.sendall(_RELEASE_RQ_PDU)
            while self._read_pdu()[0] not in (_RELEASE_RP, _ABORT):
                pass
        except (OSError, AssociationError):
            pass
        finally:
            self._socket.close()

    def abort(self) -> None:
        """End the association at once (A-ABORT, PS3.8 7.3) and close it."""
        if self._socket.fileno() < 0:
            return
        try:
            self._socket.sendall(A_ABORT_RQ().encode())
        except OSError:
            pass
        finally:
            self._socket.close()

    def _negotiate(self, calling_ae: str, called_ae: str,
                   wanted: list[Context]) -> tuple[dict[Context, int], int]:
        request = A_ASSOCIATE()
        request.application_context_name = _APPLICATION_CONTEXT
        request.calling_ae_title = calling_ae
        request.called_ae_title = called_ae
        by_id: dict[int, Context] = {}
        for index, (sop_class, syntax) in enumerate(wanted):
            context = PresentationContext()
            context.context_id = 2 * index + 1
            context.abstract_syntax = sop_class
            context.transfer_syntax = [syntax]
            request.presentation_context_definition_list.append(context)
            by_id[2 * index + 1] = (sop_class, syntax)
        request.user_information = [*user_information(_MAX_PDU_RECEIVED)]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(request)
        try:
            self._socket.sendall(pdu.encode())
            kind, body = self._read_pdu()
        except OSError as exc:
            raise AssociationError(f"{self.where}: {_describe(exc)} during association") from exc
        if kind == _RJ:
            rejection = A_ASSOCIATE_RJ()
            rejection.decode(body)
            raise AssociationError(
                f"{self.where}: association rejected ({rejection.result_str}, "
                f"{rejection.source_str}: {rejection.reason_str})")
        if kind != _AC:
            raise AssociationError(f"{self.where}: association aborted (PDU type {kind})")
        accept = A_ASSOCIATE_AC()
        accept.decode(body)
        accepted = {by_id[item.context_id]: item.context_id
                    for item in accept.presentation_context
                    if item.result_reason == 0 and item.context_id in by_id}
        info = accept.user_information
        return accepted, (info.maximum_length or 0) if info else 0

    def _send_part(self, context_id: int, stream: BinaryIO, length: int, command: int) -> None:
        """The ``length`` bytes of one message part (command or data set) read from
        ``stream``, as PDVs of one P-DATA-TF each (PS3.8 9.3.5), handed to the kernel a
        batch of PDUs at a time."""
        step = self.peer_max_pdu - 6 if self.peer_max_pdu else max(length, 1)
        batch: list[bytes] = []
        batched = 0
        remaining = length
        while True:
            fragment = stream.read(min(step, remaining))
            if len(fragment) < min(step, remaining):  # cut short while being sent
                raise AssociationError(
                    f"{self.where}: the file ended {remaining - len(fragment)} bytes early")
            remaining -= len(fragment)
            control = command | (_LAST if remaining == 0 else 0)
            batch += (struct.pack(">BxIIBB", _P_DATA, len(fragment) + 6, len(fragment) + 2,
                                  context_id, control), fragment)
            batched += len(fragment)
            if remaining == 0 or batched >= _SEND_BATCH:
                self._socket.sendall(b"".join(batch))
                batch, batched = [], 0
            if remaining == 0:
                return

    def _response(self) -> StoreResponse:
        command = b""
        while True:
            kind, body = self._read_pdu()
            if kind == _ABORT:
                raise AssociationError(f"{self.where}: association aborted by the peer")
            if kind != _P_DATA:
                raise AssociationError(f"{self.where}: unexpected PDU type {kind}")
            try:
                for _context, control, fragment in pdv_items(body):
                    if not control & _COMMAND:
                        raise AssociationError(
                            f"{self.where}: a data set in a C-STORE response")
                    command += fragment
                    if control & _LAST:
                        return self._store_response(command_fields(command))
            except ValueError as exc:
                raise AssociationError(f"{self.where}: a malformed response ({exc})") from exc

    def _store_response(self, fields: dict[int, bytes]) -> StoreResponse:
        def number(element: int) -> int | None:
            value = fields.get(element)
            return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None

        if number(0x0100) != _C_STORE_RSP or number(0x0120) != self._message_id:
            raise AssociationError(f"{self.where}: not the response to this C-STORE")
        status = number(0x0900)
        if status is None:
            raise AssociationError(f"{self.where}: a C-STORE response without a status")
        comment = fields.get(0x0902)
        return StoreResponse(status, comment.decode("ascii", "replace").strip(" \0")
                             if comment else None)

    def _read_pdu(self) -> tuple[int, bytes]:
        try:
            return read_pdu(self._socket)
        except TimeoutError as exc:
            raise AssociationError(
                f"{self.where}: no answer within {self._timeout:g} s") from exc
        except EOFError as exc:
            raise AssociationError(f"{self.where}: connection closed by the peer") from exc
        except ValueError as exc:
            raise AssociationError(f"{self.where}: {exc}") from exc


def _store_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian (PS3.7 9.3.1.1, Table 9.3-1)."""
    return command_set(
        (0x0002, uid_value(sop_class)),
        (0x0100, struct.pack("<H", _C_STORE_RQ)),
        (0x0110, struct.pack("<H", message_id)),
        (0x0700, struct.pack("<H", 0)),  # priority: medium
        (0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
        (0x1000, uid_value(sop_instance)),
    )


def _describe(exc: OSError) -> str:
    """The system's words for a socket or file error ("Connection refused", "timed out")."""
    return exc.strerror or str(exc) or exc.__class__.__name__
