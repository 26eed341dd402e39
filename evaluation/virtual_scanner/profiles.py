"""Scanner profiles: editable YAML files under ``conf/scanners/`` describing one scanner setup.

A profile holds the protocol (TR, TE, flip angle, matrix, slices, phases, fat suppression;
typical values from shared/reference/breast-dce-physics.md, "Typical vendor protocols"), the
hardware behaviour that makes scanners differ (B1+ range, receive bias, SNR, recon filter,
intensity scaling) and how the vendor writes DICOM (manufacturer strings, series layout,
MagneticFieldStrength spelling). An admin adds a scanner by dropping a new YAML file in the
folder; see docs/virtual-scanner.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from dicomnode.paths import conf_dir
from evaluation.virtual_scanner.tissues import R1_RELAXIVITY


class ProfileError(ValueError):
    """A profile is missing, malformed or physically impossible; the message names the field."""


FIELD_FORMATS = ("1.5", "1.494", "3", "3.0", "gauss")
VENDORS = ("GE", "SIEMENS", "PHILIPS")
# Series layouts each vendor uses for DCE (reference, "how the vendor stores phases").
LAYOUTS: dict[str, tuple[str, ...]] = {
    "GE": ("multiphase", "per-phase"),
    "SIEMENS": ("per-measurement",),
    "PHILIPS": ("dynamics",),
}
RECON_FILTERS = ("none", "blur", "sharpen")
RESCALES = ("unity", "philips")


@dataclass(frozen=True)
class ScannerProfile:
    """One scanner setup. Field names are the YAML keys; the YAML groups them in sections."""

    name: str
    # scanner
    vendor: str
    manufacturer: str
    model_name: str
    software_versions: tuple[str, ...]
    station_name: str
    field_strength_t: float
    field_strength_format: str
    receive_coil: str
    # sequence
    sequence_label: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    repetition_time_ms: float
    echo_time_ms: float
    flip_angle_deg: float
    # geometry
    matrix: int
    fov_mm: float
    slices: int
    slice_thickness_mm: float
    patient_position: str
    # timing
    phases: int
    phase_duration_s: float
    post_delay_s: float
    # contrast
    agent: str
    dose_mmol_per_kg: float
    # fat suppression
    fat_suppression: str
    fat_suppression_efficiency: float
    # hardware
    b1_kappa_min: float
    b1_kappa_max: float
    b1_lr_difference_max: float
    bias_strength: float
    snr: float
    recon_filter: str
    recon_filter_strength: float
    # intensity
    gain: float
    exam_gain_min: float
    exam_gain_max: float
    rescale: str
    # dicom
    layout: str
    temporal_position_tags: bool
    first_series_number: int
    series_description: str
    protocol_name: str

    @property
    def coverage_mm(self) -> float:
        """Slab thickness (slices x slice thickness); kept when the slice count is overridden."""
        return self.slices * self.slice_thickness_mm


# section -> keys, in YAML order. Every ScannerProfile field but ``name`` appears once.
SECTIONS: dict[str, tuple[str, ...]] = {
    "scanner": ("vendor", "manufacturer", "model_name", "software_versions", "station_name",
                "field_strength_t", "field_strength_format", "receive_coil"),
    "sequence": ("sequence_label", "sequence_name", "scanning_sequence", "sequence_variant",
                 "scan_options", "repetition_time_ms", "echo_time_ms", "flip_angle_deg"),
    "geometry": ("matrix", "fov_mm", "slices", "slice_thickness_mm", "patient_position"),
    "timing": ("phases", "phase_duration_s", "post_delay_s"),
    "contrast": ("agent", "dose_mmol_per_kg"),
    "fat_suppression": ("fat_suppression", "fat_suppression_efficiency"),
    "hardware": ("b1_kappa_min", "b1_kappa_max", "b1_lr_difference_max", "bias_strength",
                 "snr", "recon_filter", "recon_filter_strength"),
    "intensity": ("gain", "exam_gain_min", "exam_gain_max", "rescale"),
    "dicom": ("layout", "temporal_position_tags", "first_series_number", "series_description",
              "protocol_name"),
}


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


# Checks that need one value only; cross-field checks are in _check_consistency.
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "vendor": _one_of(VENDORS),
    "field_strength_t": lambda v: None if v in (1.5, 3.0) else "must be 1.5 or 3.0 (nominal)",
    "field_strength_format": _one_of(FIELD_FORMATS),
    "repetition_time_ms": _positive,
    "echo_time_ms": _positive,
    "flip_angle_deg": lambda v: None if 0 < v <= 90 else "must be in (0, 90] degrees",
    "matrix": lambda v: None if 16 <= v <= 1024 else "must be between 16 and 1024",
    "fov_mm": _positive,
    "slices": lambda v: None if 1 <= v <= 512 else "must be between 1 and 512",
    "slice_thickness_mm": _positive,
    "patient_position": _one_of(("FFP", "HFP")),
    "phases": lambda v: None if 2 <= v <= 64 else "must be between 2 and 64 (1 pre + posts)",
    "phase_duration_s": _positive,
    "post_delay_s": _non_negative,
    "agent": _one_of(tuple(R1_RELAXIVITY)),
    "dose_mmol_per_kg": _positive,
    "fat_suppression_efficiency": _fraction,
    "b1_kappa_min": _positive,
    "b1_kappa_max": _positive,
    "b1_lr_difference_max": _fraction,
    "bias_strength": _fraction,
    "snr": _positive,
    "recon_filter": _one_of(RECON_FILTERS),
    "recon_filter_strength": _non_negative,
    "gain": _positive,
    "exam_gain_min": _positive,
    "exam_gain_max": _positive,
    "rescale": _one_of(RESCALES),
    "first_series_number": lambda v: None if 1 <= v <= 900 else "must be between 1 and 900",
}


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert a YAML value to the dataclass field's type, or explain why it cannot be."""
    if kind == "tuple[str, ...]":
        items = value if isinstance(value, list) else [value]
        return tuple(str(v) for v in items)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("must be a number")
        return float(value)
    if not isinstance(value, str | int | float):
        raise TypeError("must be text")
    return str(value)


