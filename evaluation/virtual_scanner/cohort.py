"""Simulate a cohort: every patient on every scanner, written atomically with a summary.

Layout (the contract other parts of the project read):
  OUT/summary.json
  OUT/<patient_id>/<scanner>/dicom/<SeriesNumber:03d>/<InstanceNumber:04d>.dcm
  OUT/<patient_id>/<scanner>/truth/truth.json and truth.npz
The whole cohort is written into a temporary folder beside OUT and renamed into place at the
end, so an interrupted run leaves no half-written cohort.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.virtual_scanner.dicom_writer import StudyIdentity, synthetic_uid, write_study
from evaluation.virtual_scanner.grid import grid_for
from evaluation.virtual_scanner.patient import sample_patient
from evaluation.virtual_scanner.profiles import (
    ProfileError,
    ScannerProfile,
    check_grid_override,
    load_profile,
)
from evaluation.virtual_scanner.render import Rendering, render, render_seed
from evaluation.virtual_scanner.truth import write_truth

__all__ = ["Rendering", "patient_seed", "render_patient", "simulate_cohort"]

# A fixed synthetic calendar: studies never carry the date they were simulated on, so the
# same seed writes byte-identical files.
_FIRST_STUDY = dt.datetime(2024, 1, 8, 8, 0, 0)


def patient_seed(cohort_seed: int, index: int) -> int:
    """The seed of patient ``index`` (0-based) in the cohort of ``cohort_seed``."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1)[0])


def render_patient(patient_seed: int, profile: ScannerProfile, matrix: int | None = None,
                   slices: int | None = None) -> Rendering:
    """The patient of ``patient_seed`` on ``profile``, in memory, without DICOM."""
    check_grid_override(matrix, slices)
    return render_seed(patient_seed, profile, matrix, slices)


def _identity(cohort_seed: int, index: int, scanner_index: int, scanner: str) -> StudyIdentity:
    number = index + 1
    return StudyIdentity(
        patient_id=f"SYNTH-P{number:04d}",
        patient_name=f"SYNTHETIC^P{number:04d}",
        study_uid=synthetic_uid(str(cohort_seed), str(index), scanner, "study"),
        study_id=str(number),
        accession=f"SYN{number:05d}{scanner_index:02d}",
        start=_FIRST_STUDY + dt.timedelta(days=index, hours=scanner_index),
    )


def _prepare_target(out_dir: Path) -> Path:
    """A temporary folder beside ``out_dir`` (same file system, so the rename is atomic)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output folder {out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))


def simulate_cohort(out_dir: Path, patients: int, scanners: list[str], seed: int = 0,
                    matrix: int | None = None, slices: int | None = None,
                    reference: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Write one study per patient per scanner under ``out_dir``; return the summary.

    Raises ProfileError for an unknown profile or an impossible override, ValueError for a
    non-positive patient count and FileExistsError when ``out_dir`` holds files.
    """
    if patients < 1:
        raise ValueError(f"patients = {patients} must be at least 1")
    if not scanners:
        raise ProfileError("scanners: give at least one scanner profile")
    check_grid_override(matrix, slices)
    profiles = [load_profile(name) for name in scanners]
    ref_profile = load_profile(reference) if reference else None
    out_dir = Path(out_dir)
    tmp = _prepare_target(out_dir)
    studies: list[dict[str, Any]] = []
    try:
        with tqdm(total=patients * len(profiles), desc="simulate", unit="study",
                  disable=not progress) as bar:
            for i in range(patients):
                patient = sample_patient(patient_seed(seed, i))
                for j, profile in enumerate(profiles):
                    ident = _identity(seed, i, j, profile.name)
                    grid = grid_for(profile, matrix, slices)
                    r = render(patient, profile, grid, ref_profile)
                    study_dir = tmp / ident.patient_id / profile.name
                    series = write_study(r, ident, study_dir / "dicom")
                    write_truth(r, study_dir / "truth")
                    studies.append({
                        "patient_id": ident.patient_id,
                        "patient_seed": patient.seed,
                        "scanner": profile.name,
                        "study_instance_uid": ident.study_uid,
                        "path": f"{ident.patient_id}/{profile.name}",
                        "shape_zyx": list(grid.shape),
                        "phases": profile.phases,
                        "density": patient.density,
                        "lesions": [{"malignant": les.malignant, "shape": les.shape}
                                    for les in patient.lesions],
                        "series": series,
                        "files": sum(int(s["instances"]) for s in series),  # type: ignore[call-overload]
                    })
                    bar.update()
        summary = {
            "seed": seed,
            "patients": patients,
            "scanners": [p.name for p in profiles],
            "matrix": matrix,
            "slices": slices,
            "reference": reference,
            "studies": studies,
            "files": sum(s["files"] for s in studies),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
