"""Tissue labels and their relaxation properties per field strength.

Numbers come from ``shared/reference/breast-dce-physics.md`` ("Relaxation" and "Contrast
agent" tables), which cites Rakow-Penner (JMRI 2006), Edden (JMRI 2010), Stanisz (MRM 2005),
Gold (AJR 2004), a SyMRI study (Cancer Imaging 2020), the Weill Cornell breast DRO and
Szomolanyi (Invest Radiol 2019). Where the reference gives no number (proton density, T2* at
1.5 T, skin, lung), the value is a modelling assumption and is marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Label(IntEnum):
    """Codes of the tissue label map written to truth.npz (listed by name in truth.json)."""

    BACKGROUND = 0
    SKIN = 1
    FAT = 2
    FGT = 3
    MUSCLE = 4
    CHEST_WALL = 5
    LUNG = 6
    HEART = 7  # heart blood pool: the arterial input region
    VESSEL = 8  # descending aorta: a second arterial input region
    LESION = 9


@dataclass(frozen=True)
class Relaxation:
    """T1 at 1.5 T and 3 T (mean, population SD), T2* and relative proton density."""

    t1_15: tuple[float, float]
    t1_30: tuple[float, float]
    t2star_ms: float
    pd: float

    def t1_ms(self, field_t: float, z: float) -> float:
        """T1 for a patient whose tissue sits ``z`` SDs from the population mean."""
        mean, sd = self.t1_15 if field_t < 2.25 else self.t1_30
        return mean + z * sd


# T2* at 3 T is measured for FGT (22 ms) and fat (36 ms) only. For other tissues T2* is
# taken as T2 x 0.4 (the FGT T2*/T2 ratio, 22/56); it is used at both fields, which changes
# exp(-TE/T2*) by under 5 % at TE <= 3 ms (assumption). Proton densities are relative to fat
# and are assumptions: the reference lists none. A range (muscle) is stored as centre +/- half
# width.
RELAXATION: dict[Label, Relaxation] = {
    Label.FAT: Relaxation((296.0, 13.0), (367.0, 8.0), 36.0, 1.0),
    Label.FGT: Relaxation((1266.0, 82.0), (1445.0, 93.0), 22.0, 0.85),
    Label.MUSCLE: Relaxation((1069.0, 61.0), (1416.0, 4.0), 14.0, 0.8),
    # Chest wall (ribs, intercostals): muscle relaxation with lower water density (assumption).
    Label.CHEST_WALL: Relaxation((1069.0, 61.0), (1416.0, 4.0), 14.0, 0.55),
    Label.HEART: Relaxation((1441.0, 0.0), (1932.0, 0.0), 110.0, 0.95),
    Label.VESSEL: Relaxation((1441.0, 0.0), (1932.0, 0.0), 110.0, 0.95),
    # Skin has no reference T1; dermis is taken as glandular-like soft tissue (assumption).
    Label.SKIN: Relaxation((1266.0, 82.0), (1445.0, 93.0), 22.0, 0.8),
    # Lung parenchyma: almost no signal at TE ~2 ms (assumption).
    Label.LUNG: Relaxation((1200.0, 0.0), (1400.0, 0.0), 1.5, 0.1),
}

# Lesions: invasive carcinoma ~1350 ms at 1.5 T (scaled), 1500-1612 ms at 3 T; benign ~1250 /
# ~1400 ms (Weill Cornell DRO). T2 81 ms for carcinoma gives T2* ~32 ms with the 0.4 ratio.
MALIGNANT = Relaxation((1350.0, 30.0), (1556.0, 28.0), 32.0, 0.85)
BENIGN = Relaxation((1250.0, 30.0), (1400.0, 30.0), 32.0, 0.85)

# r1 in plasma, L/mmol/s at 37 C (Szomolanyi, Invest Radiol 2019), per nominal field.
R1_RELAXIVITY: dict[str, dict[float, float]] = {
    "gadobutrol": {1.5: 4.78, 3.0: 4.97},
    "gadoterate": {1.5: 3.32, 3.0: 3.00},
}


def relaxivity(agent: str, field_t: float) -> float:
    """r1 (L/mmol/s) of ``agent`` at the nearest tabulated field."""
    table = R1_RELAXIVITY[agent]
    nearest = min(table, key=lambda f: abs(f - field_t))
    return table[nearest]
