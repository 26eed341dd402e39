"""Assembly: from received instances to DCE acquisitions the harmonizers can work on.

A study arrives as loose instances. Scanners lay out a breast DCE acquisition differently
(shared/reference/breast-dce-physics.md, "Typical vendor protocols"):

- GE: one multiphase series (TemporalPositionIdentifier), or one series per phase;
- Siemens: one series per measurement;
- Philips: all dynamics in one series, told apart by TriggerTime.

So phases are found from the data rather than from the layout: within a series, a slice
position seen k times means k phases, ordered at each position by TemporalPositionIdentifier,
else TriggerTime, else AcquisitionTime or ContentTime, else InstanceNumber. Series that share a
FrameOfReference and geometry are phases of one acquisition, ordered by their start time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain, nominal_field_strength, normalize_manufacturer

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")


class AssemblyError(ValueError):
    """The instances cannot be harmonized; the message is the quarantine reason."""


@dataclass(frozen=True)
class AssembledAcquisition:
    """An acquisition and, for every (phase, slice) of its pixels, the source dataset."""

    acquisition: Acquisition
    sources: tuple[tuple[Dataset, ...], ...]  # [phase][slice], same order as pixels

    @property
    def series_uids(self) -> list[str]:
        """The source series, in phase order, each once."""
        seen: dict[str, None] = {}
        for phase in self.sources:
            for ds in phase:
                seen.setdefault(str(ds.SeriesInstanceUID), None)
        return list(seen)


def read_header(path: Path) -> Dataset:
    """Read a DICOM file's header; raise AssemblyError for anything that is not DICOM."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise AssemblyError(f"unreadable DICOM: {exc}") from exc


def scanner_domain(ds: Dataset) -> ScannerDomain | None:
    """The normalized (vendor, field) of a dataset, or None when a header is missing."""
    vendor = normalize_manufacturer(str(ds.get("Manufacturer", "") or ""))
    field = nominal_field_strength(ds.get("MagneticFieldStrength"))
    if vendor is None or field is None:
        return None
    return ScannerDomain(vendor, field)


def unsupported_reason(ds: Dataset) -> str | None:
    """Why this instance must not be harmonized, or None when it can be."""
    modality = str(ds.get("Modality", "") or "")
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if modality != "MR":
        return f"not an MR image (Modality {modality or 'missing'}, SOP class {sop_class.name})"
    if sop_class == ENHANCED_MR_IMAGE_STORAGE:
        return "Enhanced MR (multi-frame) is not harmonized yet"
    if sop_class != MR_IMAGE_STORAGE:
        return f"not an MR image object (SOP class {sop_class.name})"
    if not str(ds.get("Manufacturer", "") or "").strip():
        return "Manufacturer (0008,0070) is missing"
    if normalize_manufacturer(str(ds.Manufacturer)) is None:
        return f"Manufacturer {str(ds.Manufacturer)!r} is not a known vendor"
    if nominal_field_strength(ds.get("MagneticFieldStrength")) is None:
        raw = ds.get("MagneticFieldStrength")
        return f"MagneticFieldStrength (0018,0087) is missing or implausible: {raw!r}"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            return f"{keyword} is missing, so the geometry is unknown"
    return None


# Slices per phase, where the vendor writes it (shared/reference/breast-dce-physics.md,
# "Header facts for routing"): GE LocationsInAcquisition, Philips NumberOfSlicesMR.
SLICES_PER_PHASE_TAGS = (
    (0x0021, 0x4F, "GEMS_RELA_01"),
    (0x2001, 0x18, "Philips Imaging DD 001"),
)
EXPECTED_COUNT_TAGS: list[BaseTag] = [
    Tag("NumberOfTemporalPositions"),
    *(Tag(group, 0x0010) for group, _, _ in SLICES_PER_PHASE_TAGS),
    *(Tag(group, 0x1000 | element) for group, element, _ in SLICES_PER_PHASE_TAGS),
]


def expected_count(ds: Dataset) -> int | None:
    """How many instances a multiphase series holds, when its header says so.

    NumberOfTemporalPositions x the vendor's slices per phase. None for a single phase
    (per-phase series: how many phase series follow is unknown) or when either is missing.
    Reads only what EXPECTED_COUNT_TAGS names, so a header read with those tags suffices.
    """
    phases = _optional_float(ds.get("NumberOfTemporalPositions"))
    if phases is None or phases < 2:
        return None
    for group, element, creator in SLICES_PER_PHASE_TAGS:
        try:
            slices = int(ds.get_private_item(group, element, creator).value)
        except (KeyError, TypeError, ValueError):
            continue
        if slices > 0:
            return int(phases) * slices
    return None


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def _position(ds: Dataset) -> float:
    return float(np.dot(_normal(ds), [float(v) for v in ds.ImagePositionPatient]))


