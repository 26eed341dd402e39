"""Intake: from an instance's bytes in the spool to its row in the ledger.

Used by the C-STORE handler for every instance, and at start-up to recover spool files that
have no ledger row (the node stopped between the two writes). The spool file is the record
of what was acknowledged; the ledger row can always be rebuilt from it, which is why the
file meta carries the sending and receiving AE titles (PS3.10 7.1, (0002,0017) and (0002,0018)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.tag import Tag

from dicomnode.assembly import (
    ACQUISITION_KEY_TAGS,
    EXPECTED_COUNT_TAGS,
    acquisition_key,
    expected_count,
)
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.validation import (
    CHECKED_TAGS,
    STATUS_CANNOT_UNDERSTAND,
    Verdict,
    check,
    read_whole,
)

RECOVERED_PEER = "unknown (recovered from the spool)"
# What intake reads of each instance: the verdict's tags, the expected count's, the
# acquisition key's, the charset.
_INTAKE_TAGS = [*map(Tag, ["SpecificCharacterSet", *CHECKED_TAGS]), *EXPECTED_COUNT_TAGS,
                *ACQUISITION_KEY_TAGS]


@dataclass(frozen=True)
class Examined:
    """What intake reads of one instance: its verdict, UIDs, expected series count and
    acquisition key (:func:`dicomnode.assembly.acquisition_key`)."""

    verdict: Verdict
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_uid: str | None
    series_uid: str | None
    expected: int | None
    acquisition: str | None


@dataclass(frozen=True)
class Registered:
    """The ledger row an instance got, and the status its sender hears."""

    instance_id: int
    verdict: Verdict


def examine(
    data: bytes, sop_instance_uid: str | None = None, sop_class_uid: str | None = None
) -> Examined:
    """Check an instance's bytes (DICOM file format) against its C-STORE request.

    ``sop_instance_uid`` and ``sop_class_uid`` are the request's Affected SOP Instance and
    Class UIDs, which the data set must match. Only reads ``data``, so the network runs it
    while the same bytes are being fsynced.
    """
    expected = None
    acquisition = None
    ds: Dataset
    try:
        ds = read_whole(data, _INTAKE_TAGS)
        verdict = check(ds, sop_class_uid, sop_instance_uid,
                        str(ds.file_meta.get("TransferSyntaxUID", "")))
        expected = expected_count(ds)
        acquisition = acquisition_key(ds)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "cannot understand"
        ds = Dataset()
        verdict = Verdict(STATUS_CANNOT_UNDERSTAND, f"malformed DICOM: {exc}")
    accepted = verdict.accepted
    return Examined(
        verdict=verdict,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or sop_instance_uid,
        sop_class_uid=str(ds.get("SOPClassUID", "")) or sop_class_uid,
        study_uid=str(ds.StudyInstanceUID) if accepted else None,
        series_uid=str(ds.SeriesInstanceUID) if accepted else None,
        expected=expected if accepted else None,
        acquisition=acquisition if accepted else None,
    )


def record(
    ledger: Ledger, path: Path, examined: Examined, calling_ae: str, peer: str, size: int
) -> Registered:
    """Add the ledger row of a spooled, examined instance.

    A rejected instance is filed under no study, with the reason, and is quarantined on its
    own.
    """
    instance_id = ledger.add_instance(
        path=str(path),
        sop_instance_uid=examined.sop_instance_uid,
        sop_class_uid=examined.sop_class_uid,
        study_uid=examined.study_uid,
        series_uid=examined.series_uid,
        calling_ae=calling_ae,
        peer=peer,
        size=size,
        parse_error=examined.verdict.reason,
        expected=examined.expected,
        acquisition=examined.acquisition,
    )
    return Registered(instance_id, examined.verdict)


def register(
    ledger: Ledger,
    path: Path,
    data: bytes,
    calling_ae: str,
    peer: str,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
) -> Registered:
    """Check a spooled instance and add its ledger row (:func:`examine`, then :func:`record`)."""
    examined = examine(data, sop_instance_uid, sop_class_uid)
    return record(ledger, path, examined, calling_ae, peer, len(data))


def _sending_ae(path: Path) -> str:
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
        return str(meta.get("SendingApplicationEntityTitle", "") or "unknown")
    except Exception:  # noqa: BLE001 - the row is recorded as malformed anyway
        return "unknown"


def recover_spool(spool_root: Path, ledger: Ledger) -> int:
    """Register spool files the ledger does not know, unless they are empty or cut short.

    A spool file without a ledger row was never answered Success (the row comes first). One
    that is empty or does not read whole was being made or written when the node stopped:
    it is removed (the sender heard no Success and sends it again). A whole one is
    registered: it is what the sender sent. (``.partial`` files are an older node's.)
    """
    if not spool_root.is_dir():
        return 0
    for partial in spool_root.rglob(".*.partial"):
        partial.unlink(missing_ok=True)
    known = ledger.instance_paths()
    recovered = 0
    for path in sorted(spool_root.rglob("*.dcm")):
        if str(path) in known:
            continue
        data = path.read_bytes()
        examined = examine(data)
        if not data or examined.verdict.status == STATUS_CANNOT_UNDERSTAND:
            path.unlink(missing_ok=True)
            get_logger(path=str(path)).warning(
                "spool_file_removed", size=len(data), reason=examined.verdict.reason,
                why="never answered Success, and empty or cut short")
            continue
        registered = record(ledger, path, examined, _sending_ae(path), RECOVERED_PEER,
                            len(data))
        get_logger(instance_id=registered.instance_id).warning(
            "instance_recovered", path=str(path), reason=registered.verdict.reason)
        recovered += 1
    return recovered
