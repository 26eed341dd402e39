"""The real scanner files copied from shared/dicom-samples (licenses in tests/data)."""

from pathlib import Path

from pydicom import Dataset, dcmread

SAMPLES = Path(__file__).parent / "data" / "dicom-samples"


def sample_files(folder: str) -> list[Path]:
    return sorted(p for p in (SAMPLES / folder).iterdir() if p.suffix == ".dcm")


def read_sample(folder: str) -> list[Dataset]:
    return [dcmread(path) for path in sample_files(folder)]
