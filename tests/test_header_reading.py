"""The node's own header reader gives what pydicom's gives, and finds every cut."""

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag

from dicomnode.header_reading import LARGE_VALUE, Truncated, read_elements, read_header
from dicomnode.intake import _INTAKE_TAGS
from tests.samples import SAMPLES

# GE and Philips (sequences of undefined length), Siemens, an enhanced multiframe, a
# segmentation, and an implicit VR GE Genesis file (left to pydicom).
SAMPLE_FILES = sorted(path for path in SAMPLES.rglob("*.dcm"))
ONE_PER_FOLDER = sorted({path.parent: path for path in SAMPLE_FILES}.values())


def _same_elements(ours: Dataset, pydicoms: Dataset) -> None:
    assert list(ours.keys()) == list(pydicoms.keys())
    for tag in pydicoms.keys():  # noqa: SIM118 - a Dataset iterates its elements
        mine, theirs = ours.get_item(tag, keep_deferred=True), pydicoms.get_item(
            tag, keep_deferred=True)
        assert type(mine) is type(theirs), tag
        if isinstance(theirs, RawDataElement):
            assert mine == theirs, tag  # VR, length, value (None if deferred), position
        else:
            assert mine.value == theirs.value, tag
    assert ours.file_meta == pydicoms.file_meta
    assert ours.original_encoding == pydicoms.original_encoding
    assert ours.original_character_set == pydicoms.original_character_set


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda path: path.name)
def test_a_header_is_read_as_pydicom_reads_it(path: Path) -> None:
    ours, pydicoms = read_header(path), dcmread(path, defer_size=LARGE_VALUE)
    _same_elements(ours, pydicoms)
    assert ours.PixelData == pydicoms.PixelData  # the deferred read


def _with_long_header(folder: Path) -> Path:
    """A sample with a private value that makes its header longer than the first read."""
    ds = dcmread(ONE_PER_FOLDER[0])
    block = ds.private_block(0x0029, "DICOMNODE TEST", create=True)
    block.add_new(0x01, "OB", b"\x01" * (LARGE_VALUE - 2))
    block.add_new(0x02, "LO", "after the long value")
    path = folder / "long.dcm"
    ds.save_as(path)
    return path


def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path: Path) -> None:
    path = _with_long_header(tmp_path)
    ours = read_header(path)
    _same_elements(ours, dcmread(path, defer_size=LARGE_VALUE))
    assert ours[0x0029, 0x1002].value == "after the long value"


@pytest.mark.parametrize("path", ONE_PER_FOLDER, ids=lambda path: path.parent.name)
def test_the_intake_elements_are_pydicoms(path: Path) -> None:
    data = path.read_bytes()
    ours = read_elements(data, _INTAKE_TAGS)
    if ours is None:  # another transfer syntax than Explicit VR Little Endian
        assert dcmread(path).file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1"
        return
    pydicoms = dcmread(BytesIO(data), specific_tags=_INTAKE_TAGS)
    for tag in _INTAKE_TAGS:
        assert (tag in ours) == (tag in pydicoms), tag
        if tag in pydicoms:
            assert ours[tag].value == pydicoms[tag].value, tag


def _element_ends(data: bytes, start: int) -> set[int]:
    """Where pydicom finds each top-level element to end."""
    stream = BytesIO(data)
    stream.seek(start)
    ends = set()
    for _ in data_element_generator(stream, False, True):
        ends.add(stream.tell())
    return ends


@pytest.mark.parametrize("path", ONE_PER_FOLDER, ids=lambda path: path.parent.name)
def test_every_cut_is_found(path: Path) -> None:
    """Cut anywhere after the file meta (within it, the syntax may be unknown) but between
    two elements (where a file looks whole), the file is never taken for whole."""
    data = path.read_bytes()
    if read_elements(data, _INTAKE_TAGS) is None:
        pytest.skip("not Explicit VR Little Endian")
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    ends = _element_ends(data, meta_end)
    cuts = [cut for cut in range(meta_end + 1, len(data), max(1, (len(data) - meta_end) // 120))
            if cut not in ends]
    assert len(cuts) > 60
    for cut in cuts:
        with pytest.raises(Truncated, match="truncated"):
            read_elements(data[:cut], _INTAKE_TAGS)


def test_a_value_cut_short_is_named() -> None:
    path = next(p for p in ONE_PER_FOLDER if "siemens" in p.parent.name)
    data = path.read_bytes()
    with pytest.raises(Truncated, match=r"element \(7FE0,0010\) declares \d+ bytes, the file "
                                        r"holds 100"):
        read_elements(data[:len(data) - (len(dcmread(path).PixelData) - 100)], _INTAKE_TAGS)


def test_an_unknown_vr_is_malformed() -> None:
    path = next(p for p in ONE_PER_FOLDER if "siemens" in p.parent.name)
    data = bytearray(path.read_bytes())
    element = dcmread(path).get_item(Tag("StudyInstanceUID"))
    assert isinstance(element, RawDataElement)
    position = element.value_tell - 8  # its header
    data[position + 4:position + 6] = b"zz"
    with pytest.raises(Truncated, match="no known VR"):
        read_elements(bytes(data), [Tag("StudyInstanceUID")])
