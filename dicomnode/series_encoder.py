"""Part 10 file bytes of a series' derived instances, each distinct element encoded once.

The derived instances of a series share most of their elements (patient, study, equipment,
protocol, provenance); UIDs, positions, times and pixels differ. pydicom encodes an element
in some 15 µs, so encoding a derived 512² instance element by element took longer than
deriving its pixels by table. :class:`SeriesEncoder` keeps the bytes of every element it
has encoded, keyed by everything those bytes depend on, and lays out the file as pydicom's
``dcmwrite`` does: 128-byte preamble, ``DICM``, the File Meta Information (PS3.10 7.1), then
the data set's elements in tag order (PS3.5 7.1), without retired group lengths. An element
not seen before, and the File Meta Information, are encoded by pydicom itself; a data set
pydicom would have to re-encode (not explicit VR little endian as decoded, or with another
character set) is written by pydicom whole.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicomnode.encoding import uid_value

_PREFIX = b"\x00" * 128 + b"DICM"
_EXPLICIT_LITTLE = (False, True)  # (implicit VR, little endian)
# Decoded values at most this long are remembered; longer ones (pixels) are written as
# they come, since hashing them would cost what encoding them does.
_LARGEST_REMEMBERED = 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GROUP_LENGTH = BaseTag(0x00020000)
# Element headers, Explicit VR Little Endian (PS3.5 7.1.2): a 2-byte length, or for the
# VRs of EXPLICIT_VR_LENGTH_32 two reserved bytes and a 4-byte length.
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_HEADER = struct.Struct("<HH2s2xL")
_LONG_VRS = frozenset(EXPLICIT_VR_LENGTH_32)
_ITEM = struct.Struct("<HHL")  # (FFFE,E000) and its length (PS3.5 7.5)
_SEQUENCE_END = _ITEM.pack(0xFFFE, 0xE0DD, 0)

_Key = tuple[object, ...]


class SeriesEncoder:
    """Encodes derived instances as Part 10 files (explicit VR little endian), remembering
    each element's bytes for the next instance of the series.

    One encoder serves one series (or one job's series): the memory it keeps grows with the
    number of distinct elements, a handful per instance.
    """

    def __init__(self) -> None:
        self._encoded: dict[_Key, bytes] = {}

    def file_bytes(self, ds: Dataset) -> bytes:
        """``ds`` as the bytes ``ds.save_as(..., enforce_file_format=True)`` writes, for a
        data set with file meta whose transfer syntax is explicit VR little endian."""
        if (ds.original_encoding != _EXPLICIT_LITTLE
                or ds.original_character_set != ds._character_set):
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            return buffer.getvalue()
        return b"".join((_PREFIX, self._file_meta(ds.file_meta),
                         *self._elements(ds, ds.get("SpecificCharacterSet"))))

    def _file_meta(self, meta: FileMetaDataset) -> bytes:
        """The File Meta Information (PS3.10 7.1) as pydicom's ``write_file_meta_info``
        writes it: completed by ``validate_file_meta``, and led by its group length."""
        validate_file_meta(meta, enforce_standard=True)
        body = b"".join(self._element(meta.get_item(tag), None)
                        for tag in sorted(meta.keys()) if tag != _GROUP_LENGTH)
        return _SHORT_HEADER.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body

    def _elements(self, ds: Dataset, charset: object) -> list[bytes]:
        """A data set's (or item's) encoded elements in tag order (PS3.5 7.1), without
        retired group lengths (PS3.5 7.2)."""
        return [self._element(ds.get_item(tag), charset) for tag in sorted(ds.keys())
                if tag.element != 0 or tag.group <= 6]

    def _element(self, element: DataElement | RawDataElement, charset: object) -> bytes:
        if isinstance(element, RawDataElement):
            if (not element.is_implicit_VR and element.is_little_endian
                    and element.length != _UNDEFINED_LENGTH and isinstance(element.value, bytes)):
                # What pydicom writes for a raw value: the value as it was read.
                return _header(element.tag, str(element.VR), len(element.value)) + element.value
        elif element.VR == "SQ" and isinstance(element.value, Sequence):
            return self._sequence(element, charset)
        elif (element.VR == "UI" and isinstance(element.value, str)
                and element.value.isascii()):
            value = uid_value(element.value)
            return _header(element.tag, "UI", len(value)) + value
        key = _key(element, charset)
        if key is None:
            return _encode(element, charset)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = _encode(element, charset)
        return encoded

    def _sequence(self, element: DataElement, charset: object) -> bytes:
        """A sequence as pydicom writes it: each item of defined length unless it was read
        as undefined (PS3.5 7.5.1), the sequence's own length as it was."""
        items = []
        for item in element.value:
            body = b"".join(self._elements(item, item.get("SpecificCharacterSet", charset)))
            if getattr(item, "is_undefined_length_sequence_item", False):
                items += [_ITEM.pack(0xFFFE, 0xE000, _UNDEFINED_LENGTH), body,
                          _ITEM.pack(0xFFFE, 0xE00D, 0)]
            else:
                items += [_ITEM.pack(0xFFFE, 0xE000, len(body)), body]
        value = b"".join(items)
        if element.is_undefined_length:
            return _header(element.tag, "SQ", _UNDEFINED_LENGTH) + value + _SEQUENCE_END
        return _header(element.tag, "SQ", len(value)) + value


def _header(tag: BaseTag, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _LONG_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return _SHORT_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _encode(element: DataElement | RawDataElement, charset: object) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element, charset)  # type: ignore[arg-type]
    return buffer.getvalue()


def _key(element: DataElement | RawDataElement, charset: object) -> _Key | None:
    """What the element's encoded bytes depend on, or None to encode it every time."""
    charset_key = tuple(charset) if isinstance(charset, MultiValue) else charset
    if isinstance(element, RawDataElement):
        # Written as they are: the raw value and its header (the file offset aside).
        return ("raw", element.tag, element.VR, element.length, element.value,
                element.is_implicit_VR, element.is_little_endian, charset_key)
    value = _value_key(element.value, charset)
    if value is None:
        return None
    return ("decoded", element.tag, element.VR, element.is_undefined_length, value,
            charset_key)


def _value_key(value: object, charset: object) -> object | None:
    """What pydicom writes of a decoded value: for numbers kept as strings (DS, IS) the
    original string if any, else the text; for a sequence, its items' elements. None for
    long bytes and the values not listed."""
    if isinstance(value, Sequence):
        items = [_item_key(item, charset) for item in value]
        return None if any(item is None for item in items) else ("items", *items)
    if isinstance(value, (list, MultiValue)):
        values = [_value_key(item, charset) for item in value]
        return None if any(item is None for item in values) else ("many", *values)
    if isinstance(value, bytes):
        return value if len(value) <= _LARGEST_REMEMBERED else None
    if isinstance(value, (str, int, float)):
        return (type(value), getattr(value, "original_string", None), str(value))
    return None if value is not None else ("none",)


def _item_key(item: Dataset, parent_charset: object) -> _Key | None:
    """A sequence item is written with its own character set, else its parent's."""
    charset = item.get("SpecificCharacterSet", parent_charset)
    keys = []
    for tag in sorted(item.keys()):
        key = _key(item.get_item(tag), charset)
        if key is None:
            return None
        keys.append(key)
    return (getattr(item, "is_undefined_length_sequence_item", False), *keys)
