"""A storage SCP association served on its connection's own thread: the node's receiving.

pynetdicom passes each PDU through its DUL thread, a state machine and queues to an
association reactor that looks for complete messages once a millisecond, decodes every
command set with pydicom and validates each UID it sets: on the development VM a bare
pynetdicom SCP that stored nothing spent 1.7-2.45 ms of CPU on each 512² C-STORE, the node
with pynetdicom 3.75-4.7 ms, and the node with this SCP, which writes and fsyncs each file,
checks it and records it, 1.95-2.45 ms (the issue 5 note of the 10th session has the
figures).

:func:`serve` reads the A-ASSOCIATE-RQ (PS3.8 9.3.2) with pynetdicom's PDU classes, lets the
node's policy reject it (A-ASSOCIATE-RJ, 9.3.4) or answers A-ASSOCIATE-AC with the
presentation contexts pynetdicom's ``negotiate_as_acceptor`` accepts, then reads P-DATA-TF
PDUs (9.3.5), gathers each message's command and data set fragments (PS3.7 Annex E) and
hands each complete request to the node: one message at a time, answered before the next
is read. A-RELEASE-RQ is answered with A-RELEASE-RP (9.3.6); an A-ABORT (9.3.8), a closed
connection, a silent peer or a PDU that breaks the protocol ends the association.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomnode.encoding import (
    command_fields,
    command_set,
    pdv_items,
    read_pdu,
    text_value,
    uid_value,
    user_information,
)

# PS3.7 Annex A.2.1: the DICOM application context.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# PS3.8 Table 9-1: PDU types.
_RQ, _P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 1, 4, 5, 6, 7
_RELEASE_RP_PDU = struct.pack(">BxI4x", _RELEASE_RP, 4)
# PS3.8 Table 9-26: A-ABORT source 2 (service provider), reasons 0 (not specified), 1 and
# 2 (unrecognized PDU, unexpected PDU), 6 (invalid PDU parameter value).
_PROVIDER = 2
_NOT_SPECIFIED, _UNRECOGNIZED_PDU, _UNEXPECTED_PDU, _INVALID_PARAMETER = 0, 1, 2, 6
# PS3.8 Table 9-21: A-ASSOCIATE-RJ permanent, service-user, application context name not
# supported.
_REJECT_CONTEXT_NAME = (0x01, 0x01, 0x02)
# PS3.7 E.2: message control header bits: 1 = command, 2 = last fragment.
_COMMAND, _LAST = 0x01, 0x02
# PS3.7 Table E.1-1: command fields, and "no data set" in CommandDataSetType.
_C_STORE_RQ, _C_ECHO_RQ = 0x0001, 0x0030
_RESPONSE = 0x8000
_NO_DATA_SET = 0x0101
# PS3.7 C.4.2: "Refused: SOP Class not supported"; C.4.4: "Unrecognized operation".
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_UNRECOGNIZED_OPERATION = 0x0211
# Command sets are a few hundred bytes (PS3.7 9.3); a larger one is not kept.
_LARGEST_COMMAND = 64 << 10


class ProtocolError(Exception):
    """The peer broke the protocol; ``reason`` is the A-ABORT reason (PS3.8 Table 9-26)."""

    def __init__(self, message: str, reason: int = _UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AssociationRequest:
    """Who asks: the AE titles of the A-ASSOCIATE-RQ and the connection's address."""

    calling_ae: str
    called_ae: str
    host: str
    port: int

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"


Rejection = tuple[int, int, int]  # A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4


@dataclass(frozen=True)
class StoreRequest:
    """A whole C-STORE-RQ: its SOP class and instance, and its data set as sent, in the
    transfer syntax of its presentation context; ``size`` bytes of it, which ``data_set``
    holds unless they were more than the acceptor keeps (then it is empty)."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data_set: bytes
    size: int


class Node(Protocol):
    """What the node decides while :func:`serve` runs an association."""

    def admit(self, request: AssociationRequest) -> Rejection | None:
        """None to accept the association, else why it is rejected."""

    def established(self, request: AssociationRequest) -> None:
        """The association is accepted."""

    def store(self, request: AssociationRequest, store: StoreRequest) -> tuple[int, str | None]:
        """Keep a C-STORE's data set; the status (PS3.4 B.2) and an error comment."""

    def ended(self, how: str) -> None:
        """The admitted association ended: "released" or "aborted"."""


