"""The series encoder writes exactly the bytes pydicom's own writer does."""

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from dicomnode.assembly import assemble
from dicomnode.header_reading import read_header
from dicomnode.provenance import derived_series
from dicomnode.series_encoder import SeriesEncoder
from tests.samples import sample_files
from tests.test_provenance import PROVENANCE


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("reader", [dcmread, read_header])
@pytest.mark.parametrize(
    "folder",
    ["ge-signa-architect-3t-multiphase", "philips-achieva-3t-dynamics",
     "siemens-prisma-3t-prone", "ge-genesis-signa-1.5t-gauss"],
)
def test_every_derived_instance_is_encoded_as_pydicom_encodes_it(
        folder: str, reader: Callable[[Path], Dataset]) -> None:
    """One encoder for the whole series: every instance after the first reuses elements
    encoded for earlier ones, and must still come out byte for byte as pydicom writes it
    (the GE Genesis file is implicit VR, which pydicom writes whole). The sources are read
    by pydicom and by the node's own reader, as production reads them."""
    assembled = assemble([reader(path) for path in sample_files(folder)])
    encoder = SeriesEncoder()
    derived = list(derived_series(assembled, assembled.acquisition.pixels, PROVENANCE))
    for ds in derived:
        assert encoder.file_bytes(ds) == _pydicom_bytes(ds)


def _instance(**values: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    # As a data set decoded from an explicit VR little endian file, as derived ones are.
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


@pytest.mark.parametrize(("first", "second"), [
    # The same number written as two strings: the file keeps each as given.
    ({"SliceThickness": "1.0"}, {"SliceThickness": "1"}),
    ({"EchoNumbers": "01"}, {"EchoNumbers": "1"}),
    # The same text in two character sets: other bytes.
    ({"SpecificCharacterSet": "ISO_IR 100", "InstitutionName": "Clínica"},
     {"SpecificCharacterSet": "ISO_IR 192", "InstitutionName": "Clínica"}),
    # The same item element under the parent's two character sets.
    ({"SpecificCharacterSet": "ISO_IR 100", "InstitutionName": "Clínica",
      "ReferringPhysicianName": "Müller"},
     {"SpecificCharacterSet": "ISO_IR 192", "InstitutionName": "Clínica",
      "ReferringPhysicianName": "Müller"}),
])
def test_elements_equal_in_value_but_not_in_bytes_are_not_confused(
        first: dict[str, object], second: dict[str, object]) -> None:
    encoder = SeriesEncoder()
    for values in (first, second, first):
        ds = _instance(**values)
        item = Dataset()
        item.InstitutionName = values.get("InstitutionName", "x")
        ds.ContributingEquipmentSequence = [item]
        assert encoder.file_bytes(ds) == _pydicom_bytes(ds)
