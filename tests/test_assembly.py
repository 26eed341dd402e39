"""Phase order and grouping on real vendor layouts (shared/dicom-samples)."""

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.assembly import (
    ACQUISITION_KEY_TAGS,
    AssemblyError,
    acquisition_key,
    assemble,
    group_acquisitions,
    stored_values,
    unsupported_reason,
)
from harmonizers.domain import ScannerDomain
from tests.samples import read_sample, sample_files


def test_ge_multiphase_series_is_ordered_by_temporal_position() -> None:
    datasets = read_sample("ge-signa-architect-3t-multiphase")
    assembled = assemble(list(reversed(datasets)))
    acquisition = assembled.acquisition
    assert acquisition.pixels.shape == (10, 10, 64, 64)
    assert acquisition.domain == ScannerDomain("GE", 3.0)
    for phase, sources in enumerate(assembled.sources):
        assert {int(ds.TemporalPositionIdentifier) for ds in sources} == {phase + 1}
        positions = [float(ds.SliceLocation) for ds in sources]
        assert positions == sorted(positions) or positions == sorted(positions, reverse=True)
    assert list(acquisition.phase_times_s) == sorted(acquisition.phase_times_s)


def test_philips_dynamics_in_one_series_are_told_apart_by_trigger_time() -> None:
    datasets = read_sample("philips-achieva-3t-dynamics")
    assembled = assemble(datasets)
    trigger = [[float(ds.TriggerTime) for ds in phase] for phase in assembled.sources]
    assert len(trigger) == 3
    assert all(len(set(times)) == 1 for times in trigger)
    assert [t[0] for t in trigger] == sorted(t[0] for t in trigger)
    assert assembled.acquisition.domain == ScannerDomain("PHILIPS", 3.0)


def test_per_phase_series_are_joined_into_one_acquisition() -> None:
    multiphase = read_sample("ge-signa-architect-3t-multiphase")
    expected = assemble(multiphase).acquisition.pixels
    per_phase = read_sample("ge-signa-architect-3t-multiphase")
    series_uids = {tpi: generate_uid() for tpi in range(1, 11)}
    for ds in per_phase:
        ds.SeriesInstanceUID = series_uids[int(ds.TemporalPositionIdentifier)]
        ds.SeriesNumber = 100 + int(ds.TemporalPositionIdentifier)
        del ds.TemporalPositionIdentifier
    (group,) = group_acquisitions(per_phase)
    assembled = assemble(group)
    assert len(assembled.series_uids) == 10
    np.testing.assert_array_equal(assembled.acquisition.pixels, expected)


def test_an_instance_sent_twice_counts_once() -> None:
    datasets = read_sample("philips-achieva-3t-dynamics")
    resent = read_sample("philips-achieva-3t-dynamics")[:5]
    assembled = assemble(datasets + resent)
    assert assembled.acquisition.pixels.shape == (3, 9, 64, 64)
    used = {id(ds) for phase in assembled.sources for ds in phase}
    assert all(id(ds) in used for ds in resent)


def test_a_phase_with_missing_slices_is_refused() -> None:
    datasets = read_sample("philips-achieva-3t-dynamics")[:-1]
    with pytest.raises(AssemblyError, match="repeat unevenly"):
        assemble(datasets)


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("ispy1-breast-seg", "not an MR image (Modality SEG"),
        ("enhanced-mr/siemens-vida-3t", "Enhanced MR (multi-frame)"),
        ("ge-genesis-signa-1.5t-gauss", None),
        ("siemens-prisma-3t-prone", None),
    ],
)
def test_what_cannot_be_harmonized_says_why(folder: str, reason: str | None) -> None:
    found = unsupported_reason(read_sample(folder)[0])
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_missing_manufacturer_or_field_is_a_stated_reason() -> None:
    ds = read_sample("ge-genesis-signa-1.5t-gauss")[0]
    assert unsupported_reason(ds) is None
    del ds.MagneticFieldStrength
    assert "MagneticFieldStrength (0018,0087) is missing" in str(unsupported_reason(ds))
    ds.MagneticFieldStrength = "15000"
    ds.Manufacturer = ""
    assert unsupported_reason(ds) == "Manufacturer (0008,0070) is missing"


@pytest.mark.parametrize("folder", ["ge-signa-architect-3t-multiphase", "siemens-prisma-3t-prone",
                                    "philips-achieva-3t-dynamics"])
@pytest.mark.parametrize("signed", [False, True])
def test_stored_values_are_what_pydicom_decodes(folder: str, signed: bool) -> None:
    ds = read_sample(folder)[0]
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, int(signed)
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, (int(ds.Rows), int(ds.Columns)), dtype=np.uint16)
    ds.PixelData = values.tobytes()
    np.testing.assert_array_equal(stored_values(ds), ds.pixel_array)
    assert stored_values(ds).dtype == ds.pixel_array.dtype
    ds.BitsStored, ds.HighBit = 12, 11  # partial bits: pydicom's decoder, not the bytes
    np.testing.assert_array_equal(stored_values(ds), ds.pixel_array)


def test_the_acquisition_key_joins_phases_and_parts_other_geometries() -> None:
    per_phase = read_sample("ge-signa-architect-3t-multiphase")
    for ds in per_phase:
        ds.SeriesInstanceUID = f"1.2.3.{ds.TemporalPositionIdentifier}"
    keys = {acquisition_key(ds) for ds in per_phase}
    assert len(keys) == 1 and keys != {""}
    other = per_phase[0].copy()
    other.Rows = 128
    assert acquisition_key(other) not in keys
    not_mr = per_phase[0].copy()
    not_mr.Modality = "CT"
    assert acquisition_key(not_mr) == ""
    # Intake reads only ACQUISITION_KEY_TAGS; the key must come out the same.
    partial = dcmread(sample_files("ge-signa-architect-3t-multiphase")[0],
                      specific_tags=ACQUISITION_KEY_TAGS)
    assert acquisition_key(partial) in keys
