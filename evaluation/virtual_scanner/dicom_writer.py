"""Write a rendering as MR Image Storage files, laid out and headed as each vendor does.

Series layouts (shared/reference/breast-dce-physics.md, "Typical vendor protocols" and
"Header facts for routing"):
- GE: one multiphase series (phases one after another, TemporalPositionIdentifier,
  NumberOfTemporalPositions and the private LocationsInAcquisition (0021,104F) under
  "GEMS_RELA_01"), or one series per phase.
- Siemens: one series per measurement, AcquisitionNumber = measurement.
- Philips: all dynamics in one series, slices interleaved (dynamic varies fastest, as in
  the Philips sample), told apart by TriggerTime; public RescaleSlope plus the private scale
  slope (2005,100E) under "Philips MR Imaging DD 001".
Header habits (ImageType, private creators, field-strength spelling) are copied from the real
files in shared/dicom-samples. Everything is marked synthetic (SyntheticData YES).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from evaluation.virtual_scanner.profiles import ScannerProfile
from evaluation.virtual_scanner.render import Rendering

LARMOR_MHZ_PER_T = 42.577478
IMAGE_TYPE = {
    "GE": ["ORIGINAL", "PRIMARY", "OTHER"],
    "SIEMENS": ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS3D"],
    "PHILIPS": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
}
AGENT_NAMES = {"gadobutrol": "Gadovist", "gadoterate": "Dotarem"}
_UID_NAMESPACE = uuid.UUID("8f0c3a52-5d1e-4b7a-9d55-3c6f1e0b2a71")  # this simulator's namespace


def synthetic_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (UUID-based "2.25." form): the same seed, the same UIDs."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(parts)).int}"


@dataclass(frozen=True)
class StudyIdentity:
    """Who and when: plainly synthetic identifiers of one study."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_id: str
    accession: str
    start: dt.datetime