@dataclass(frozen=True)
class Settings:
    """The acceptor's side of the negotiation and its patience."""

    contexts: list[PresentationContext]  # what it supports, each with its transfer syntaxes
    max_pdu: int
    max_data_set: int  # larger data sets are read to their end but not kept in memory
    request_timeout: float  # for the A-ASSOCIATE-RQ once connected (pynetdicom's ACSE timeout)
    idle_timeout: float  # between PDUs once associated (pynetdicom's network timeout)


def serve(connection: socket.socket, address: tuple[str, int], node: Node,
          settings: Settings) -> None:
    """Run one association on ``connection`` until it ends. Once ``node`` admits it,
    ``node.ended`` is called exactly once: with "released" before the A-RELEASE-RP goes,
    else with "aborted" (by the peer, a closed connection, a timeout or an error)."""
    link = _Link(connection)
    admitted = False
    try:
        connection.settimeout(settings.request_timeout)
        kind, pdu = link.read_pdu()
        if kind != _RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {kind}")
        primitive = _association_request(pdu)
        request = AssociationRequest(str(primitive.calling_ae_title).strip(),
                                     str(primitive.called_ae_title).strip(), *address[:2])
        rejection = (_REJECT_CONTEXT_NAME
                     if str(primitive.application_context_name) != APPLICATION_CONTEXT
                     else node.admit(request))
        if rejection is not None:
            link.send(_reject_pdu(rejection))
            link.drain(settings.request_timeout)
            return
        admitted = True
        accepted, _roles = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, settings.contexts)
        link.send(_accept_pdu(primitive, accepted, settings))
        node.established(request)
        connection.settimeout(settings.idle_timeout)
        contexts = {int(cx.context_id or 0): cx for cx in accepted if cx.result == 0}
        for message in _messages(link, contexts, settings.max_data_set):
            link.send(_answer(request, node, contexts[message.context], message))
        admitted = False
        node.ended("released")
        link.send(_RELEASE_RP_PDU)
    except ProtocolError as exc:
        link.abort(exc.reason)
    except TimeoutError:
        link.abort(_NOT_SPECIFIED)
    except (OSError, EOFError):
        pass
    finally:
        if admitted:
            node.ended("aborted")


