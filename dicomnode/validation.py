"""What an instance earns at intake: Success, or the PS3.4 status that says what is wrong.

The C-STORE statuses (PS3.4 Table B.2-1): 0xA900 "Data Set does not match SOP Class",
0xC000 "Cannot understand". An instance that fails is still written to the spool and gets a
quarantine job with the reason, so an admin sees exactly what the sender sent; the sender
hears the failure and does not count the instance as stored.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicomnode.header_reading import Truncated, read_elements

STATUS_SUCCESS = 0x0000
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

# PS3.5 9.1: components of digits without leading zeros, dot-separated, at most 64 chars.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

# The tags a verdict needs (read at intake by read_whole).
CHECKED_TAGS = [
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows",
    "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "PixelData",
]


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE = 128 + 4  # the spool always writes the preamble and "DICM"


def read_whole(data: bytes, tags: Collection[BaseTag]) -> Dataset:
    """The data set's elements ``tags`` (and its file meta), read in one pass that also
    checks that every top-level element is whole.

    pydicom reads a cut-short file without error (it keeps the short value, or stops), so
    every top-level element's declared length is compared with what the file holds, and
    :class:`Truncated` names the first that falls short. Explicit VR Little Endian, nearly
    every instance, is read by :func:`dicomnode.header_reading.read_elements`; a deflated
    data set (compressed as a whole) is left to pydicom's inflate, which reports a cut itself.
    """
    if (ds := read_elements(data, tags)) is not None:
        return ds
    stream = BytesIO(data)
    stream.seek(_PREAMBLE)
    try:
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, _vr, _length: tag.group != 2)
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
        if syntax == DeflatedExplicitVRLittleEndian:
            return dcmread(BytesIO(data), specific_tags=list(tags))
        wanted = set(tags)
        found: dict[BaseTag, DataElement | RawDataElement] = {}
        elements = data_element_generator(stream, syntax.is_implicit_VR,
                                          syntax.is_little_endian)
        for element in elements:
            length = getattr(element, "length", _UNDEFINED_LENGTH)
            value = getattr(element, "value", None)
            if (length != _UNDEFINED_LENGTH and isinstance(value, bytes)
                    and len(value) < length):
                raise Truncated(f"truncated: element {element.tag} declares {length} bytes, "
                                f"the file holds {len(value)}")
            if element.tag in wanted:
                found[element.tag] = element
    except (EOFError, OSError, AttributeError) as exc:
        raise Truncated(f"truncated or malformed: {exc}") from exc
    except ValueError as exc:
        if isinstance(exc, Truncated):
            raise
        raise Truncated(f"truncated or malformed: {exc}") from exc
    if stream.tell() != len(data):  # the generator stops quietly inside a cut header
        raise Truncated(
            f"truncated: the file ends inside an element header at byte {stream.tell()}")
    ds = Dataset(found)
    ds.file_meta = FileMetaDataset(meta)
    return ds


@dataclass(frozen=True)
class Verdict:
    status: int
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == STATUS_SUCCESS


def _valid_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def _pixel_problem(ds: Dataset, compressed: bool) -> str | None:
    if "PixelData" not in ds:
        return "an image without PixelData (7FE0,0010)"
    if compressed:
        return None  # encapsulated fragments: their size says nothing about the frame size
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = (rows * columns * int(ds.get("SamplesPerPixel", 1) or 1)
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated))
        needed = (bits + 7) // 8  # 1-bit segmentations pack eight pixels a byte
    except (AttributeError, TypeError, ValueError):
        return "Rows, Columns or BitsAllocated is missing or not a number"
    actual = len(ds.PixelData)
    # Odd lengths are padded to even (PS3.5 7.1.1).
    if actual not in (needed, needed + 1):
        return (f"PixelData holds {actual} bytes but Rows {rows} x Columns {columns} "
                f"needs {needed}")
    return None


def check(
    ds: Dataset, affected_sop_class: str | None, affected_sop_instance: str | None,
    transfer_syntax: str,
) -> Verdict:
    """The verdict for one decoded header (with PixelData) against its C-STORE request."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(ds.get(keyword, "") or "")
        if not value:
            return Verdict(STATUS_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        if not _valid_uid(value):
            return Verdict(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                           f"{keyword} {value[:80]!r} is not a valid UID")
    if affected_sop_class and str(ds.SOPClassUID) != affected_sop_class:
        return Verdict(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                       f"SOPClassUID {ds.SOPClassUID} is not the C-STORE's {affected_sop_class}")
    if affected_sop_instance and str(ds.SOPInstanceUID) != affected_sop_instance:
        return Verdict(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                       f"SOPInstanceUID {ds.SOPInstanceUID} is not the C-STORE's "
                       f"{affected_sop_instance}")
    if "Image Storage" in UID(str(ds.SOPClassUID)).name or "Rows" in ds:
        problem = _pixel_problem(ds, UID(transfer_syntax).is_compressed)
        if problem:
            return Verdict(STATUS_DOES_NOT_MATCH_SOP_CLASS, problem)
    return Verdict(STATUS_SUCCESS)