@dataclass(frozen=True)
class SeriesPlan:
    """One series to write: its number, UID and the phases it holds."""

    number: int
    uid: str
    phases: tuple[int, ...]
    description: str


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def _tm(moment: dt.datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def field_strength_text(profile: ScannerProfile) -> str:
    """MagneticFieldStrength as this scanner spells it ("gauss": old GE, 1 T = 10 000 G)."""
    if profile.field_strength_format == "gauss":
        return str(int(round(profile.field_strength_t * 10_000)))
    return profile.field_strength_format


def plan_series(profile: ScannerProfile, study_uid: str) -> list[SeriesPlan]:
    """The series the vendor would write for ``profile``'s phases."""
    phases = tuple(range(profile.phases))
    groups = [phases] if profile.layout in ("multiphase", "dynamics") else [(p,) for p in phases]
    plans = []
    for i, group in enumerate(groups):
        number = profile.first_series_number + i
        desc = profile.series_description
        if len(groups) > 1:
            desc = f"{desc} {'pre' if group[0] == 0 else f'post{group[0]}'}"
        plans.append(SeriesPlan(number, synthetic_uid(study_uid, "series", str(number)),
                                group, desc))
    return plans


def _instance_number(profile: ScannerProfile, plan: SeriesPlan, phase_pos: int, k: int,
                     nz: int) -> int:
    """1-based InstanceNumber of slice ``k`` of the ``phase_pos``-th phase of ``plan``."""
    if profile.layout == "dynamics":
        return k * len(plan.phases) + phase_pos + 1
    return phase_pos * nz + k + 1


def _study_dataset(r: Rendering, ident: StudyIdentity, frame_uid: str) -> Dataset:
    """Attributes shared by every image of the study."""
    p = r.profile
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = IMAGE_TYPE[p.vendor]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = (
        ident.start.strftime("%Y%m%d"))
    ds.StudyTime = _tm(ident.start)
    ds.AccessionNumber = ident.accession
    ds.Modality = "MR"
    ds.Manufacturer = p.manufacturer
    ds.InstitutionName = "SYNTHETIC VIRTUAL SCANNER"
    ds.ReferringPhysicianName = ""
    ds.StationName = p.station_name
    ds.StudyDescription = "SYNTHETIC BREAST DCE-MRI"
    ds.ManufacturerModelName = p.model_name
    ds.SyntheticData = "YES"
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.PatientComments = f"Synthetic patient, virtual scanner seed {r.patient.seed}"
    ds.BodyPartExamined = "BREAST"
    # Type 2C for a paired body part; empty because the images cover both breasts.
    ds.Laterality = ""
    ds.ContrastBolusAgent = AGENT_NAMES[p.agent]
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusStartTime = _tm(ident.start + dt.timedelta(seconds=r.timing.injection_s))
    ds.ContrastBolusIngredient = "GADOLINIUM"
    ds.ScanningSequence = list(p.scanning_sequence)
    ds.SequenceVariant = list(p.sequence_variant)
    ds.ScanOptions = list(p.scan_options)
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = p.sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = _ds(r.spacing_mm[0])
    ds.RepetitionTime = _ds(p.repetition_time_ms)
    ds.EchoTime = _ds(p.echo_time_ms)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(LARMOR_MHZ_PER_T * p.field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = field_strength_text(p)
    ds.SpacingBetweenSlices = _ds(r.spacing_mm[0])
    ds.EchoTrainLength = "1"
    ds.DeviceSerialNumber = "SYNTHETIC"
    ds.SoftwareVersions = list(p.software_versions)
    ds.ProtocolName = p.protocol_name
    ds.ReceiveCoilName = p.receive_coil
    ds.AcquisitionMatrix = [0, r.grid.shape[2], r.grid.shape[1], 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = _ds(p.flip_angle_deg)
    ds.PatientPosition = p.patient_position
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyID = ident.study_id
    ds.ImageOrientationPatient = [_ds(v) for v in (*r.grid.row_dir, *r.grid.col_dir)]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = r.grid.shape[1]
    ds.Columns = r.grid.shape[2]
    ds.PixelSpacing = [_ds(r.spacing_mm[1]), _ds(r.spacing_mm[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(r.acquired.rescale_intercept)
    ds.RescaleSlope = _ds(r.acquired.rescale_slope)
    lo, hi = np.percentile(r.pixels[:, ::2, ::4, ::4], [1.0, 99.5])
    ds.WindowCenter = _ds(round((lo + hi) / 2, 1))
    ds.WindowWidth = _ds(round(max(hi - lo, 1.0), 1))
    if p.vendor == "GE":
        ds.private_block(0x0021, "GEMS_RELA_01", create=True).add_new(0x4F, "SS",
                                                                       r.grid.shape[0])
    if p.vendor == "PHILIPS":
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0D, "FL", 0.0)  # scale intercept
        block.add_new(0x0E, "FL", float(r.acquired.private_scale_slope))
    return ds


def _procedure_step(ident: StudyIdentity) -> Sequence:
    """A plausible performed-procedure-step reference (real scanners write one)."""
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    item.ReferencedSOPInstanceUID = synthetic_uid(ident.study_uid, "mpps")
    return Sequence([item])


def iter_images(r: Rendering, ident: StudyIdentity) -> Iterator[tuple[Path, Dataset]]:
    """Every image of the study as (relative path, dataset), series by series."""
    p = r.profile
    nz = r.grid.shape[0]
    frame_uid = synthetic_uid(ident.study_uid, "frame")
    study = _study_dataset(r, ident, frame_uid)
    study.ReferencedPerformedProcedureStepSequence = _procedure_step(ident)
    positions = [r.grid.slice_position(k) for k in range(nz)]
    normal = r.grid.normal
    for plan in plan_series(p, ident.study_uid):
        series = Dataset()
        series.update(study)
        series.SeriesInstanceUID = plan.uid
        series.SeriesNumber = plan.number
        series.SeriesDescription = plan.description
        first = ident.start + dt.timedelta(seconds=r.phase_times_s[plan.phases[0]])
        series.SeriesTime = _tm(first)
        if p.temporal_position_tags and len(plan.phases) > 1:
            series.NumberOfTemporalPositions = len(plan.phases)
        for pos, phase in enumerate(plan.phases):
            when = ident.start + dt.timedelta(seconds=r.phase_times_s[phase])
            for k in range(nz):
                ds = Dataset()
                ds.update(series)
                number = _instance_number(p, plan, pos, k, nz)
                ds.SOPInstanceUID = synthetic_uid(plan.uid, str(number))
                ds.AcquisitionTime = ds.ContentTime = _tm(when)
                ds.TriggerTime = _ds(r.phase_times_s[phase] * 1000.0)
                ds.AcquisitionNumber = phase + 1 if p.vendor != "GE" else 1
                ds.InstanceNumber = number
                if p.temporal_position_tags and len(plan.phases) > 1:
                    ds.TemporalPositionIdentifier = pos + 1
                ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
                ds.SliceLocation = _ds(float(np.dot(positions[k], normal)))
                ds.PixelData = np.ascontiguousarray(r.acquired.stored[phase, k]).tobytes()
                yield Path(f"{plan.number:03d}") / f"{number:04d}.dcm", ds


def write_study(r: Rendering, ident: StudyIdentity, dicom_dir: Path) -> list[dict[str, object]]:
    """Write every image under ``dicom_dir``; returns one summary entry per series."""
    series: dict[str, dict[str, object]] = {}
    for rel, ds in iter_images(r, ident):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = dicom_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        entry = series.setdefault(str(rel.parent), {
            "series_number": int(ds.SeriesNumber),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "description": str(ds.SeriesDescription),
            "instances": 0,
        })
        entry["instances"] = int(entry["instances"]) + 1  # type: ignore[call-overload]
    return list(series.values())
