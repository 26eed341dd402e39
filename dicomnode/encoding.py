"""What the node encodes and decodes by hand: the padding of a few values (PS3.5 6.2), the
user information of its A-ASSOCIATE requests and answers (PS3.7 D.3.3), the PDUs its storage
SCU and SCP read (PS3.8 9.3.1), and the command sets (PS3.7 6.3, Implicit VR Little Endian)
and PDV items (PS3.8 9.3.5.1) of the DIMSE messages they exchange."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)

_UserItem = (MaximumLengthNotification | ImplementationClassUIDNotification
             | ImplementationVersionNameNotification)


def uid_value(uid: str) -> bytes:
    """A UI value: padded to even length with NUL."""
    value = uid.encode("ascii", "replace")
    return value + b"\0" * (len(value) % 2)


def text_value(text: str) -> bytes:
    """An SH or AE value: padded to even length with a space."""
    value = text.encode("ascii", "replace")
    return value + b" " * (len(value) % 2)


# A PDU larger than this is not read: the peer ignores the maximum length it was told.
LARGEST_PDU = 64 << 20


def read_pdu(connection: socket.socket) -> tuple[int, bytes]:
    """The next PDU on ``connection``: its type and its bytes, 6-byte header included (PS3.8
    9.3.1). EOFError when the peer closed the connection, ValueError for a PDU over
    LARGEST_PDU bytes; the socket's own errors (a timeout) as it raises them."""
    header = _read_exactly(connection, 6)
    kind, length = struct.unpack(">BxI", header)
    if length > LARGEST_PDU:
        raise ValueError(f"a PDU of {length} bytes")
    return kind, header + _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = connection.recv_into(view[received:])
        if not count:
            raise EOFError("connection closed by the peer")
        received += count
    return bytes(buffer)


def command_set(*elements: tuple[int, bytes]) -> bytes:
    """A command set of (element, value) pairs given in ascending order, led by its group
    length (0000,0000)."""
    body = b"".join(_command_element(element, value) for element, value in elements)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def command_fields(command: bytes) -> dict[int, bytes]:
    """A command set's values by element number; ValueError if it is malformed."""
    fields = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            raise ValueError("a command element header cut short")
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if group != 0x0000 or offset + 8 + length > len(command):
            raise ValueError(f"a malformed command element ({group:04X},{element:04X})")
        fields[element] = command[offset + 8:offset + 8 + length]
        offset += 8 + length
    return fields


def pdv_items(pdu: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(presentation context id, message control header, fragment) of each PDV item of a
    whole P-DATA-TF PDU, its 6-byte header included; ValueError for an item that does not
    fit."""
    offset = 6
    while offset < len(pdu):
        if offset + 6 > len(pdu):
            raise ValueError("a PDV item header cut short")
        (length,) = struct.unpack_from(">I", pdu, offset)
        end = offset + 4 + length
        if length < 2 or end > len(pdu):
            raise ValueError(f"a PDV item of {length} bytes in {len(pdu) - offset} left")
        yield pdu[offset + 4], pdu[offset + 5], pdu[offset + 6:end]
        offset = end


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def user_information(max_pdu: int) -> list[_UserItem]:
    """The user information items of the node's A-ASSOCIATE-RQ and -AC: the largest PDU it
    takes, and its implementation class UID and version name (pynetdicom's)."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [maximum, implementation, version]
