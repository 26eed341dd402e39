"""Voxel compartments: which relaxation and concentration curve each voxel carries.

A voxel holds a water compartment (one of a few tissues, each with one T1, PD, T2* and
concentration curve) and, in breast and subcutaneous fat, a fat share. Keeping the
per-tissue values in short tables and the voxels as a uint8 index makes each phase of the
signal equation one table lookup per voxel instead of per-voxel physics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.virtual_scanner import kinetics
from evaluation.virtual_scanner.anatomy import Phantom
from evaluation.virtual_scanner.grid import Grid
from evaluation.virtual_scanner.patient import Patient
from evaluation.virtual_scanner.profiles import ScannerProfile
from evaluation.virtual_scanner.tissues import BENIGN, MALIGNANT, RELAXATION, Label, Relaxation

# Fixed compartments; lesion i is compartment FIRST_LESION + i.
COMPARTMENTS = ("background", "skin", "fgt_right", "fgt_left", "muscle", "chest_wall", "lung",
                "blood")
FIRST_LESION = len(COMPARTMENTS)
_LABEL_TO_COMPARTMENT = {
    Label.BACKGROUND: 0, Label.SKIN: 1, Label.FAT: 2, Label.FGT: 2, Label.MUSCLE: 4,
    Label.CHEST_WALL: 5, Label.LUNG: 6, Label.HEART: 7, Label.VESSEL: 7, Label.LESION: 0,
}


@dataclass(frozen=True)
class Timing:
    """When each phase is acquired. Phase 0 is pre-contrast; injection follows it.

    ``phase_times_s`` are acquisition starts from the start of phase 0 (what TriggerTime
    and AcquisitionTime record); ``sample_after_injection_s`` are the k-space centres
    (mid-phase) relative to the injection, where the concentration is read.
    """

    phase_times_s: tuple[float, ...]
    injection_s: float
    sample_after_injection_s: tuple[float, ...]
    phase_duration_s: float


def phase_timing(profile: ScannerProfile) -> Timing:
    """Phase timing of ``profile``: pre phase, injection, delay, then back-to-back posts."""
    d = profile.phase_duration_s
    starts = [0.0] + [d + profile.post_delay_s + (k - 1) * d for k in range(1, profile.phases)]
    return Timing(
        phase_times_s=tuple(starts),
        injection_s=d,
        sample_after_injection_s=tuple(s + d / 2 - d for s in starts),
        phase_duration_s=d,
    )


@dataclass(frozen=True)
class Curves:
    """Concentration curves (mM) per compartment: fine grid for truth, phase samples to render."""

    names: tuple[str, ...]
    t_s: np.ndarray  # fine grid, seconds after injection
    fine_mM: np.ndarray  # (compartment, time)
    phases_mM: np.ndarray  # (phase, compartment)


def concentration_curves(patient: Patient, timing: Timing, dose: float) -> Curves:
    """Blood, FGT (Patlak) and lesion (extended Tofts) curves; other tissues do not enhance.

    Muscle, skin and chest wall enhance little in the first minutes and are kept at zero: a
    simplification, the reference gives no parameters for them.
    """
    t = kinetics.time_grid(max(timing.sample_after_injection_s) + 10.0)
    cb = kinetics.parker_aif(t, dose)
    cp = cb / (1 - patient.hematocrit)
    names = COMPARTMENTS + tuple(f"lesion_{i + 1}" for i in range(len(patient.lesions)))
    fine = np.zeros((len(names), t.size))
    fine[COMPARTMENTS.index("blood")] = cb
    for breast in patient.breasts:
        row = COMPARTMENTS.index("fgt_right" if breast.side == "R" else "fgt_left")
        fine[row] = kinetics.extended_tofts(t, cp, breast.bpe_ktrans, np.inf, 0.0,
                                            kinetics.FGT_DELAY_S)
    for i, les in enumerate(patient.lesions):
        fine[FIRST_LESION + i] = kinetics.extended_tofts(t, cp, les.ktrans, les.ve, les.vp,
                                                         les.delay_s)
    at = np.asarray(timing.sample_after_injection_s)
    phases = np.stack([kinetics.sample(t, row, at) for row in fine], axis=1)
    return Curves(names=names, t_s=t, fine_mM=fine, phases_mM=phases)


@dataclass(frozen=True)
class Tissue:
    """Per-compartment relaxation at one field, and the voxel maps that index it."""

    index: np.ndarray  # uint8 (z, y, x) compartment of the water part
    fat_fraction: np.ndarray  # float32 (z, y, x)
    t1_ms: np.ndarray  # (compartment,)
    pd: np.ndarray
    t2star_ms: np.ndarray
    fat_t1_ms: float


def voxel_compartments(phantom: Phantom, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The compartment index and fat fraction of every voxel (field-independent)."""
    lut = np.zeros(256, dtype=np.uint8)
    for label, comp in _LABEL_TO_COMPARTMENT.items():
        lut[label] = comp
    index = lut[phantom.labels]
    x, _, _ = grid.axes_mm()
    parenchyma = np.isin(phantom.labels, (Label.FAT, Label.FGT))
    index[parenchyma & (x[None, None, :] > 0)] = COMPARTMENTS.index("fgt_left")
    for i, mask in enumerate(phantom.lesion_masks):
        index[mask] = FIRST_LESION + i
    fat = np.where(parenchyma, 1 - phantom.fgt_fraction, 0).astype(np.float32)
    return index, fat


def tissue_at_field(patient: Patient, index: np.ndarray, fat_fraction: np.ndarray,
                    field_t: float) -> Tissue:
    """Relaxation tables of ``patient`` at ``field_t`` (T1 depends on field, PD does not)."""
    z = patient.t1_z
    table: list[tuple[Relaxation, float]] = [
        (RELAXATION[Label.LUNG], 0.0),  # background: PD set to 0 below
        (RELAXATION[Label.SKIN], z["skin"]),
        (RELAXATION[Label.FGT], z["fgt"]),
        (RELAXATION[Label.FGT], z["fgt"]),
        (RELAXATION[Label.MUSCLE], z["muscle"]),
        (RELAXATION[Label.CHEST_WALL], z["muscle"]),
        (RELAXATION[Label.LUNG], 0.0),
        (RELAXATION[Label.HEART], 0.0),
    ]
    table += [(MALIGNANT if les.malignant else BENIGN, les.t1_z) for les in patient.lesions]
    t1 = np.array([r.t1_ms(field_t, zz) for r, zz in table])
    pd = np.array([r.pd for r, _ in table])
    pd[0] = 0.0
    t2s = np.array([r.t2star_ms for r, _ in table])
    return Tissue(index=index, fat_fraction=fat_fraction, t1_ms=t1, pd=pd, t2star_ms=t2s,
                  fat_t1_ms=RELAXATION[Label.FAT].t1_ms(field_t, z["fat"]))
