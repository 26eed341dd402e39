"""One patient through one scanner, in memory: anatomy, kinetics and acquisition together."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from evaluation.virtual_scanner.acquisition import Acquired, acquire, exam_rng
from evaluation.virtual_scanner.anatomy import Phantom, rasterize
from evaluation.virtual_scanner.compartments import (
    Curves,
    Timing,
    concentration_curves,
    phase_timing,
    tissue_at_field,
    voxel_compartments,
)
from evaluation.virtual_scanner.grid import Grid, grid_for
from evaluation.virtual_scanner.patient import Patient, sample_patient
from evaluation.virtual_scanner.profiles import ScannerProfile
from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain


@dataclass(frozen=True)
class Rendering:
    """A simulated study and its ground truth.

    ``pixels`` is float32 (phase, z, y, x) in the real-world units the DICOM files hold after
    RescaleSlope/Intercept; phase 0 is pre-contrast. ``labels`` is (z, y, x) uint8
    (tissues.Label). ``spacing_mm`` is (z, y, x). ``reference``, when asked for, is the same
    patient on the same grid and timing through another profile's physics.
    """

    pixels: np.ndarray
    labels: np.ndarray
    phase_times_s: tuple[float, ...]
    spacing_mm: tuple[float, float, float]
    profile: ScannerProfile
    grid: Grid
    patient: Patient
    phantom: Phantom
    timing: Timing
    curves: Curves
    t1_0_ms: np.ndarray  # float32 (z, y, x), T1 of the voxel's dominant compartment
    pd: np.ndarray  # float32 (z, y, x), effective proton density
    compartment: np.ndarray  # uint8 (z, y, x), row of curves.phases_mM for each voxel
    acquired: Acquired
    reference: Acquired | None = None
    reference_profile: ScannerProfile | None = None

    def acquisition(self) -> Acquisition:
        """The study as the node would assemble it from its DICOM files, for harmonizers."""
        return Acquisition(
            pixels=np.asarray(self.pixels, dtype=np.float32),
            spacing_mm=self.spacing_mm,
            phase_times_s=self.phase_times_s,
            domain=ScannerDomain(self.profile.vendor, self.profile.field_strength_t),
            repetition_time_ms=self.profile.repetition_time_ms,
            echo_time_ms=self.profile.echo_time_ms,
            flip_angle_deg=self.profile.flip_angle_deg,
        )


def render(patient: Patient, profile: ScannerProfile, grid: Grid,
           reference: ScannerProfile | None = None) -> Rendering:
    """Render ``patient`` on ``grid`` with ``profile`` (and optionally a reference profile).

    The reference keeps this study's grid, timing and dose but uses the reference scanner's
    field (T1, r1), sequence, fat suppression, hardware draws, noise, filter and scaling.
    """
    phantom = rasterize(patient, grid)
    index, fat = voxel_compartments(phantom, grid)
    timing = phase_timing(profile)
    curves = concentration_curves(patient, timing, profile.dose_mmol_per_kg)
    tissue = tissue_at_field(patient, index, fat, profile.field_strength_t)
    acquired = acquire(tissue, curves, profile, grid, exam_rng(patient.seed, profile))
    ref = None
    if reference is not None:
        # Same phases as this study: the reference scanner's own phase count is not used.
        ref_profile = _with_timing(reference, profile)
        ref_tissue = tissue_at_field(patient, index, fat, reference.field_strength_t)
        ref = acquire(ref_tissue, curves, ref_profile, grid, exam_rng(patient.seed, reference))
    fat_dominant = fat >= 0.5
    t1 = np.where(fat_dominant, np.float32(tissue.fat_t1_ms), tissue.t1_ms[index])
    pd = (1 - fat) * tissue.pd[index] + fat * 1.0
    return Rendering(
        pixels=acquired.pixels,
        labels=phantom.labels,
        phase_times_s=timing.phase_times_s,
        spacing_mm=grid.spacing_mm,
        profile=profile,
        grid=grid,
        patient=patient,
        phantom=phantom,
        timing=timing,
        curves=curves,
        t1_0_ms=t1.astype(np.float32),
        pd=pd.astype(np.float32),
        compartment=index,
        acquired=acquired,
        reference=ref,
        reference_profile=reference,
    )


def _with_timing(reference: ScannerProfile, study: ScannerProfile) -> ScannerProfile:
    """``reference`` with the study's phase count and timing (and so its curve samples)."""
    return replace(reference, phases=study.phases, phase_duration_s=study.phase_duration_s,
                   post_delay_s=study.post_delay_s)


def render_seed(patient_seed: int, profile: ScannerProfile, matrix: int | None = None,
                slices: int | None = None, reference: ScannerProfile | None = None
                ) -> Rendering:
    """Render the patient of ``patient_seed`` on ``profile``'s grid (with optional overrides)."""
    return render(sample_patient(patient_seed), profile, grid_for(profile, matrix, slices),
                  reference)
