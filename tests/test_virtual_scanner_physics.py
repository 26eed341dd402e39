"""Physics of the virtual scanner: signal equation, kinetics, relaxivity and reproducibility.

Expected values are computed here from the formulas and numbers in
shared/reference/breast-dce-physics.md, not read back from the simulator.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from evaluation.virtual_scanner import kinetics
from evaluation.virtual_scanner.cohort import render_patient
from evaluation.virtual_scanner.grid import grid_for
from evaluation.virtual_scanner.patient import Lesion, Patient, sample_patient
from evaluation.virtual_scanner.profiles import ScannerProfile, load_profile
from evaluation.virtual_scanner.render import render
from evaluation.virtual_scanner.tissues import RELAXATION, Label

# Reference table "Relaxation": mean T1 (ms) and SD at 1.5 T / 3 T; T2* fat 36, FGT 22 ms.
T1 = {"fat": {1.5: (296.0, 13.0), 3.0: (367.0, 8.0)},
      "fgt": {1.5: (1266.0, 82.0), 3.0: (1445.0, 93.0)}}
T2STAR = {"fat": 36.0, "fgt": 22.0}


def _ideal(profile: ScannerProfile) -> ScannerProfile:
    """No B1+ error, no bias, no recon filter and little noise: the bare signal equation."""
    return replace(profile, b1_kappa_min=1.0, b1_kappa_max=1.0, b1_lr_difference_max=0.0,
                   bias_strength=0.0, recon_filter="none", snr=400.0)


def _spgr(t1: float, tr: float, flip_deg: float) -> float:
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / t1)
    return float(np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1))


@pytest.mark.parametrize("name", ["ge-1.5t", "siemens-3t"])
def test_fat_to_fgt_ratio_follows_spoiled_gradient_echo(name: str) -> None:
    profile = _ideal(load_profile(name))
    r = render_patient(3, profile, matrix=128, slices=24)
    field = profile.field_strength_t
    labels, fgt = r.labels, r.phantom.fgt_fraction
    # Pure voxels (no recon filter here, so a voxel's signal is its own): FGT share > 99 %,
    # and fat away from skin and FGT.
    pure_fgt = (labels == Label.FGT) & (fgt > 0.99)
    breast_fat = ndimage.binary_erosion(labels == Label.FAT, iterations=2) & (fgt < 1e-3)
    assert pure_fgt.sum() > 50 and breast_fat.sum() > 50
    measured = r.pixels[0][breast_fat].mean() / r.pixels[0][pure_fgt].mean()

    z = r.patient.t1_z
    t1_fat = T1["fat"][field][0] + z["fat"] * T1["fat"][field][1]
    t1_fgt = T1["fgt"][field][0] + z["fgt"] * T1["fgt"][field][1]
    tr, te, fa = profile.repetition_time_ms, profile.echo_time_ms, profile.flip_angle_deg
    s_fat = (RELAXATION[Label.FAT].pd * _spgr(t1_fat, tr, fa) * np.exp(-te / T2STAR["fat"])
             * (1 - profile.fat_suppression_efficiency))
    s_fgt = RELAXATION[Label.FGT].pd * _spgr(t1_fgt, tr, fa) * np.exp(-te / T2STAR["fgt"])
    assert measured == pytest.approx(s_fat / s_fgt, rel=0.03)

    # The prediction depends on TR and flip angle: without fat suppression and at 25 degrees
    # the same tissues give a clearly different, still matching, ratio.
    steep = replace(profile, flip_angle_deg=25.0, fat_suppression_efficiency=0.0)
    r2 = render(r.patient, steep, r.grid)
    measured2 = r2.pixels[0][breast_fat].mean() / r2.pixels[0][pure_fgt].mean()
    predicted2 = (RELAXATION[Label.FAT].pd * _spgr(t1_fat, tr, 25.0) * np.exp(-te / 36.0)
                  / (RELAXATION[Label.FGT].pd * _spgr(t1_fgt, tr, 25.0) * np.exp(-te / 22.0)))
    assert measured2 == pytest.approx(predicted2, rel=0.03)
    assert abs(predicted2 - s_fat / s_fgt) > 0.5


def test_parker_aif_peaks_at_75_s_and_uses_minutes() -> None:
    t = kinetics.time_grid(600.0)
    cb = kinetics.parker_aif(t)
    assert t[np.argmax(cb)] == pytest.approx(75.0, abs=2.0)
    assert cb[t < 60].max() < 0.5  # no contrast before the bolus arrives
    # Parker's first peak height: A1 / (sigma1 sqrt(2 pi)) plus the small second and tail terms.
    assert cb.max() == pytest.approx(0.809 / (0.0563 * np.sqrt(2 * np.pi)), rel=0.15)
    # Ten minutes after injection the tail (alpha e^(-beta t), t in minutes) is about 0.2-0.4 mM.
    assert 0.1 < cb[-1] < 0.6


def test_tofts_reaches_ve_cp_for_a_constant_plasma_level() -> None:
    t = kinetics.time_grid(1200.0)
    cp = np.full(t.size, 2.0)
    ct = kinetics.extended_tofts(t, cp, ktrans_per_min=0.5, ve=0.3, vp=0.05, delay_s=0.0)
    assert ct[-1] == pytest.approx((0.3 + 0.05) * 2.0, rel=0.02)


def _with_lesion(patient: Patient, ktrans: float, ve: float, vp: float) -> Patient:
    """``patient`` with one large malignant lesion of chosen kinetics in the left breast."""
    b = patient.breasts[1]
    lesion = Lesion(malignant=True, shape="irregular",
                    center=(b.center_x, patient.chest_wall_y - 0.4 * b.depth, b.center_z),
                    radii=(14.0, 12.0, 12.0),
                    rotation=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
                    lobes=(), spikes=(), ktrans=ktrans, ve=ve, vp=vp, delay_s=3.0, t1_z=0.0)
    return replace(patient, lesions=(lesion,))


@pytest.mark.parametrize(("ktrans", "ve", "vp", "expected", "wash_in"), [
    # Malignant range, kep ~2.9 /min: fast wash-in, then plateau or washout.
    (0.35, 0.12, 0.15, {"washout", "plateau"}, 50.0),
    # Slow exchange (kep 0.06 /min, below the AIF tail's 0.17 /min): keeps rising.
    (0.03, 0.50, 0.0, {"persistent"}, 10.0),
])
def test_lesion_enhancement_curve_follows_tofts(ktrans: float, ve: float, vp: float,
                                                expected: set[str], wash_in: float) -> None:
    profile = load_profile("ge-1.5t")
    patient = _with_lesion(sample_patient(11), ktrans, ve, vp)
    r = render(patient, profile, grid_for(profile, 96, 24))
    mask = r.phantom.lesion_masks[0]
    assert mask.sum() > 20
    signal = r.pixels[:, mask].mean(axis=1)
    percent = 100 * (signal - signal[0]) / signal[0]
    assert percent[1] > wash_in  # wash-in by the first post-contrast phase
    assert kinetics.enhancement_type(signal) in expected
    # The type seen in the image is the type the Tofts curve predicts through the signal
    # equation (ideal scanner, lesion T1 and r1 from the reference tables).
    conc = r.curves.phases_mM[:, -1]
    t1 = 1350.0  # invasive carcinoma at 1.5 T, reference "Relaxation"
    r1 = 4.78e-3  # gadobutrol at 1.5 T, per mM per ms
    predicted = np.array([_spgr(1 / (1 / t1 + r1 * c), profile.repetition_time_ms,
                                profile.flip_angle_deg) for c in conc])
    assert kinetics.enhancement_type(signal) == kinetics.enhancement_type(predicted)


def test_larger_r1_gives_more_enhancement() -> None:
    gadobutrol = load_profile("ge-1.5t")  # r1 4.78 at 1.5 T
    gadoterate = replace(gadobutrol, agent="gadoterate")  # r1 3.32 at 1.5 T
    patient = sample_patient(5)
    grid = grid_for(gadobutrol, 64, 12)
    enhancement = []
    for profile in (gadobutrol, gadoterate):
        r = render(patient, profile, grid)
        blood = np.isin(r.labels, (Label.HEART, Label.VESSEL))
        s = r.pixels[:, blood].mean(axis=1)
        enhancement.append((s.max() - s[0]) / s[0])
    assert enhancement[0] > enhancement[1] * 1.1


def test_same_seed_same_patient_and_images() -> None:
    profile = load_profile("philips-3t")
    a = render_patient(42, profile, matrix=64, slices=12)
    b = render_patient(42, profile, matrix=64, slices=12)
    c = render_patient(43, profile, matrix=64, slices=12)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_same_seed_is_the_same_patient_on_two_scanners() -> None:
    ge, siemens = load_profile("ge-1.5t"), load_profile("siemens-3t")
    a = render_patient(8, ge, matrix=64, slices=12)
    b = render_patient(8, siemens, matrix=64, slices=12)
    assert a.patient == b.patient
    # Same FOV and coverage up to rounding; the tissue volumes agree within a few percent.
    va = np.bincount(a.labels.ravel(), minlength=10) * np.prod(a.spacing_mm)
    vb = np.bincount(b.labels.ravel(), minlength=10) * np.prod(b.spacing_mm)
    for label in (Label.FAT, Label.FGT, Label.MUSCLE):
        assert va[label] == pytest.approx(vb[label], rel=0.1)


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_fgt_share_matches_the_drawn_density(seed: int) -> None:
    r = render_patient(seed, load_profile("ge-3t"), matrix=128, slices=32)
    fgt = r.phantom.fgt_fraction
    parenchyma = np.isin(r.labels, (Label.FGT, Label.FAT, Label.LESION)) & (fgt > 0)
    # Breast volume, not counting the thorax's subcutaneous fat, is where the texture lives;
    # its FGT share is the patient's BI-RADS density within a tolerance for the fat margins.
    share = (r.labels == Label.FGT).sum() / max(parenchyma.sum(), 1)
    assert share >= r.patient.fgt_fraction - 0.1