def _geometry_key(ds: Dataset) -> tuple[object, ...]:
    """What must be equal for two series to be phases of one acquisition."""
    return (
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("FrameOfReferenceUID", "")),
        tuple(round(float(v), 3) for v in ds.ImageOrientationPatient),
        int(ds.Rows),
        int(ds.Columns),
        tuple(round(float(v), 3) for v in ds.PixelSpacing),
    )


def _seconds(time_value: object) -> float | None:
    """A DICOM TM (HHMMSS.ffffff) as seconds since midnight."""
    text = str(time_value or "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _time_s(ds: Dataset) -> float | None:
    """When this image's phase was acquired, in seconds, by the vendor's own habit."""
    if ds.get("TriggerTime") not in (None, ""):
        return float(ds.TriggerTime) / 1000.0
    for keyword in ("AcquisitionTime", "ContentTime"):
        seconds = _seconds(ds.get(keyword))
        if seconds is not None:
            return seconds
    return None


def _phase_order_key(ds: Dataset) -> tuple[float, float, float]:
    tpi = ds.get("TemporalPositionIdentifier")
    time_s = _time_s(ds)
    return (
        float(tpi) if tpi not in (None, "") else 0.0,
        time_s if time_s is not None else 0.0,
        float(ds.get("InstanceNumber") or 0),
    )


def _series_phases(series: Sequence[Dataset]) -> list[list[Dataset]]:
    """Split one series into phases; each phase sorted by slice position."""
    by_position: dict[float, list[Dataset]] = defaultdict(list)
    for ds in series:
        by_position[round(_position(ds), 2)].append(ds)
    counts = {len(v) for v in by_position.values()}
    if len(counts) != 1:
        raise AssemblyError(
            f"series {series[0].SeriesInstanceUID}: slice positions repeat unevenly "
            f"({sorted(counts)} images per position), so phases cannot be told apart"
        )
    n_phases = counts.pop()
    positions = sorted(by_position)
    stacks = [sorted(by_position[p], key=_phase_order_key) for p in positions]
    return [[stack[phase] for stack in stacks] for phase in range(n_phases)]


# What acquisition_key reads: the geometry key's tags and unsupported_reason's.
ACQUISITION_KEY_TAGS: list[BaseTag] = [Tag(keyword) for keyword in (
    "SOPClassUID", "StudyInstanceUID", "Modality", "Manufacturer", "MagneticFieldStrength",
    "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "Rows",
    "Columns", "PixelSpacing",
)]


def acquisition_key(ds: Dataset) -> str:
    """The acquisition an MR image belongs to (same study, frame of reference and geometry,
    as :func:`group_acquisitions` groups), as text for the ledger; "" for an instance that
    is not harmonized (:func:`unsupported_reason`) or whose geometry does not parse."""
    if unsupported_reason(ds):
        return ""
    try:
        return json.dumps(_geometry_key(ds))
    except (AttributeError, TypeError, ValueError):
        return ""


def group_acquisitions(datasets: Iterable[Dataset]) -> list[list[Dataset]]:
    """Group MR image headers into acquisitions: same study, frame of reference, geometry."""
    groups: dict[tuple[object, ...], list[Dataset]] = defaultdict(list)
    for ds in datasets:
        groups[_geometry_key(ds)].append(ds)
    return list(groups.values())


def order_phases(datasets: Sequence[Dataset]) -> list[list[Dataset]]:
    """All phases of one acquisition group, in time order, each sorted by slice position."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.SeriesInstanceUID)].append(ds)

    def series_start(series: list[Dataset]) -> tuple[float, float]:
        times = [t for t in (_time_s(ds) for ds in series) if t is not None]
        return (min(times) if times else 0.0, float(series[0].get("SeriesNumber") or 0))

    phases: list[list[Dataset]] = []
    for series in sorted(by_series.values(), key=series_start):
        phases.extend(_series_phases(series))
    reference = [round(_position(ds), 2) for ds in phases[0]]
    for index, phase in enumerate(phases[1:], start=1):
        if [round(_position(ds), 2) for ds in phase] != reference:
            raise AssemblyError(
                f"phase {index} has other slice positions than phase 0 "
                f"({len(phase)} vs {len(reference)} slices)"
            )
    return phases


def stored_values(ds: Dataset) -> np.ndarray:
    """The stored pixel values of an instance (PS3.5 8.1.1, Native Format).

    Single-frame, single-sample, full 16-bit little-endian native data (most MR) is read
    straight from the bytes: pydicom's general decoder costs about 1 ms per 512 x 512 slice,
    several times the read itself. Anything else (encapsulated, packed or partial bits,
    several frames, a length that does not fit) goes through pydicom, which knows those
    cases and says what is wrong.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    native = syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    full_16_bit = ds.get("BitsAllocated") == 16 and ds.get("BitsStored") == 16
    single = ds.get("SamplesPerPixel", 1) == 1 and int(ds.get("NumberOfFrames") or 1) == 1
    if native and full_16_bit and single and "PixelData" in ds:
        rows, columns = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
        if len(data) == rows * columns * 2:
            signed = ds.get("PixelRepresentation") == 1
            return np.frombuffer(data, dtype="<i2" if signed else "<u2").reshape(rows, columns)
    return ds.pixel_array


def rescale(ds: Dataset) -> tuple[float, float]:
    """The instance's Modality LUT as (RescaleSlope, RescaleIntercept); (1, 0) when absent."""
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def slice_values(ds: Dataset, shape: tuple[int, ...]) -> np.ndarray:
    """The stored values of one slice of a series whose slices are ``shape``; AssemblyError
    when it has no pixels, several frames, or another shape."""
    if "PixelData" not in ds:
        raise AssemblyError(f"instance {ds.get('SOPInstanceUID', '?')} has no PixelData")
    pixels = stored_values(ds)
    if pixels.ndim != 2:
        raise AssemblyError(f"expected one frame per instance, got pixel shape {pixels.shape}")
    if pixels.shape != shape:
        raise AssemblyError(f"instance {ds.get('SOPInstanceUID', '?')}: pixel shape "
                            f"{pixels.shape}, the series' is {shape}")
    return pixels


def _real_world_into(ds: Dataset, out: np.ndarray) -> None:
    """The instance's real-world values (Modality LUT: rescale slope and intercept) in ``out``.

    In place: no float32 temporaries per slice, and no arithmetic for the identity rescale.
    """
    out[...] = slice_values(ds, out.shape)
    slope, intercept = rescale(ds)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def ordered_sources(datasets: Sequence[Dataset]) -> list[list[Dataset]]:
    """One group's datasets, checked, each instance once, as [phase][slice] (no pixels read).

    An instance sent twice (a scanner resending after a timeout) counts once: the last copy
    in ``datasets`` wins, so pass them in arrival order.
    """
    for ds in datasets:
        reason = unsupported_reason(ds)
        if reason:
            raise AssemblyError(f"instance {ds.get('SOPInstanceUID', '?')}: {reason}")
    latest = {str(ds.SOPInstanceUID): ds for ds in datasets}
    return order_phases(list(latest.values()))


def assemble(datasets: Sequence[Dataset]) -> AssembledAcquisition:
    """Build the 4D acquisition from one group's full datasets (with pixel data).

    Instances sent twice count once (see :func:`ordered_sources`). The pixels move from the
    datasets into the acquisition (their PixelData is deleted), so a series is held in
    memory once.
    """
    return assemble_phases(ordered_sources(datasets))


def assemble_phases(
    phases: Sequence[Sequence[Dataset]], keep_pixels: bool = False
) -> AssembledAcquisition:
    """The acquisition of phases that :func:`ordered_sources` returned (or the first of them).

    Moves the pixels out of the datasets, as :func:`assemble` does, unless ``keep_pixels``.
    """
    first = phases[0][0]
    pixels = np.empty((len(phases), len(phases[0]), int(first.Rows), int(first.Columns)),
                      dtype=np.float32)
    for p, phase in enumerate(phases):
        for z, ds in enumerate(phase):
            _real_world_into(ds, pixels[p, z])
            if not keep_pixels:
                del ds.PixelData
    positions = [_position(ds) for ds in phases[0]]
    slice_gap = float(np.median(np.diff(positions))) if len(positions) > 1 else 0.0
    z_spacing = slice_gap or float(first.get("SliceThickness") or 1.0)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    times = [_time_s(phase[0]) for phase in phases]
    if all(t is not None for t in times):
        start = min(t for t in times if t is not None)
        phase_times = tuple(float(t) - start for t in times if t is not None)
    else:
        phase_times = tuple(float(i) for i in range(len(phases)))
    acquisition = Acquisition(
        pixels=pixels,
        spacing_mm=(abs(z_spacing), row_mm, col_mm),
        phase_times_s=phase_times,
        domain=scanner_domain(first),
        repetition_time_ms=_optional_float(first.get("RepetitionTime")),
        echo_time_ms=_optional_float(first.get("EchoTime")),
        flip_angle_deg=_optional_float(first.get("FlipAngle")),
    )
    return AssembledAcquisition(acquisition, tuple(tuple(phase) for phase in phases))


def _optional_float(value: object) -> float | None:
    try:
        return float(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def is_dicom_file(path: Path) -> bool:
    """Tell DICOM files by the 'DICM' preamble, not by the extension."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(paths: Sequence[Path]) -> list[Path]:
    """Every DICOM file among the given files and, recursively, folders, in path order."""
    files: list[Path] = []
    for path in paths:
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files.extend(p for p in candidates if p.is_file() and is_dicom_file(p))
    return files


def acquisitions_from_paths(paths: Sequence[Path]) -> list[Acquisition]:
    """Read every DICOM file under the given files or folders into acquisitions.

    For offline tools (training, audits). Instances that cannot be harmonized are skipped,
    and a group that cannot be assembled raises AssemblyError naming it.
    """
    datasets = [dcmread(f) for f in dicom_files(paths)]
    usable = [ds for ds in datasets if unsupported_reason(ds) is None]
    return [assemble(group).acquisition for group in group_acquisitions(usable)]
