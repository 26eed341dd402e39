"""Intake: from an instance's bytes in the spool to its row in the ledger.

Used by the C-STORE handler for every instance, and at start-up to recover spool files that
have no ledger row (the node stopped between the two writes). The spool file is the record
of what was acknowledged; the ledger row can always be rebuilt from it, which is why the
file meta carries the sending and receiving AE titles (PS3.10 7.1, (0002,0017) and (0002,0018)).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger

_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
RECOVERED_PEER = "unknown (recovered from the spool)"


def header_ids(data: bytes) -> tuple[dict[str, str | None], str | None]:
    """The UIDs the ledger files an instance under, or the reason they cannot be read."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        ids = {tag: (str(ds[tag].value) if tag in ds else None) for tag in _HEADER_TAGS}
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "malformed"
        return {tag: None for tag in _HEADER_TAGS}, f"malformed DICOM: {exc}"
    if not ids["StudyInstanceUID"] or not ids["SeriesInstanceUID"]:
        return ids, "StudyInstanceUID or SeriesInstanceUID is missing"
    return ids, None


def register(
    ledger: Ledger,
    path: Path,
    data: bytes,
    calling_ae: str,
    peer: str,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
) -> int:
    """Add the ledger row for a spooled instance; unreadable UIDs file it under no study."""
    ids, parse_error = header_ids(data)
    return ledger.add_instance(
        path=str(path),
        sop_instance_uid=ids["SOPInstanceUID"] or sop_instance_uid,
        sop_class_uid=ids["SOPClassUID"] or sop_class_uid,
        # An instance whose UIDs cannot be read is quarantined on its own.
        study_uid=None if parse_error else ids["StudyInstanceUID"],
        series_uid=None if parse_error else ids["SeriesInstanceUID"],
        calling_ae=calling_ae,
        peer=peer,
        size=len(data),
        parse_error=parse_error,
    )


def _sending_ae(path: Path) -> str:
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
        return str(meta.get("SendingApplicationEntityTitle", "") or "unknown")
    except Exception:  # noqa: BLE001 - the row is recorded as malformed anyway
        return "unknown"


def recover_spool(spool_root: Path, ledger: Ledger) -> int:
    """Register spool files the ledger does not know; drop never-acknowledged partials."""
    if not spool_root.is_dir():
        return 0
    for partial in spool_root.rglob(".*.partial"):
        partial.unlink(missing_ok=True)
    known = ledger.instance_paths()
    recovered = 0
    for path in sorted(spool_root.rglob("*.dcm")):
        if str(path) in known:
            continue
        instance_id = register(ledger, path, path.read_bytes(), _sending_ae(path), RECOVERED_PEER)
        get_logger(instance_id=instance_id).warning("instance_recovered", path=str(path))
        recovered += 1
    return recovered