def _association_request(pdu: bytes) -> A_ASSOCIATE:
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(pdu)
        return rq.to_primitive()
    except (ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
        raise ProtocolError(f"a malformed A-ASSOCIATE-RQ ({exc})", _INVALID_PARAMETER) from exc


@dataclass(frozen=True)
class _Message:
    """One request as received: its context, command fields, and data set (None when it
    has none; empty when it was larger than the acceptor keeps) and that data set's size."""

    context: int
    fields: dict[int, bytes]
    data_set: bytes | None
    size: int


def _messages(link: _Link, contexts: dict[int, PresentationContext],
              max_data_set: int) -> Iterator[_Message]:
    """Each request of the association; ends when the peer asks for release. A data set
    over ``max_data_set`` bytes is read to its end but not kept."""
    command = bytearray()
    fields: dict[int, bytes] | None = None
    data = bytearray()
    size = 0
    while True:
        kind, pdu = link.read_pdu()
        if kind == _RELEASE_RQ:
            return
        if kind == _ABORT:
            raise EOFError("aborted by the peer")
        if kind != _P_DATA:
            raise ProtocolError(f"unexpected PDU type {kind} in an association",
                                _UNRECOGNIZED_PDU if kind > _ABORT else _UNEXPECTED_PDU)
        try:
            items = list(pdv_items(pdu))
        except ValueError as exc:
            raise ProtocolError(str(exc), _INVALID_PARAMETER) from exc
        for context, control, fragment in items:
            if context not in contexts:
                raise ProtocolError(f"P-DATA on presentation context {context}, which was "
                                    "not accepted", _INVALID_PARAMETER)
            if control & _COMMAND:
                command += fragment
                if len(command) > _LARGEST_COMMAND:
                    raise ProtocolError(f"a command set over {_LARGEST_COMMAND} bytes",
                                        _INVALID_PARAMETER)
                if not control & _LAST:
                    continue
                fields = _fields(bytes(command))
                command.clear()
                if _number(fields, 0x0800) == _NO_DATA_SET:
                    yield _Message(context, fields, None, 0)
                    fields = None
            elif fields is None:
                raise ProtocolError("a data set fragment before its command")
            else:
                size += len(fragment)
                if size <= max_data_set:
                    data += fragment
                else:
                    data.clear()  # too large: read to its end, answered by its size
                if control & _LAST:
                    yield _Message(context, fields, bytes(data), size)
                    data.clear()
                    fields, size = None, 0


def _answer(request: AssociationRequest, node: Node, context: PresentationContext,
            message: _Message) -> bytes:
    """The response PDU to one request."""
    fields = message.fields
    command = _number(fields, 0x0100)
    sop_class = _text(fields.get(0x0002, b""))
    sop_instance = _text(fields.get(0x1000, b""))
    comment = None
    if command == _C_ECHO_RQ:
        status = 0x0000
    elif command != _C_STORE_RQ or message.data_set is None:
        status = STATUS_UNRECOGNIZED_OPERATION
    elif sop_class != context.abstract_syntax:
        status = STATUS_SOP_CLASS_NOT_SUPPORTED
        comment = "SOP class is not the presentation context's"
    else:
        assert context.transfer_syntax
        status, comment = node.store(request, StoreRequest(
            sop_class, sop_instance, str(context.transfer_syntax[0]), message.data_set,
            message.size))
    return _response_pdu(message.context, command | _RESPONSE, _number(fields, 0x0110),
                         sop_class, sop_instance, status, comment)


def _response_pdu(context_id: int, command: int, message_id: int, sop_class: str,
                  sop_instance: str, status: int, comment: str | None) -> bytes:
    """A response command set (PS3.7 9.3.1.2, 9.3.5.2) as one P-DATA-TF PDU."""
    elements = [
        (0x0002, uid_value(sop_class)),
        (0x0100, struct.pack("<H", command)),
        (0x0120, struct.pack("<H", message_id)),
        (0x0800, struct.pack("<H", _NO_DATA_SET)),
        (0x0900, struct.pack("<H", status)),
    ]
    if comment:
        elements.append((0x0902, text_value(comment[:64])))
    if sop_instance:
        elements.append((0x1000, uid_value(sop_instance)))
    encoded = command_set(*elements)
    item = struct.pack(">IBB", len(encoded) + 2, context_id, _COMMAND | _LAST) + encoded
    return struct.pack(">BxI", _P_DATA, len(item)) + item


def _accept_pdu(request: A_ASSOCIATE, accepted: list[PresentationContext],
                settings: Settings) -> bytes:
    answer = A_ASSOCIATE()
    answer.application_context_name = APPLICATION_CONTEXT
    answer.calling_ae_title = request.calling_ae_title
    answer.called_ae_title = request.called_ae_title
    answer.result = 0x00
    answer.presentation_context_definition_results_list = accepted
    answer.user_information = [*user_information(settings.max_pdu)]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(answer)
    return bytes(pdu.encode())


def _reject_pdu(rejection: Rejection) -> bytes:
    answer = A_ASSOCIATE()
    answer.result, answer.result_source, answer.diagnostic = rejection
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(answer)
    return bytes(pdu.encode())


class _Link:
    """The connection's PDUs: read whole, sent whole."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU's type and its bytes, 6-byte header included."""
        try:
            return read_pdu(self.connection)
        except ValueError as exc:
            raise ProtocolError(str(exc), _INVALID_PARAMETER) from exc

    def send(self, pdu: bytes) -> None:
        self.connection.sendall(pdu)

    def abort(self, reason: int) -> None:
        """Send A-ABORT (service provider, ``reason``) if the connection still takes it."""
        with suppress(OSError):
            self.send(struct.pack(">BxI2xBB", _ABORT, 4, _PROVIDER, reason))

    def drain(self, timeout: float) -> None:
        """After A-ASSOCIATE-RJ: wait, at most ``timeout`` s, for the peer to close (PS3.8
        9.1.4: the requestor closes), so the rejection is read before the connection goes."""
        self.connection.settimeout(timeout)
        with suppress(OSError):
            while self.connection.recv(4096):
                pass


def _fields(command: bytes) -> dict[int, bytes]:
    try:
        return command_fields(command)
    except ValueError as exc:
        raise ProtocolError(f"a malformed command set ({exc})", _INVALID_PARAMETER) from exc


def _number(fields: dict[int, bytes], element: int) -> int:
    """A US command field; a missing or short one breaks the protocol."""
    value = fields.get(element, b"")
    if len(value) != 2:
        raise ProtocolError(f"command element (0000,{element:04X}) missing or not US",
                            _INVALID_PARAMETER)
    return int(struct.unpack("<H", value)[0])


def _text(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii", "replace")


