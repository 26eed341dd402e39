"""Delivery: send a job's output to one destination, a DICOM peer or a local folder.

A delivery either sends every file or raises DeliveryError; the pipeline records the attempt
in the ledger and schedules the retry with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt

from dicomnode.config import DeliveryPolicy, DicomDestination, FolderDestination
from dicomnode.network import set_nodelay
from dicomnode.spool import write_durably


class DeliveryError(RuntimeError):
    """The destination did not take every file; the message says which and why."""


def backoff_seconds(attempts: int, policy: DeliveryPolicy) -> float:
    """Exponential backoff after ``attempts`` failures, capped."""
    return float(min(policy.backoff_cap_seconds, policy.backoff_seconds * 2 ** (attempts - 1)))


def deliver(
    files: Sequence[Path],
    destination: DicomDestination | FolderDestination,
    folder_name: str,
    calling_ae: str,
    policy: DeliveryPolicy,
) -> None:
    """Send ``files`` to ``destination``. Folder copies go under ``folder_name``."""
    if isinstance(destination, FolderDestination):
        _copy_to_folder(files, destination.path / folder_name)
    else:
        _c_store(files, destination, calling_ae, policy)


def _copy_to_folder(files: Sequence[Path], folder: Path) -> None:
    try:
        for path in files:
            write_durably(folder, path.name, path.read_bytes())
    except OSError as exc:
        raise DeliveryError(f"cannot write to {folder}: {exc.strerror or exc}") from exc


def _c_store(
    files: Sequence[Path], destination: DicomDestination, calling_ae: str, policy: DeliveryPolicy
) -> None:
    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = policy.timeout_seconds
    ae.maximum_pdu_size = 131072
    for sop_class, syntax in sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ):
        ae.add_requested_context(sop_class, syntax)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
    )
    if not assoc.is_established:
        raise DeliveryError(f"{where}: association rejected, aborted or never connected")
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise DeliveryError(f"{where}: no C-STORE response for {path.name}")
            # 0xB000, 0xB007, 0xB006: warnings, stored all the same (PS3.4 Table B.2-1).
            if code != 0x0000 and code not in (0xB000, 0xB006, 0xB007):
                raise DeliveryError(f"{where}: C-STORE of {path.name} failed, status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
