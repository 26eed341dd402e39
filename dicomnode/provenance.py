"""Provenance: turn harmonized pixels into a derived series that says how it was made.

Follows shared/reference/dicom-provenance.md (PS3.3 C.7.6.1 General Image, C.12.1 SOP
Common, C.7.5.1 General Equipment):

- new SOPInstanceUID and SeriesInstanceUID, derived deterministically from the source UID,
  the model's sha256 and the config hash, so a re-run after a crash sends no duplicates;
  StudyInstanceUID and FrameOfReferenceUID are kept (the geometry is unchanged);
- ImageType DERIVED\\SECONDARY;
- ContributingEquipmentSequence with (109102, DCM, "Processing Equipment");
- DerivationDescription, SourceImageSequence with (121322, DCM) per instance, and
  ReferencedSeriesSequence;
- a private block (creator ``DICOMNODE HARMONIZATION 1``) with method, model id, model
  sha256, rule name and config hash.

The vendor's private groups are dropped: they hold scale factors (Philips (2005,100E)) and
acquisition details that no longer describe the new pixel values.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode import __version__
from dicomnode.assembly import AssembledAcquisition

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "DICOMNODE HARMONIZATION 1"
MAX_STORED = 65535
_UID_NAMESPACE = uuid.UUID("6b1f3c2e-8d4a-5f0e-9a7b-2c3d4e5f6a7b")  # dicomnode's own

# Elements that describe the old pixel values and would now be wrong.
_STALE_KEYWORDS = [
    "PixelData", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTSequence",
    "ModalityLUTSequence", "RescaleType", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod",
]
_STALE_TAGS = {Tag(keyword) for keyword in _STALE_KEYWORDS}

# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1).
_TYPE2_PATIENT_STUDY = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
]


@dataclass(frozen=True)
class Provenance:
    """What the node did to the series, as recorded in the derived instances."""

    method: str
    model: str
    model_sha256: str
    rule: str
    config_hash: str
    source_domain: str
    target_domain: str

    @property
    def description(self) -> str:
        return (
            f"Harmonized by dicomnode {__version__}: method {self.method}, model {self.model}"
            f" (sha256 {self.model_sha256[:12]}), {self.source_domain} to {self.target_domain},"
            f" rule {self.rule}"
        )


def config_hash(settings: object) -> str:
    """A stable sha256 of any JSON-able settings (the matched rule, for instance)."""
    canonical = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _derived_uid(source_uid: str, provenance: Provenance) -> str:
    """A UUID-derived UID (PS3.5 B.2) that is the same for the same source, model and config."""
    name = "|".join([source_uid, provenance.model_sha256, provenance.config_hash])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    return Tag(keyword), dictionary_VR(keyword)


def _element(keyword: str, value: object) -> DataElement:
    """A new element by keyword; pydicom's ``ds.Keyword = value`` does the same lookups
    and checks on every assignment, some 20 µs."""
    tag, vr = _tag_and_vr(keyword)
    return DataElement(tag, vr, value)


def _dataset(*elements: DataElement) -> Dataset:
    return Dataset({element.tag: element for element in elements})


def _code(value: str, meaning: str) -> Dataset:
    return _dataset(_element("CodeValue", value), _element("CodingSchemeDesignator", "DCM"),
                    _element("CodeMeaning", meaning))


def _contributing_equipment(provenance: Provenance, when: dt.datetime) -> Dataset:
    return _dataset(
        _element("PurposeOfReferenceCodeSequence",
                 Sequence([_code("109102", "Processing Equipment")])),
        _element("Manufacturer", "dicomnode"),
        _element("ManufacturerModelName", "dicomnode harmonization node"),
        _element("SoftwareVersions", __version__),
        _element("ContributionDateTime", when.strftime("%Y%m%d%H%M%S")),
        _element("ContributionDescription", provenance.description[:1024]),
    )


def _referenced_instance(source: Dataset) -> list[DataElement]:
    return [_element("ReferencedSOPClassUID", source.SOPClassUID),
            _element("ReferencedSOPInstanceUID", source.SOPInstanceUID)]


def _source_image(source: Dataset) -> Dataset:
    return _dataset(*_referenced_instance(source), _SOURCE_IMAGE_PURPOSE)


def window_sample(values: np.ndarray) -> np.ndarray:
    """The voxels a display window is taken from: a window needs no exact percentiles, and
    a strided million voxels spares a copy. A sample's sample is itself (stride 1)."""
    return values.reshape(-1)[:: max(1, values.size // 1_000_000)]


@dataclass(frozen=True)
class Encoding:
    """How a derived series stores its values: uint16 times ``slope``, and a display window."""

    slope: float
    centre: float
    width: float

    @classmethod
    def of(cls, top: float, pre_contrast: np.ndarray) -> Encoding:
        """For values up to ``top``; the window from the harmonized pre-contrast phase.

        The window is a default for display (its p1..p99.5); the pre-contrast is known before
        the later phases, so a series made as it arrives gets the same window.
        """
        slope = cls.slope_for(top)
        low, high = (float(v) for v in np.percentile(window_sample(pre_contrast), [1.0, 99.5]))
        return cls(slope, (low + high) / 2, max(high - low, slope))

    @staticmethod
    def slope_for(top: float) -> float:
        """The RescaleSlope that stores values up to ``top`` in uint16."""
        return top / MAX_STORED if top > 0 else 1.0

    def stored(self, values: np.ndarray) -> np.ndarray:
        """Real-world values (non-negative, at most ``top``) as stored uint16."""
        return np.rint(values / self.slope).clip(0, MAX_STORED).astype(np.uint16)


def _ds_number(value: float) -> str:
    """A DS value within its 16-character limit."""
    return f"{value:.10g}"


_PRIVATE_FIELDS = ("method", "model", "model_sha256", "rule", "config_hash", "source_domain",
                   "target_domain")


def read_provenance(ds: Dataset) -> Provenance | None:
    """The provenance a derived instance carries in its private block; None if it has none."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    values = {}
    for offset, name in enumerate(_PRIVATE_FIELDS, start=1):
        tag = block.get_tag(offset)
        values[name] = str(ds[tag].value) if tag in ds else ""
    return Provenance(**values)


def derived_series(
    assembled: AssembledAcquisition, harmonized: np.ndarray, provenance: Provenance
) -> Iterator[Dataset]:
    """One derived instance per source instance, same layout: one series per source series.

    Yields them one at a time so that a caller writing each to disk holds one slice's
    pixel bytes, not the series'. ``harmonized`` is cleaned in place (NaN and negatives to 0).
    """
    if harmonized.shape != assembled.acquisition.pixels.shape:
        raise ValueError(
            f"harmonized shape {harmonized.shape} != source {assembled.acquisition.pixels.shape}"
        )
    # In place and phase by phase (np.nan_to_num's temporaries are a series' size again).
    values = harmonized
    for phase in values:
        phase[~np.isfinite(phase)] = 0.0
        np.maximum(phase, 0.0, out=phase)
    encoding = Encoding.of(float(np.max(values)) if values.size else 0.0, values[0])
    derivation = Derivation(provenance, encoding)
    for phase, sources in enumerate(assembled.sources):
        for index, source in enumerate(sources):
            yield derivation.instance(source, encoding.stored(values[phase, index]))


class Derivation:
    """What every derived instance of one series shares: provenance, encoding and time.

    The elements that are the same in every instance (pixel encoding, window, derivation
    description, creation time, the node's contributing equipment item, the private block)
    are made once here and put, as they are, in each instance's data set: making a pydicom
    element costs some microseconds, and a 512² series has hundreds of instances of a few
    dozen such elements.
    """

    def __init__(self, provenance: Provenance, encoding: Encoding) -> None:
        self.provenance = provenance
        self.encoding = encoding
        self.when = dt.datetime.now(dt.UTC)
        self._shared = _shared_elements(provenance, encoding, self.when)

    def instance(self, source: Dataset, stored: np.ndarray) -> Dataset:
        """The derived instance of ``source`` with the stored values ``stored`` (uint16).

        Its series-wide elements are the same objects in every instance: to change one in
        a single instance, replace it (``ds[tag] = DataElement(...)``); assigning to its
        keyword would change it in all of them.
        """
        ds = _derive_one(source, self.provenance, self.when, self._shared)
        ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
        ds["PixelData"].VR = "OW"
        return ds


def _shared_elements(provenance: Provenance, encoding: Encoding,
                     when: dt.datetime) -> dict[BaseTag, DataElement]:
    """The elements of a derivation that are the same in each of its instances; none of
    them is changed once made (a derived data set holds them, not copies)."""
    ds = Dataset()
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope = _ds_number(encoding.slope)
    ds.RescaleIntercept = "0"
    ds.WindowCenter = _ds_number(encoding.centre)
    ds.WindowWidth = _ds_number(encoding.width)
    ds.DerivationDescription = provenance.description
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.ContributingEquipmentSequence = [_contributing_equipment(provenance, when)]
    # Private tags are not copied from the source, so the block is the group's first.
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    for offset, name in enumerate(_PRIVATE_FIELDS, start=1):
        block.add_new(offset, "LO", str(getattr(provenance, name))[:64])
    return {tag: ds[tag] for tag in ds.keys()}  # noqa: SIM118 - a Dataset's keys are tags


# The same in every derived instance, which holds it, not a copy (see Derivation.instance).
_SOURCE_IMAGE_PURPOSE = _element("PurposeOfReferenceCodeSequence", Sequence(
    [_code("121322", "Source image for image processing operation")]))

# Old archives omit Type 2 attributes; present-but-empty is what the IOD asks for.
_TYPE2_EMPTY = {Tag(keyword): DataElement(Tag(keyword), dictionary_VR(Tag(keyword)), "")
                for keyword in _TYPE2_PATIENT_STUDY}


def _derive_one(source: Dataset, provenance: Provenance, when: dt.datetime,
                shared: dict[BaseTag, DataElement]) -> Dataset:
    # Raw (not yet decoded) elements are immutable and shared as they are; a decoded one is
    # copied, or assigning to it would rewrite the source's UIDs. Filling the dict first
    # and making the data set of it spares pydicom's checks of each assignment.
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        tag: element if isinstance(element, RawDataElement) else copy.copy(element)
        for tag, element in source.items()
        if tag not in _STALE_TAGS and not tag.is_private
    }
    for tag, empty in _TYPE2_EMPTY.items():
        elements.setdefault(tag, empty)
    elements.update(shared)
    sop_instance_uid = _derived_uid(str(source.SOPInstanceUID), provenance)
    source_series = str(source.SeriesInstanceUID)
    suffix = f" [harmonized {provenance.method}]"
    # MR Image module (C.8.3.1.1.1) requires value 3; OTHER where the source had none.
    image_type = list(source.get("ImageType", []))[2:] or ["OTHER"]
    # Common Instance Reference module (C.12.2): the series and the instance within it.
    referenced_series = _dataset(
        _element("SeriesInstanceUID", source_series),
        _element("ReferencedInstanceSequence", Sequence([_dataset(*_referenced_instance(source))])))
    for element in (
        _element("SOPInstanceUID", sop_instance_uid),
        _element("SeriesInstanceUID", _derived_uid(source_series, provenance)),
        _element("SeriesNumber", int(source.get("SeriesNumber") or 0) + 1000),
        _element("SeriesDescription",
                 (str(source.get("SeriesDescription", "")) + suffix)[-64:].strip()),
        _element("ImageType", ["DERIVED", "SECONDARY", *image_type]),
        _element("SourceImageSequence", Sequence([_source_image(source)])),
        _element("ReferencedSeriesSequence", Sequence([referenced_series])),
    ):
        elements[element.tag] = element
    if earlier := list(source.get("ContributingEquipmentSequence", [])):
        # The source's own processing history first, then this node's step.
        equipment = _element("ContributingEquipmentSequence",
                             Sequence([*earlier, _contributing_equipment(provenance, when)]))
        elements[equipment.tag] = equipment
    ds = Dataset(elements)
    if source.original_encoding == (False, True):
        # The source's undecoded elements are already explicit VR little endian, the output's
        # encoding: saying so lets pydicom write them as they are instead of decoding and
        # re-encoding every one (about half the time of writing a derived series).
        ds.set_original_encoding(False, True, source.original_character_set)
    ds.file_meta = FileMetaDataset(_dataset(
        _element("MediaStorageSOPClassUID", source.SOPClassUID),
        _element("MediaStorageSOPInstanceUID", sop_instance_uid),
        _element("TransferSyntaxUID", ExplicitVRLittleEndian)))
    return ds
