"""A virtual patient: every random choice about one person, drawn once from a seed.

The patient is described in physical millimetres in DICOM patient coordinates (LPS), with
the origin between the breasts at the level of the nipples' base; no scanner property enters
here, so the same seed rendered by two profiles is the same person. Kinetic ranges are from
shared/reference/breast-dce-physics.md ("Kinetics": Weill Cornell DRO ranges and the clinical
means of Clinical Imaging 2020); anatomical sizes are modelling assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# BI-RADS density categories as the FGT fraction of breast volume (a: < 25 %, b: 25-50 %,
# c: 50-75 %, d: > 75 %), sampled inside each band.
DENSITY_BANDS: dict[str, tuple[float, float]] = {
    "a": (0.08, 0.22),
    "b": (0.28, 0.47),
    "c": (0.53, 0.72),
    "d": (0.78, 0.90),
}


@dataclass(frozen=True)
class Breast:
    """One breast: a tapered half-ellipsoid hanging anteriorly (-y) from the chest wall."""

    side: str  # "R" (patient right, -x) or "L"
    center_x: float
    center_z: float
    radius_x: float
    radius_z: float
    depth: float  # nipple distance from the chest-wall plane
    taper: float  # exponent p of the profile r^2 + u^p <= 1 (2 = ellipsoid, lower = conical)
    bpe_ktrans: float  # background parenchymal enhancement, min^-1


@dataclass(frozen=True)
class Lesion:
    """A lesion with its shape and extended-Tofts parameters."""

    malignant: bool
    shape: str  # "round", "oval", "irregular" or "spiculated"
    center: tuple[float, ...]  # x, y, z in mm, LPS
    radii: tuple[float, ...]  # mm, in the lesion frame
    rotation: tuple[tuple[float, ...], ...]  # 3x3, lesion frame -> patient
    lobes: tuple[tuple[float, ...], ...]  # ux, uy, uz, amplitude, frequency, phase
    spikes: tuple[tuple[float, ...], ...]  # ux, uy, uz, relative length
    ktrans: float  # min^-1
    ve: float
    vp: float
    delay_s: float
    t1_z: float  # SDs from the population T1 mean


@dataclass(frozen=True)
class Patient:
    """All random properties of one virtual patient."""

    seed: int
    density: str
    fgt_fraction: float
    thorax_rx: float
    thorax_ry: float
    chest_wall_y: float  # y of the anterior muscle surface at x = 0
    subcutaneous_fat: float  # fat over the thorax, mm
    muscle_thickness: float
    chest_wall_thickness: float
    skin_thickness: float
    breast_fat_margin: float  # subcutaneous and retromammary fat kept free of FGT, mm
    breasts: tuple[Breast, Breast]
    heart_center: tuple[float, float, float]
    heart_radii: tuple[float, float, float]
    aorta_center_xy: tuple[float, float]
    aorta_radius: float
    lesions: tuple[Lesion, ...]
    hematocrit: float
    t1_z: dict[str, float]  # per tissue: SDs from the population T1 mean
    texture_seed: int

    @property
    def thorax_center_y(self) -> float:
        return self.chest_wall_y + self.thorax_ry


def _rotation(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return tuple(tuple(float(v) for v in row) for row in q)


def _unit(rng: np.random.Generator) -> tuple[float, ...]:
    v = rng.normal(size=3)
    return tuple(float(c) for c in v / np.linalg.norm(v))


def _lesion(rng: np.random.Generator, breast: Breast, chest_wall_y: float) -> Lesion:
    """Draw one lesion inside ``breast``.

    Malignant: irregular or spiculated, Ktrans 0.04-0.39 min^-1, ve 0.10-0.30, vp 0.13-0.26,
    delay 3 s. Benign: round or oval, Ktrans 0.045-0.14 min^-1, delay 8 s (Weill Cornell DRO
    ranges in the reference). Benign ve is drawn around the clinical benign mean 0.48
    (Clinical Imaging 2020) and benign vp is small (0.01-0.05): the reference gives no benign
    vp, and benign lesions are less vascular (assumption).
    """
    malignant = bool(rng.random() < 0.6)
    shape = str(rng.choice(["irregular", "spiculated"] if malignant else ["round", "oval"]))
    r0 = float(rng.uniform(5.0, 12.0) if malignant else rng.uniform(4.0, 10.0))
    elong = 1.0 if shape == "round" else float(rng.uniform(1.2, 1.7))
    radii = (r0 * elong, r0, r0 / (elong**0.5))
    # Position: 25-65 % of the way to the nipple, within the inner half of the cross-section.
    u = float(rng.uniform(0.25, 0.65))
    scale = (1.0 - u**breast.taper) ** 0.5
    rho = float(rng.uniform(0.0, 0.5)) * scale
    theta = float(rng.uniform(0, 2 * np.pi))
    center = (
        breast.center_x + rho * breast.radius_x * np.cos(theta),
        chest_wall_y - u * breast.depth,
        breast.center_z + rho * breast.radius_z * np.sin(theta),
    )
    lobe_amp = {"round": 0.0, "oval": 0.03, "irregular": 0.22, "spiculated": 0.12}[shape]
    lobes = tuple(
        (*_unit(rng), lobe_amp * float(rng.uniform(0.5, 1.0)), float(rng.uniform(2.0, 5.0)),
         float(rng.uniform(0, 2 * np.pi)))
        for _ in range(6 if lobe_amp else 0)
    )
    n_spikes = int(rng.integers(6, 12)) if shape == "spiculated" else 0
    spikes = tuple((*_unit(rng), float(rng.uniform(0.8, 2.0))) for _ in range(n_spikes))
    if malignant:
        ktrans, ve, vp, delay = (rng.uniform(0.04, 0.39), rng.uniform(0.10, 0.30),
                                 rng.uniform(0.13, 0.26), 3.0)
    else:
        ktrans, ve, vp, delay = (rng.uniform(0.045, 0.14), rng.uniform(0.38, 0.58),
                                 rng.uniform(0.01, 0.05), 8.0)
    return Lesion(
        malignant=malignant, shape=shape, center=tuple(float(c) for c in center),
        radii=radii, rotation=_rotation(rng), lobes=lobes, spikes=spikes,
        ktrans=float(ktrans), ve=float(ve), vp=float(vp), delay_s=delay,
        t1_z=float(np.clip(rng.normal(), -2, 2)),
    )


def sample_patient(seed: int) -> Patient:
    """Draw a patient from ``seed``; the same seed always gives the same patient."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0B2EA57]))
    density = str(rng.choice(list(DENSITY_BANDS), p=[0.1, 0.4, 0.4, 0.1]))
    fgt_fraction = float(rng.uniform(*DENSITY_BANDS[density]))
    chest_wall_y = float(rng.uniform(45.0, 70.0))
    size = float(rng.uniform(0.75, 1.25))  # overall breast size
    asym = float(rng.uniform(-0.08, 0.08))  # left-right size asymmetry
    spread = float(rng.uniform(78.0, 95.0))
    breasts = []
    for side, sign, s in (("R", -1.0, 1 - asym), ("L", 1.0, 1 + asym)):
        breasts.append(Breast(
            side=side,
            center_x=sign * (spread + rng.uniform(-4.0, 4.0)),
            center_z=float(rng.uniform(-8.0, 8.0)),
            radius_x=float(66.0 * size * s * rng.uniform(0.95, 1.05)),
            radius_z=float(60.0 * size * s * rng.uniform(0.95, 1.05)),
            depth=float(np.clip(95.0 * size**1.5 * s * rng.uniform(0.9, 1.1), 40.0, 150.0)),
            taper=float(rng.uniform(1.6, 2.4)),
            # FGT background enhancement: slow, Patlak-like, Ktrans 0.010-0.035 min^-1.
            bpe_ktrans=float(rng.uniform(0.010, 0.035)),
        ))
    n_lesions = int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
    lesions = tuple(
        _lesion(rng, breasts[int(rng.integers(0, 2))], chest_wall_y) for _ in range(n_lesions)
    )
    thorax_ry = float(rng.uniform(100.0, 125.0))
    muscle = float(rng.uniform(8.0, 16.0))
    wall = float(rng.uniform(10.0, 16.0))
    inner_y = chest_wall_y + muscle + wall  # front of the mediastinum
    heart_radii = (float(rng.uniform(50.0, 62.0)), float(rng.uniform(38.0, 48.0)),
                   float(rng.uniform(45.0, 55.0)))
    aorta_radius = float(rng.uniform(12.0, 16.0))
    return Patient(
        seed=int(seed),
        density=density,
        fgt_fraction=fgt_fraction,
        thorax_rx=float(rng.uniform(150.0, 175.0)),
        thorax_ry=thorax_ry,
        chest_wall_y=chest_wall_y,
        subcutaneous_fat=float(rng.uniform(6.0, 18.0)),
        muscle_thickness=muscle,
        chest_wall_thickness=wall,
        skin_thickness=float(rng.uniform(1.5, 2.5)),
        breast_fat_margin=float(rng.uniform(4.0, 9.0)),
        breasts=(breasts[0], breasts[1]),
        # The heart sits left of the midline behind the chest wall, below the breasts' centre.
        heart_center=(float(rng.uniform(20.0, 40.0)),
                      inner_y + heart_radii[1] + float(rng.uniform(0.0, 10.0)),
                      float(rng.uniform(-75.0, -50.0))),
        heart_radii=heart_radii,
        aorta_center_xy=(float(rng.uniform(0.0, 15.0)),
                         inner_y + aorta_radius + float(rng.uniform(3.0, 12.0))),
        aorta_radius=aorta_radius,
        lesions=lesions,
        # Hct 0.42-0.45 (reference, "Kinetics").
        hematocrit=float(rng.uniform(0.42, 0.45)),
        t1_z={t: float(np.clip(rng.normal(), -2, 2)) for t in ("fat", "fgt", "muscle", "skin")},
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )
