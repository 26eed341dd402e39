"""The sidecar's assessment as a DICOM SR: a TID 1500 Measurement Report, Comprehensive 3D SR.

Built with highdicom (shared/reference/dicom-provenance.md, "Quality report (DICOM SR)"):

- Comprehensive 3D SR Storage (1.2.840.10008.5.1.4.1.1.88.34) in the study of the series it
  judges; the Patient and General Study modules come from the original (highdicom copies
  them from the first evidence dataset);
- evidence: the original and the harmonized instances, listed in Current Requested Procedure
  Evidence Sequence (0040,A375) (PS3.3 C.17.2), and their series named again in the
  measurement group, the original as (121323, DCM, "Source series for image processing
  operation");
- TID 1500 with observation context TID 1001/1002/1004 (a device observer, the node),
  procedure reported (241615005, SCT, "MRI of breast") and one TID 1501 measurement group:
  tracking identifier (TID 4108), algorithm identification (TID 4019: the harmonization
  method, the node's version, the model and its sha256 as parameters), TID 300 measurements
  with UCUM units and qualitative evaluations (the verdict, the BI-RADS kinetic curve types
  with DCM 130597-130599 of CID 6345 "MRI Enhancement Pattern"), and the verdict's reasons as
  TEXT items (TID 1501 is extensible, PS3.16 A.1).

Concepts with no standard code (the sidecar's measures, the verdict and its values) use the
private coding scheme ``99DICOMNODE`` (PS3.16 8.2: a designator beginning with "99" is
private), declared in Coding Scheme Identification Sequence (0008,0110).

UIDs are derived from the harmonized series' UIDs (UUID-derived, PS3.5 B.2), so a re-run on
the same series sends the same SR again instead of a second one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from dicomnode import __version__
from evaluation.sidecar import PERCENT, RATIO, Assessment, Verdict

PRIVATE_SCHEME = "99DICOMNODE"
_UID_NAMESPACE = uuid.UUID("0c5e8f8a-3b1d-5e2a-8f47-9d2b6c4a1e03")  # dicomnode quality reports
# Placed after the node's derived series (source + 1000) so a viewer lists it beside them.
_SERIES_NUMBER_OFFSET = 1000
_MAX_LONG_TEXT = 1024


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


UNITS = {
    RATIO: hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units"),
    PERCENT: hd.sr.CodedConcept(value="%", scheme_designator="UCUM", meaning="percent"),
}

# Concept names of the sidecar's measurements, by Assessment field (99DICOMNODE).
_MEASURES = {
    "intensity_distance_before": ("IDIST-ORIG", "Intensity distance to reference, original"),
    "intensity_distance_after": ("IDIST-HARM", "Intensity distance to reference, harmonized"),
    "gradient_similarity_pre": ("GRADSIM-PRE", "Gradient similarity, pre-contrast"),
    "gradient_similarity_post": ("GRADSIM-POST1", "Gradient similarity, first post-contrast"),
    "fgt_density_before": ("FGTD-ORIG", "FGT density, original"),
    "fgt_density_after": ("FGTD-HARM", "FGT density, harmonized"),
    "fgt_density_change": ("FGTD-CHANGE", "FGT density change"),
    "fgt_pe_change": ("PEDIFF-FGT", "Largest percent enhancement change, FGT"),
    "lesion_pe_change": ("PEDIFF-LESION", "Largest percent enhancement change, most enhancing"),
    "source_probability_before": ("SRCPROB-ORIG", "Source domain probability, original"),
    "source_probability_after": ("SRCPROB-HARM", "Source domain probability, harmonized"),
    "reference_probability_after": ("REFPROB-HARM", "Reference domain probability, harmonized"),
}
MEASUREMENT_CODES = {key: _private(*code) for key, code in _MEASURES.items()}

VERDICT_NAME = _private("VERDICT", "Harmonization quality verdict")
VERDICT_VALUES: dict[Verdict, hd.sr.CodedConcept] = {
    "pass": _private("PASS", "Pass"),
    "warn": _private("WARN", "Warn"),
    "fail": _private("FAIL", "Fail"),
}
REASON_NAME = _private("VERDICT-REASON", "Verdict reason")
HARMONIZED_SERIES_NAME = _private("HARM-SERIES", "Harmonized series")
CURVE_TYPE_NAMES = {
    ("fgt", 0): _private("CTYPE-FGT-ORIG", "Kinetic curve type, FGT, original"),
    ("fgt", 1): _private("CTYPE-FGT-HARM", "Kinetic curve type, FGT, harmonized"),
    ("lesion", 0): _private("CTYPE-LES-ORIG", "Kinetic curve type, most enhancing, original"),
    ("lesion", 1): _private("CTYPE-LES-HARM", "Kinetic curve type, most enhancing, harmonized"),
}
CURVE_TYPE_VALUES = {
    "persistent": codes.DCM.PersistentDelayedPhaseType1Curve,
    "plateau": codes.DCM.PlateauDelayedPhaseType2Curve,
    "washout": codes.DCM.WashoutDelayedPhaseType3Curve,
}


def report_uid(derived: Sequence[Dataset], what: str) -> str:
    """A UID fixed by the harmonized series' UIDs and ``what`` it names (PS3.5 B.2)."""
    series = sorted({str(ds.SeriesInstanceUID) for ds in derived})
    name = "|".join([*series, "quality report", what])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _series_uids(datasets: Sequence[Dataset]) -> list[str]:
    return list(dict.fromkeys(str(ds.SeriesInstanceUID) for ds in datasets))


def _group(assessment: Assessment, source: Sequence[Dataset], derived: Sequence[Dataset],
           algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [
        hd.sr.Measurement(name=MEASUREMENT_CODES[key], value=m.value, unit=UNITS[m.unit])
        for key, m in assessment.measurements().items()
    ]
    evaluations = [hd.sr.QualitativeEvaluation(VERDICT_NAME, VERDICT_VALUES[assessment.verdict])]
    for region, types in assessment.curve_types().items():
        for when, kind in enumerate(types):
            if kind is not None:
                evaluations.append(hd.sr.QualitativeEvaluation(
                    CURVE_TYPE_NAMES[(region, when)], CURVE_TYPE_VALUES[kind]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=report_uid(derived, "tracking"),
            identifier=f"harmonization quality {assessment.source_domain} to "
                       f"{assessment.reference_domain}"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    content = group[0].ContentSequence
    for uid in _series_uids(source):
        content.append(hd.sr.UIDRefContentItem(
            name=codes.DCM.SourceSeriesForImageProcessingOperation, value=uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for uid in _series_uids(derived):
        content.append(hd.sr.UIDRefContentItem(
            name=HARMONIZED_SERIES_NAME, value=uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for reason in assessment.reasons:
        content.append(hd.sr.TextContentItem(
            name=REASON_NAME, value=f"{reason.verdict}: {reason.text}"[:_MAX_LONG_TEXT],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _separate(item: Dataset) -> None:
    """Mark every container SEPARATE: its items are distinct observations, not one running
    text (PS3.3 C.17.3.2.3); DCMTK's dsr2html then shows each measurement's name."""
    if item.ValueType == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate(child)


def quality_report(
    assessment: Assessment, source: Sequence[Dataset], derived: Sequence[Dataset], *,
    method: str, model: str, model_sha256: str, version: str = __version__,
    series_number: int | None = None, when: dt.datetime | None = None,
) -> Dataset:
    """The SR of ``assessment`` for the ``source`` series and their ``derived`` harmonization.

    ``source`` and ``derived`` are the instances' datasets (headers suffice). The SR joins the
    source's study; ``series_number`` defaults to the derived series' number + 1000.
    SyntheticData (0008,001C) is YES when the source says so. ``when`` (default now, UTC)
    sets the instance creation and content date and time.
    """
    if not source or not derived:
        raise ValueError("a quality report needs the source and the derived instances")
    studies = {str(ds.StudyInstanceUID) for ds in [*source, *derived]}
    if len(studies) != 1:
        raise ValueError(f"source and derived instances span {len(studies)} studies")
    when = when or dt.datetime.now(dt.UTC)
    algorithm = hd.sr.AlgorithmIdentification(
        name=method, version=version, manufacturer="dicomnode",
        parameters=[f"model {model}", f"model sha256 {model_sha256}",
                    f"source domain {assessment.source_domain}",
                    f"reference domain {assessment.reference_domain}"],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=f"2.25.{uuid.uuid5(_UID_NAMESPACE, 'dicomnode device observer').int}",
            name="dicomnode", manufacturer_name="dicomnode",
            model_name="dicomnode harmonization node"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.MRIOfBreast,
        imaging_measurements=[_group(assessment, source, derived, algorithm)],
    )
    _separate(report[0])
    if series_number is None:
        series_number = int(derived[0].get("SeriesNumber") or 0) + _SERIES_NUMBER_OFFSET
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source, *derived],
        content=report[0],
        series_instance_uid=report_uid(derived, "series"),
        series_number=series_number,
        sop_instance_uid=report_uid(derived, "instance"),
        instance_number=1,
        manufacturer="dicomnode",
        manufacturer_model_name="dicomnode harmonization node",
        software_versions=version,
        series_description=f"Harmonization quality [{method}]: {assessment.verdict}",
        is_complete=True,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="dicomnode harmonization quality concepts",
            responsible_organization="dicomnode")],
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )
    # highdicom stamps local time; one UTC moment for all four, like the derived series.
    sr.InstanceCreationDate = DA(when.date())
    sr.InstanceCreationTime = TM(when.time())
    if any(str(ds.get("SyntheticData", "")).upper() == "YES" for ds in source):
        sr.SyntheticData = "YES"
    return sr
