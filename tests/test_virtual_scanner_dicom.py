"""The simulated cohort on disk: layout, vendor headers, geometry, truth and dciodvfy."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from evaluation.cli import main
from evaluation.virtual_scanner import cohort
from evaluation.virtual_scanner.cohort import patient_seed, render_patient, simulate_cohort
from evaluation.virtual_scanner.dicom_writer import field_strength_text
from evaluation.virtual_scanner.profiles import load_profile
from tests.peers import dciodvfy_errors, have
from tests.samples import sample_files

SCANNERS = ["ge-1.5t", "ge-3t", "siemens-1.5t", "siemens-3t", "philips-1.5t", "philips-3t"]
MATRIX, SLICES = 64, 12


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "out"
    rc = main(["simulate", "--out", str(out), "--patients", "1", "--scanners",
               ",".join(SCANNERS), "--seed", "7", "--matrix", str(MATRIX), "--slices",
               str(SLICES), "--reference", "siemens-3t", "--no-progress"])
    assert rc == 0
    return out


def _series(study: Path) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for f in sorted((study / "dicom").glob("*/*.dcm")):
        out[f.parent.name].append(pydicom.dcmread(f))
    return out


def test_layout_and_summary(cohort_dir: Path) -> None:
    summary = json.loads((cohort_dir / "summary.json").read_text())
    assert summary["scanners"] == SCANNERS and len(summary["studies"]) == 6
    for s in summary["studies"]:
        study = cohort_dir / s["path"]
        files = list((study / "dicom").glob("*/*.dcm"))
        assert len(files) == s["files"] == SLICES * load_profile(s["scanner"]).phases
        assert all(len(f.parent.name) == 3 and len(f.stem) == 4 for f in files)
        assert (study / "truth" / "truth.json").is_file()
        assert (study / "truth" / "truth.npz").is_file()
    assert not list(cohort_dir.parent.glob(".*tmp"))  # the temporary folder was renamed


def test_vendor_series_layouts(cohort_dir: Path) -> None:
    root = cohort_dir / "SYNTH-P0001"
    ge = _series(root / "ge-1.5t")
    assert len(ge) == 1  # multiphase: one series
    (images,) = ge.values()
    assert {int(d.TemporalPositionIdentifier) for d in images} == set(range(1, 7))
    assert {int(d.NumberOfTemporalPositions) for d in images} == {6}
    assert {d[0x0021, 0x104F].value for d in images} == {SLICES}
    assert images[0][0x0021, 0x0010].value == "GEMS_RELA_01"
    first = sorted(images, key=lambda d: int(d.InstanceNumber))[:SLICES]
    assert {int(d.TemporalPositionIdentifier) for d in first} == {1}  # phase-major order

    assert len(_series(root / "ge-3t")) == 6  # per-phase series
    siemens = _series(root / "siemens-3t")
    assert len(siemens) == load_profile("siemens-3t").phases  # one series per measurement
    for images in siemens.values():
        assert len({int(d.AcquisitionNumber) for d in images}) == 1
        assert "TemporalPositionIdentifier" not in images[0]

    philips = _series(root / "philips-1.5t")
    assert len(philips) == 1
    (images,) = philips.values()
    by_number = sorted(images, key=lambda d: int(d.InstanceNumber))
    # Dynamics interleaved per slice and told apart by TriggerTime only.
    triggers = [float(d.TriggerTime) for d in by_number[:6]]
    assert triggers == sorted(triggers) and len(set(triggers)) == 6
    assert "TemporalPositionIdentifier" not in images[0]
    assert images[0][0x2005, 0x0010].value == "Philips MR Imaging DD 001"
    assert float(images[0][0x2005, 0x100E].value) > 0


def test_headers_are_realistic_and_synthetic(cohort_dir: Path) -> None:
    root = cohort_dir / "SYNTH-P0001"
    expected_field = {"ge-1.5t": "1.5", "ge-3t": "3.0", "siemens-1.5t": "1.494",
                      "siemens-3t": "3", "philips-1.5t": "1.5", "philips-3t": "3"}
    study_uids = set()
    for scanner in SCANNERS:
        profile = load_profile(scanner)
        series = _series(root / scanner)
        images = [d for s in series.values() for d in s]
        d = images[0]
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert d.SyntheticData == "YES"
        assert str(d.PatientName) == "SYNTHETIC^P0001" and d.PatientID.startswith("SYNTH")
        assert d.Manufacturer == profile.manufacturer
        assert d.ManufacturerModelName == profile.model_name
        assert str(d.MagneticFieldStrength) == expected_field[scanner]
        assert float(d.RepetitionTime) == profile.repetition_time_ms
        assert float(d.FlipAngle) == profile.flip_angle_deg
        assert d.PatientPosition in ("FFP", "HFP") and d.BodyPartExamined == "BREAST"
        assert d.ContrastBolusAgent and d.BitsStored == 16 and d.PixelRepresentation == 0
        assert "RescaleSlope" in d and "WindowCenter" in d
        assert len({x.StudyInstanceUID for x in images}) == 1
        assert len({x.FrameOfReferenceUID for x in images}) == 1
        study_uids.add(d.StudyInstanceUID)
        # Every phase has the same slice stack, one slice-spacing apart along the normal.
        stacks: dict[float, list[tuple[float, ...]]] = defaultdict(list)
        for x in images:
            stacks[float(x.TriggerTime)].append(tuple(float(v) for v in x.ImagePositionPatient))
        geometries = {tuple(sorted(s)) for s in stacks.values()}
        assert len(stacks) == profile.phases and len(geometries) == 1
        z = np.array(sorted(p[2] for p in next(iter(geometries))))
        assert np.allclose(np.diff(z), float(d.SpacingBetweenSlices), atol=1e-3)
    assert len(study_uids) == 6


def test_dicom_values_match_the_in_memory_rendering(cohort_dir: Path) -> None:
    profile = load_profile("philips-3t")
    r = render_patient(patient_seed(7, 0), profile, MATRIX, SLICES)
    series = _series(cohort_dir / "SYNTH-P0001" / "philips-3t")
    (images,) = series.values()
    normal = np.array(r.grid.normal)
    for d in images[:20]:
        phase = r.phase_times_s.index(float(d.TriggerTime) / 1000.0)
        k = int(round(np.dot(np.array(d.ImagePositionPatient, float) - r.grid.first_position,
                             normal) / r.spacing_mm[0]))
        real = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.allclose(real, r.pixels[phase, k], rtol=1e-5)


def test_truth_files(cohort_dir: Path) -> None:
    study = cohort_dir / "SYNTH-P0001" / "ge-1.5t" / "truth"
    meta = json.loads((study / "truth.json").read_text())
    npz = np.load(study / "truth.npz")
    shape = (SLICES, MATRIX, MATRIX)
    assert npz["labels"].shape == shape and npz["labels"].dtype == np.uint8
    assert {"background", "skin", "fat", "fgt", "muscle", "heart", "vessel",
            "lesion"} <= set(meta["labels"])
    assert npz["lesion_masks"].shape[1:] == shape
    assert npz["lesion_masks"].shape[0] == len(meta["lesions"])
    assert npz["t1_0_ms"].shape == shape and npz["pd"].shape == shape
    conc = npz["concentration_mM"]
    assert conc.shape == (6, len(meta["compartments"]))
    assert np.all(conc[0] == 0)  # phase 0 is pre-contrast
    assert meta["reference_profile"] == "siemens-3t"
    ref = npz["reference"]
    assert ref.shape == (6, *shape) and ref.dtype == np.float32
    fat = npz["labels"] == meta["labels"]["fat"]
    assert float(npz["t1_0_ms"][fat].mean()) < 400  # fat T1 at 1.5 T, ~296 ms


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
def test_dciodvfy_is_clean(cohort_dir: Path) -> None:
    files = []
    for scanner in SCANNERS:
        for series in sorted((cohort_dir / "SYNTH-P0001" / scanner / "dicom").iterdir()):
            members = sorted(series.glob("*.dcm"))
            files += [members[0], members[-1]]
    for f in files:
        assert dciodvfy_errors(f) == [], f


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
def test_the_known_validator_gaps_are_real_scanner_habits() -> None:
    """The TriggerTime finding left out above is one the real GE sample has too."""
    (sample,) = sample_files("ge-signa-architect-3t-multiphase")[:1]
    strict = dciodvfy_errors(sample, strict=True)
    assert any("Element=<TriggerTime>" in line for line in strict)


def test_gauss_field_strength_option() -> None:
    gauss = replace(load_profile("ge-1.5t"), field_strength_format="gauss")
    assert field_strength_text(gauss) == "15000"


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    a = simulate_cohort(tmp_path / "a", 1, ["ge-3t"], seed=3, matrix=32, slices=4,
                        progress=False)
    b = simulate_cohort(tmp_path / "b", 1, ["ge-3t"], seed=3, matrix=32, slices=4,
                        progress=False)
    assert a == b
    for f in (tmp_path / "a").rglob("*.dcm"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


def test_nothing_is_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort, "write_truth", broken)
    with pytest.raises(RuntimeError):
        simulate_cohort(tmp_path / "out", 1, ["ge-1.5t"], matrix=32, slices=4, progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        simulate_cohort(tmp_path / "full", 1, ["ge-1.5t"], matrix=32, slices=4,
                        progress=False)
