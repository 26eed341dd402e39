"""dicomnode-train end to end: phantom DICOM folders in, a verified model folder out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from harmonizers.acquisition import Acquisition
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.registry import load_model
from harmonizers.train import main
from tests.test_harmonizer_histogram import source_scan, target_scan

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
VENDORS = {"GE": ("GE MEDICAL SYSTEMS", "1.5"), "SIEMENS": ("SIEMENS", "3")}


def write_dicom(acq: Acquisition, folder: Path, vendor: str) -> None:
    """One multiphase series (GE style: TemporalPositionIdentifier), uint16 with a slope."""
    folder.mkdir(parents=True)
    manufacturer, field = VENDORS[vendor]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slope = float(acq.pixels.max()) / 60000
    stored = np.round(acq.pixels / slope).astype(np.uint16)
    for phase in range(acq.n_phases):
        for z in range(acq.pixels.shape[1]):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.Modality, ds.Manufacturer, ds.MagneticFieldStrength = "MR", manufacturer, field
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.InstanceNumber = phase * 100 + z + 1
            ds.TemporalPositionIdentifier = phase + 1
            ds.AcquisitionTime = f"1200{int(acq.phase_times_s[phase]) // 60:02d}"
            ds.ImagePositionPatient = [0.0, 0.0, z * acq.spacing_mm[0]]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = list(acq.spacing_mm[1:])
            ds.SliceThickness = acq.spacing_mm[0]
            ds.Rows, ds.Columns = acq.pixels.shape[2:]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
            ds.RepetitionTime, ds.FlipAngle = acq.repetition_time_ms, acq.flip_angle_deg
            ds.PixelData = stored[phase, z].tobytes()
            ds.save_as(folder / f"{phase:02d}_{z:03d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Acquisition]]:
    root = tmp_path_factory.mktemp("train")
    acqs = [source_scan(400, 0.7), source_scan(401, 2.2), target_scan(402), target_scan(403)]
    for index, acq in enumerate(acqs):
        side, vendor = ("source", "GE") if index < 2 else ("target", "SIEMENS")
        write_dicom(acq, root / side / f"patient{index}" / "dce", vendor)
    return root / "source", root / "target", acqs


def test_train_writes_verified_model(
    folders: tuple[Path, Path, list[Acquisition]], tmp_path: Path
) -> None:
    source, target, acqs = folders
    argv = ["histogram", "--source", str(source), "--target", str(target),
            "--out", str(tmp_path / "histogram-ge-1.5t_to_siemens-3t")]
    assert main(argv) == 0
    loaded = load_model("histogram", "histogram-ge-1.5t_to_siemens-3t", root=tmp_path)
    card = loaded.card
    assert (card["source_domain"], card["target_domain"]) == ("ge-1.5t", "siemens-3t")
    assert card["training_command"] == "dicomnode-train " + " ".join(argv)
    assert "2 acquisitions" in card["training_data"] and card["date"]
    # What train read from DICOM fits the same model as the in-memory phantoms, up to the
    # 16-bit quantization.
    direct = HistogramHarmonizer.fit(acqs[:2], acqs[2:])
    assert isinstance(loaded.harmonizer, HistogramHarmonizer)
    np.testing.assert_allclose(loaded.harmonizer.source_landmarks, direct.source_landmarks,
                               atol=1e-3)
    np.testing.assert_allclose(loaded.harmonizer.target_range, direct.target_range, rtol=1e-3)


def test_train_refuses_mixed_domains(
    folders: tuple[Path, Path, list[Acquisition]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, target, _ = folders
    argv = ["histogram", "--source", str(source.parent), "--target", str(target),
            "--out", str(tmp_path / "m")]
    assert main(argv) == 1
    assert "source acquisitions mix scanner domains: ge-1.5t, siemens-3t" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_refuses_empty_folder(
    folders: tuple[Path, Path, list[Acquisition]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, target, _ = folders
    argv = ["histogram", "--source", str(tmp_path), "--target", str(target),
            "--out", str(tmp_path / "m")]
    assert main(argv) == 1
    assert "holds no harmonizable DCE acquisition" in capsys.readouterr().err
