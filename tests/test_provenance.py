"""Derived series: new identity, provenance tags, faithful pixels, and still valid DICOM."""

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from dicomnode.assembly import assemble
from dicomnode.provenance import PRIVATE_CREATOR, PRIVATE_GROUP, Provenance, derived_series
from dicomnode.series_encoder import SeriesEncoder
from tests.peers import dciodvfy_errors, have
from tests.samples import read_sample

PROVENANCE = Provenance(
    method="histogram", model="histogram-ge-3t_to_siemens-3t", model_sha256="ab" * 32,
    rule="ge-3t", config_hash="cd" * 32, source_domain="ge-3t", target_domain="siemens-3t",
)


def test_derived_instances_carry_the_standard_provenance() -> None:
    assembled = assemble(read_sample("ge-signa-architect-3t-multiphase"))
    harmonized = assembled.acquisition.pixels * 2.5 + 7
    derived = list(derived_series(assembled, harmonized, PROVENANCE))
    assert len(derived) == 100
    source = assembled.sources[3][4]
    ds = derived[3 * 10 + 4]
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    purpose = ds.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    reference = ds.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert "histogram-ge-3t_to_siemens-3t" in ds.DerivationDescription
    assert ds.SeriesDescription.endswith("[harmonized histogram]")
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert block[0x03].value == PROVENANCE.model_sha256
    assert block[0x04].value == "ge-3t"
    assert not any(elem.tag.is_private and elem.tag.group != PRIVATE_GROUP for elem in ds)
    # Pixels come back within one quantization step of the harmonized values.
    restored = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(restored, harmonized[3, 4], atol=float(ds.RescaleSlope))
    assert len({d.SeriesInstanceUID for d in derived}) == 1


def test_derived_uids_are_deterministic_so_reruns_send_no_duplicates() -> None:
    assembled = assemble(read_sample("philips-achieva-3t-dynamics"))
    pixels = assembled.acquisition.pixels
    first = list(derived_series(assembled, pixels, PROVENANCE))
    again = list(derived_series(assembled, pixels, PROVENANCE))
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    other_model = Provenance(**{**PROVENANCE.__dict__, "model_sha256": "ef" * 32})
    changed = list(derived_series(assembled, pixels, other_model))
    assert first[0].SOPInstanceUID != changed[0].SOPInstanceUID
    # The vendor's private scale slope no longer describes the pixels: it must be gone.
    assert (0x2005, 0x100E) not in first[0]


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
@pytest.mark.parametrize(
    "folder",
    ["ge-signa-architect-3t-multiphase", "philips-achieva-3t-dynamics",
     "ge-genesis-signa-1.5t-gauss", "siemens-prisma-3t-prone"],
)
def test_derivation_adds_no_dciodvfy_error(folder: str, tmp_path: Path) -> None:
    """Real files carry their own errors; the derived file must not add any."""
    datasets = read_sample(folder)
    assembled = assemble(datasets)
    derived = list(derived_series(assembled, assembled.acquisition.pixels, PROVENANCE))
    source_path, derived_path = tmp_path / "source.dcm", tmp_path / "derived.dcm"
    source = next(d for d in datasets if d.SOPInstanceUID == derived[0].SourceImageSequence[0]
                  .ReferencedSOPInstanceUID)
    source.save_as(source_path)
    # As the node writes it.
    derived_path.write_bytes(SeriesEncoder().file_bytes(derived[0]))
    added = set(dciodvfy_errors(derived_path)) - set(dciodvfy_errors(source_path))
    assert not added


def test_an_earlier_processing_step_is_kept_before_the_nodes() -> None:
    """A source that was itself derived (re-harmonized, or post-processed at the scanner)
    keeps its contributing equipment, and the node's step comes after it; the instances
    without one get the node's step alone."""
    datasets = read_sample("ge-signa-architect-3t-multiphase")
    earlier = Dataset()
    earlier.Manufacturer = "GE MEDICAL SYSTEMS"
    earlier.ContributionDescription = "scanner reformat"
    datasets[0].ContributingEquipmentSequence = [earlier]
    assembled = assemble(datasets)
    derived = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID): ds
               for ds in derived_series(assembled, assembled.acquisition.pixels, PROVENANCE)}
    steps = derived[str(datasets[0].SOPInstanceUID)].ContributingEquipmentSequence
    assert [step.Manufacturer for step in steps] == ["GE MEDICAL SYSTEMS", "dicomnode"]
    others = derived[str(datasets[1].SOPInstanceUID)].ContributingEquipmentSequence
    assert [step.Manufacturer for step in others] == ["dicomnode"]
