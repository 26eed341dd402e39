"""Ground truth beside each study, outside the DICOM files: truth.npz plus truth.json.

truth.npz (arrays on the study grid, (z, y, x)):
  labels (uint8), lesion_masks (lesion, z, y, x; uint8), fgt_fraction (float16),
  t1_0_ms (float32, T1 of the voxel's dominant compartment at this study's field), pd
  (float32), compartment (uint8: the voxel's row in concentration_mM), concentration_mM
  (float32 (phase, compartment): voxel concentration = concentration_mM[:, compartment]),
  b1_kappa and bias (float16: smooth fields, 1e-3 precision is plenty) and, with a reference
  profile, reference (float32 (phase, z, y, x) in the reference's real-world units).
truth.json: label codes, compartments, patient and lesion parameters, kinetic curves per
compartment (fine grid and per phase), timing, hardware draws, scaling and the reference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.virtual_scanner.acquisition import Acquired
from evaluation.virtual_scanner.render import Rendering
from evaluation.virtual_scanner.tissues import Label


def _acquired_json(a: Acquired) -> dict[str, Any]:
    return {
        "rescale_slope": a.rescale_slope,
        "rescale_intercept": a.rescale_intercept,
        "private_scale_slope": a.private_scale_slope,
        "noise_sigma": a.noise_sigma,
        "hardware": dataclasses.asdict(a.hardware),
    }


def truth_json(r: Rendering) -> dict[str, Any]:
    """Everything about the study that is not a voxel map, as JSON-ready values."""
    patient = dataclasses.asdict(r.patient)
    lesions = [
        {
            "index": i + 1,
            "malignant": les.malignant,
            "shape": les.shape,
            "center_mm": list(les.center),
            "ktrans_per_min": les.ktrans,
            "ve": les.ve,
            "vp": les.vp,
            "kep_per_min": les.ktrans / les.ve,
            "delay_s": les.delay_s,
            "voxels": int(r.phantom.lesion_masks[i].sum()),
        }
        for i, les in enumerate(r.patient.lesions)
    ]
    return {
        "profile": r.profile.name,
        "profile_settings": dataclasses.asdict(r.profile),
        "reference_profile": r.reference_profile.name if r.reference_profile else None,
        "labels": {label.name.lower(): int(label) for label in Label},
        "arterial_input_labels": [int(Label.HEART), int(Label.VESSEL)],
        "grid": {
            "shape_zyx": list(r.grid.shape),
            "spacing_mm_zyx": list(r.spacing_mm),
            "row_direction": list(r.grid.row_dir),
            "column_direction": list(r.grid.col_dir),
            "first_position_mm": list(r.grid.first_position),
        },
        "timing": {
            "phase_times_s": list(r.timing.phase_times_s),
            "injection_s": r.timing.injection_s,
            "sample_after_injection_s": list(r.timing.sample_after_injection_s),
        },
        "patient": {
            "seed": r.patient.seed,
            "density": r.patient.density,
            "fgt_fraction_target": r.patient.fgt_fraction,
            "hematocrit": r.patient.hematocrit,
            "breasts": patient["breasts"],
            "t1_z": r.patient.t1_z,
        },
        "lesions": lesions,
        "compartments": list(r.curves.names),
        "concentration_mM": {
            "t_after_injection_s": r.curves.t_s[::4].tolist(),  # 2 s steps
            "curves": {n: r.curves.fine_mM[i, ::4].round(5).tolist()
                       for i, n in enumerate(r.curves.names)},
            "per_phase": {n: r.curves.phases_mM[:, i].round(5).tolist()
                          for i, n in enumerate(r.curves.names)},
        },
        "acquisition": _acquired_json(r.acquired),
        "reference_acquisition": _acquired_json(r.reference) if r.reference else None,
    }


def write_truth(r: Rendering, truth_dir: Path) -> None:
    """Write truth.npz and truth.json into ``truth_dir``."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "labels": r.labels,
        "lesion_masks": r.phantom.lesion_masks.astype(np.uint8),
        "fgt_fraction": r.phantom.fgt_fraction.astype(np.float16),
        "t1_0_ms": r.t1_0_ms,
        "pd": r.pd,
        "compartment": r.compartment,
        "concentration_mM": r.curves.phases_mM.astype(np.float32),
        "b1_kappa": r.acquired.b1_kappa.astype(np.float16),
        "bias": r.acquired.bias.astype(np.float16),
    }
    if r.reference is not None:
        arrays["reference"] = r.reference.pixels
    np.savez_compressed(truth_dir / "truth.npz", **arrays)  # type: ignore[arg-type]
    (truth_dir / "truth.json").write_text(json.dumps(truth_json(r), indent=1), encoding="utf-8")


BREAST_LABELS = (Label.SKIN, Label.FAT, Label.FGT, Label.LESION)


def breast_mask(truth_dir: Path) -> np.ndarray:
    """The breast foreground (skin, fat, FGT, lesions) of a written study, (z, y, x) bool.

    What histogram comparisons with the reference rendering are taken over: the chest wall,
    heart and lungs are left out.
    """
    labels = np.load(truth_dir / "truth.npz")["labels"]
    return np.isin(labels, [int(label) for label in BREAST_LABELS])
