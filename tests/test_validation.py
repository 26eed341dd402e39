"""The intake verdicts of PS3.4 B.2.3 on the bad-input corpus, case by case."""

from collections.abc import Callable

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from dicomnode.validation import (
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_SUCCESS,
    check,
)
from tests.samples import read_sample

MR = "1.2.840.10008.5.1.4.1.1.4"


def _slice() -> Dataset:
    return read_sample("siemens-prisma-3t-prone")[0]


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_delete("PixelData"), "an image without PixelData"),
        (_set("Rows", 65535), "PixelData holds 131072 bytes but Rows 65535 x Columns 256"),
        (_set("SOPInstanceUID", "../../etc/passwd"), "is not a valid UID"),
        (_set("SeriesInstanceUID", "1.2.03"), "is not a valid UID"),
        (_set("StudyInstanceUID", "1." + "2" * 70), "is not a valid UID"),
        (_delete("StudyInstanceUID"), "StudyInstanceUID is missing"),
        (_set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), "is not the C-STORE's"),
    ],
)
def test_bad_instances_do_not_match_their_sop_class(
    change: Callable[[Dataset], None], reason: str
) -> None:
    ds = _slice()
    affected_instance = str(ds.SOPInstanceUID)
    change(ds)
    if "SOPInstanceUID" in ds and ds.SOPInstanceUID != affected_instance:
        affected_instance = str(ds.SOPInstanceUID)
    verdict = check(ds, MR, affected_instance, ExplicitVRLittleEndian)
    assert verdict.status == STATUS_DOES_NOT_MATCH_SOP_CLASS
    assert reason in (verdict.reason or "")


def test_a_good_slice_passes_and_compressed_pixels_are_not_measured() -> None:
    ds = _slice()
    assert check(ds, MR, str(ds.SOPInstanceUID), ExplicitVRLittleEndian).status == STATUS_SUCCESS
    ds.PixelData = b"\0" * 10  # fragments of a compressed frame have any length
    assert check(ds, MR, str(ds.SOPInstanceUID), JPEGLSLossless).status == STATUS_SUCCESS


def test_a_mismatched_instance_uid_is_refused() -> None:
    ds = _slice()
    verdict = check(ds, MR, "1.2.3", ExplicitVRLittleEndian)
    assert verdict.status == STATUS_DOES_NOT_MATCH_SOP_CLASS
    assert "is not the C-STORE's 1.2.3" in (verdict.reason or "")


def test_a_one_bit_segmentation_packs_its_pixels() -> None:
    (seg,) = read_sample("ispy1-breast-seg")
    verdict = check(seg, str(seg.SOPClassUID), str(seg.SOPInstanceUID), ExplicitVRLittleEndian)
    assert verdict.status == STATUS_SUCCESS, verdict.reason
