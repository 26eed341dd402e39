"""Test input series: the real scanner files copied from shared/dicom-samples (licenses in
tests/data), and studies of the virtual scanner."""

from pathlib import Path

from pydicom import Dataset, dcmread

from evaluation.virtual_scanner.cohort import simulate_cohort

SAMPLES = Path(__file__).parent / "data" / "dicom-samples"


def sample_files(folder: str) -> list[Path]:
    return sorted(p for p in (SAMPLES / folder).iterdir() if p.suffix == ".dcm")


def read_sample(folder: str) -> list[Dataset]:
    return [dcmread(path) for path in sample_files(folder)]


def simulated_ge_study(folder: Path, seed: int, slices: int) -> list[Path]:
    """The DICOM files, in path order, of one virtual patient's ge-1.5t study (64 x 64)."""
    simulate_cohort(folder, patients=1, scanners=["ge-1.5t"], seed=seed, matrix=64,
                    slices=slices, progress=False)
    return sorted(folder.rglob("dicom/**/*.dcm"))
