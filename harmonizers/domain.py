"""Scanner domains: the normalized (vendor, nominal field) pair a series comes from.

Real headers spell the same scanner many ways (see shared/reference/breast-dce-physics.md,
"Header facts for routing"): Manufacturer "GE MEDICAL SYSTEMS", "SIEMENS",
"Siemens Healthcare GmbH", "Philips Medical Systems"; MagneticFieldStrength (0018,0087)
"1.494", "1.5", "3", "3.0" and, in old GE archives, "15000" (gauss).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Vendor stems matched case-insensitively at the start of Manufacturer.
_VENDOR_STEMS: tuple[tuple[str, str], ...] = (
    (r"^ge\b|^general electric|^gems", "GE"),
    (r"^siemens", "SIEMENS"),
    (r"^philips", "PHILIPS"),
    (r"^toshiba|^canon", "CANON"),
    (r"^hitachi|^fujifilm", "FUJIFILM"),
)

# Nominal clinical field strengths, in tesla.
_NOMINAL_FIELDS: tuple[float, ...] = (0.2, 0.35, 0.5, 1.0, 1.5, 3.0, 7.0)


def normalize_manufacturer(manufacturer: str | None) -> str | None:
    """Return the vendor stem ("GE", "SIEMENS", "PHILIPS", ...) or None when unknown."""
    if not manufacturer:
        return None
    text = manufacturer.strip().lower()
    for pattern, vendor in _VENDOR_STEMS:
        if re.search(pattern, text):
            return vendor
    return None


def nominal_field_strength(value: object) -> float | None:
    """Normalize MagneticFieldStrength to the nearest nominal field in tesla.

    Values above 100 are taken as gauss (1 T = 10 000 G), as old GE Genesis headers wrote.
    Returns None for a missing, unparsable or implausible value.
    """
    if value is None or value == "":
        return None
    try:
        tesla = float(str(value).strip())
    except ValueError:
        return None
    if tesla > 100:
        tesla /= 10_000
    if not 0.05 <= tesla <= 12:
        return None
    nearest = min(_NOMINAL_FIELDS, key=lambda f: abs(f - tesla))
    # 1.494 T is a 1.5 T magnet; anything more than 10 % from a nominal field is kept as read.
    return nearest if abs(nearest - tesla) <= 0.1 * nearest else round(tesla, 2)


@dataclass(frozen=True)
class ScannerDomain:
    """A scanner setup as harmonization sees it: normalized vendor and nominal field."""

    vendor: str
    field_t: float

    @property
    def name(self) -> str:
        """The profile-style name, e.g. ``ge-1.5t`` or ``siemens-3t``."""
        field = f"{self.field_t:g}"
        return f"{self.vendor.lower()}-{field}t"

    @classmethod
    def parse(cls, name: str) -> ScannerDomain:
        """Inverse of :attr:`name`: ``"ge-1.5t"`` -> ScannerDomain("GE", 1.5)."""
        match = re.fullmatch(r"([a-z]+)-([0-9.]+)t", name.strip().lower())
        if not match:
            raise ValueError(f"not a scanner domain name: {name!r} (expected e.g. 'ge-1.5t')")
        return cls(match.group(1).upper(), float(match.group(2)))
