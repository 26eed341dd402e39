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

from io import BytesIO

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

_PREFIX = b"\x00" * 128 + b"DICM"
_EXPLICIT_LITTLE = (False, True)  # (implicit VR, little endian)
# Decoded values at most this long are remembered; longer ones (pixels) are written as
# they come, since hashing them would cost what encoding them does.
_LARGEST_REMEMBERED = 1024

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
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        charset = ds.get("SpecificCharacterSet")
        parts = [_PREFIX, meta.getvalue()]
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:  # retired group length (PS3.5 7.2)
                continue
            parts.append(self._element(tag, ds.get_item(tag), charset))
        return b"".join(parts)

    def _element(self, tag: BaseTag, element: DataElement | RawDataElement,
                 charset: object) -> bytes:
        key = _key(element, charset)
        if key is None:
            return _encode(element, charset)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = _encode(element, charset)
        return encoded


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