def profile_from_mapping(name: str, data: Any, source: str) -> ScannerProfile:
    """Build and validate a profile from parsed YAML; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: the file must hold a mapping of sections")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ProfileError(f"{source}: unknown section(s) {sorted(unknown)}")
    kinds = {f.name: f.type for f in fields(ScannerProfile)}
    values: dict[str, Any] = {"name": name}
    for section, keys in SECTIONS.items():
        block = data.get(section)
        if not isinstance(block, dict):
            raise ProfileError(f"{source}: section '{section}' is missing or not a mapping")
        extra = set(block) - set(keys)
        if extra:
            raise ProfileError(f"{source}: {section}: unknown field(s) {sorted(extra)}")
        for key in keys:
            if key not in block:
                raise ProfileError(f"{source}: {section}.{key} is missing")
            try:
                value = _coerce(key, block[key], kinds[key])
            except TypeError as exc:
                raise ProfileError(f"{source}: {section}.{key} {exc}") from None
            problem = _CHECKS[key](value) if key in _CHECKS else None
            if problem:
                raise ProfileError(f"{source}: {section}.{key} = {value!r} {problem}")
            values[key] = value
    profile = ScannerProfile(**values)
    _check_consistency(profile, source)
    return profile


def _check_consistency(p: ScannerProfile, source: str) -> None:
    """Cross-field checks: TE inside TR, ordered ranges, a layout the vendor uses."""
    if p.echo_time_ms >= p.repetition_time_ms:
        raise ProfileError(f"{source}: sequence.echo_time_ms must be shorter than TR")
    if p.b1_kappa_min > p.b1_kappa_max:
        raise ProfileError(f"{source}: hardware.b1_kappa_min must not exceed b1_kappa_max")
    if p.exam_gain_min > p.exam_gain_max:
        raise ProfileError(f"{source}: intensity.exam_gain_min must not exceed exam_gain_max")
    if p.layout not in LAYOUTS[p.vendor]:
        raise ProfileError(
            f"{source}: dicom.layout = {p.layout!r} must be one of "
            f"{', '.join(LAYOUTS[p.vendor])} for vendor {p.vendor}"
        )
    tesla = {"1.5": 1.5, "1.494": 1.5, "3": 3.0, "3.0": 3.0, "gauss": p.field_strength_t}
    if tesla[p.field_strength_format] != p.field_strength_t:
        raise ProfileError(
            f"{source}: scanner.field_strength_format = {p.field_strength_format!r} does not "
            f"spell field_strength_t = {p.field_strength_t}"
        )


def check_grid_override(matrix: int | None, slices: int | None) -> None:
    """Validate command-line overrides of the in-plane matrix and the slice count."""
    if matrix is not None and (problem := _CHECKS["matrix"](matrix)):
        raise ProfileError(f"matrix = {matrix} {problem}")
    if slices is not None and (problem := _CHECKS["slices"](slices)):
        raise ProfileError(f"slices = {slices} {problem}")


def profiles_dir() -> Path:
    """The folder scanner profiles are read from (``conf_dir()/scanners``)."""
    return conf_dir() / "scanners"


def available_profiles() -> list[str]:
    """Names of the profiles in :func:`profiles_dir`, sorted."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name: str) -> ScannerProfile:
    """Read and validate ``<profiles_dir>/<name>.yaml``."""
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown scanner profile {name!r}; available: {', '.join(available_profiles())}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    return profile_from_mapping(name, data, str(path))
