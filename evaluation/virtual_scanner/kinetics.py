"""Contrast kinetics: the Parker population AIF and extended-Tofts / Patlak tissue curves.

All numbers from shared/reference/breast-dce-physics.md, "Kinetics":
- Parker et al., MRM 2006 population AIF (blood, mM, t in minutes), shifted so that the
  first-pass peak falls about 75 s after injection, as for breast.
- Extended Tofts: Ct(t) = vp Cp(t) + Ktrans * int Cp(tau) exp(-kep (t - tau)) dtau,
  kep = Ktrans / ve, Cp = Cb / (1 - Hct).
- FGT background enhancement: Patlak-like (vp = 0, no backflux) with Ktrans 0.010-0.035
  min^-1; delays after the arterial input: tumour 3 s, benign 8 s, gland 15 s.

Times here are seconds; Parker's and the Tofts constants are per minute and are converted
explicitly (the reference warns of code that feeds minute constants into a seconds grid).
"""

from __future__ import annotations

import numpy as np

# Parker 2006 population AIF, t in minutes, concentrations in mM (whole blood).
PARKER_A = (0.809, 0.330)  # mmol min
PARKER_T = (0.17046, 0.365)  # min
PARKER_SIGMA = (0.0563, 0.132)  # min
PARKER_ALPHA = 1.050  # mM
PARKER_BETA = 0.1685  # min^-1
PARKER_S = 38.078  # min^-1
PARKER_TAU = 0.483  # min
BREAST_PEAK_S = 75.0  # first-pass peak after injection, breast (reference)
STANDARD_DOSE = 0.1  # mmol/kg, the dose the population AIF describes
FGT_DELAY_S = 15.0
DT_S = 0.5  # time step of the convolution grid


def parker_aif(t_s: np.ndarray, dose_mmol_per_kg: float = STANDARD_DOSE) -> np.ndarray:
    """Whole-blood concentration Cb (mM) at ``t_s`` seconds after injection.

    The Parker curve is shifted so its first Gaussian peaks at BREAST_PEAK_S, scaled
    linearly with dose, and zero before the bolus arrives.
    """
    shift_s = BREAST_PEAK_S - PARKER_T[0] * 60.0
    t = (np.asarray(t_s, dtype=np.float64) - shift_s) / 60.0  # minutes since bolus arrival
    cb = np.zeros_like(t)
    for a, tn, sigma in zip(PARKER_A, PARKER_T, PARKER_SIGMA, strict=True):
        cb += a / (sigma * np.sqrt(2 * np.pi)) * np.exp(-((t - tn) ** 2) / (2 * sigma**2))
    cb += PARKER_ALPHA * np.exp(-PARKER_BETA * t) / (1 + np.exp(-PARKER_S * (t - PARKER_TAU)))
    cb[t < 0] = 0.0
    return cb * (dose_mmol_per_kg / STANDARD_DOSE)


def extended_tofts(t_s: np.ndarray, cp: np.ndarray, ktrans_per_min: float, ve: float,
                   vp: float, delay_s: float) -> np.ndarray:
    """Tissue concentration (mM) on the uniform grid ``t_s`` (step DT_S) from plasma ``cp``.

    ``ve = inf`` gives the Patlak model (no backflux). The arterial curve is delayed by
    ``delay_s`` before it reaches the tissue.
    """
    dt = float(t_s[1] - t_s[0])
    shift = int(round(delay_s / dt))
    cp_d = np.concatenate([np.zeros(shift), cp[: cp.size - shift]]) if shift else cp
    ktrans = ktrans_per_min / 60.0  # s^-1
    kep = ktrans / ve if np.isfinite(ve) else 0.0
    kernel = ktrans * np.exp(-kep * (t_s - t_s[0])) * dt
    return np.asarray(vp * cp_d + np.convolve(cp_d, kernel)[: t_s.size])


def time_grid(end_s: float) -> np.ndarray:
    """Seconds after injection, 0..end_s in steps of DT_S."""
    return np.arange(0.0, end_s + DT_S, DT_S)


def sample(t_s: np.ndarray, curve: np.ndarray, at_s: np.ndarray) -> np.ndarray:
    """``curve`` at times ``at_s`` (0 before injection)."""
    return np.interp(at_s, t_s, curve, left=0.0)


def late_change(signal: np.ndarray) -> float:
    """The last phase's signal relative to the early post-contrast signal (the highest of the
    first two post phases), minus 1: what the curve type is read from."""
    early = float(np.max(signal[1:3]))
    return (float(signal[-1]) - early) / max(abs(early), 1e-6)


def enhancement_type(signal: np.ndarray) -> str:
    """Clinical curve type of a signal curve whose phase 0 is pre-contrast.

    Compares the last phase with the early post-contrast signal (:func:`late_change`): a rise
    of more than 10 % is persistent, a fall of more than 10 % washout, anything between
    plateau (the usual BI-RADS kinetic reading; reference "Curve types").
    """
    return change_type(late_change(signal))


def change_type(change: float) -> str:
    """The curve type of a late change (:func:`late_change`)."""
    if change > 0.10:
        return "persistent"
    if change < -0.10:
        return "washout"
    return "plateau"
