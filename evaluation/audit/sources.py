"""Where the audited instances come from: a folder tree, or a PACS queried over DICOM.

A PACS is queried with C-FIND at STUDY, then SERIES level of the Study Root information model
(PS3.4 C.6.2), and each MR series is fetched with C-GET (PS3.4 C.4.3), whose C-STORE
sub-operations come back on the same association: no port of ours has to be reachable from
the PACS, and the SCP role for the storage classes is asked for by role selection (PS3.7
D.3.3.4). pynetdicom is imported inside these functions only: evaluation must not load the
network stack to be imported (tests/test_architecture.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from tqdm import tqdm

from dicomnode.assembly import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE, dicom_files
from evaluation.audit.errors import AuditError

if TYPE_CHECKING:
    from pynetdicom.association import Association

# Study Root Query/Retrieve Information Model - FIND and - GET (PS3.4 C.6.2.1).
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
# What an audit reads (dicomnode.assembly); nothing else is asked for.
STORAGE_CLASSES = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)
# Uncompressed first, then the lossless compressions archives keep (pydicom decodes them with
# the pylibjpeg plugins the project installs); lossy ones would change the measured pixels.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless,
)
_PENDING = (0xFF00, 0xFF01)
_TIMEOUT_S = 60.0
_PACS_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
# PS3.8 9.3.4 (A-ASSOCIATE-RJ): reasons by (source, diagnostic).
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given (presentation layer)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


@dataclass(frozen=True)
class PacsAddress:
    """``AET@host:port`` of the archive to audit."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_pacs(text: str) -> PacsAddress:
    """Parse ``AET@host:port``; ValueError with the expected form otherwise."""
    match = _PACS_RE.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"expected AET@host:port (e.g. ORTHANC@127.0.0.1:4242), got {text!r}")
    return PacsAddress(match["aet"], match["host"], int(match["port"]))


def folder_files(root: Path) -> list[Path]:
    """Every DICOM file under ``root``; AuditError when there is none."""
    if not root.is_dir():
        raise AuditError(f"source folder {root} does not exist or is not a folder")
    files = dicom_files([root])
    if not files:
        raise AuditError(f"no DICOM files under {root}: nothing to audit")
    return files


def retrieve_from_pacs(pacs: PacsAddress, calling_ae: str, dest: Path,
                       progress: bool = True) -> int:
    """C-FIND every MR series of ``pacs`` and C-GET it into ``dest``; the instance count.

    Raises AuditError naming the peer when it refuses or drops the association, refuses a
    query, or does not deliver every instance of a series.
    """
    from pynetdicom import AE, build_role, evt

    received = 0
    connected = False

    def on_open(event: Any) -> None:
        nonlocal connected
        connected = True

    def on_store(event: Any) -> int:
        nonlocal received
        ds = event.dataset
        folder = dest / _safe(str(ds.SeriesInstanceUID))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{_safe(str(ds.SOPInstanceUID))}.dcm"
        tmp = target.with_suffix(".part")
        tmp.write_bytes(event.encoded_dataset())
        os.replace(tmp, target)
        received += 1
        return 0x0000

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT_S
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(STUDY_ROOT_GET)
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
    dest.mkdir(parents=True, exist_ok=True)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, ext_neg=list(roles),
                         evt_handlers=[(evt.EVT_C_STORE, on_store),
                                       (evt.EVT_CONN_OPEN, on_open)])
    if not assoc.is_established:
        raise AuditError(_refusal(pacs, calling_ae, assoc, connected))
    try:
        # Each C-FIND runs to its final response before the next starts: one association
        # carries one operation at a time unless asynchronous operations were negotiated.
        studies = list(_find(assoc, pacs, _query("STUDY")))
        series = [
            s for study in studies
            for s in list(_find(assoc, pacs, _query("SERIES", study.StudyInstanceUID)))
            if str(s.get("Modality", "")) == "MR"
        ]
        if not series:
            raise AuditError(f"PACS {pacs} holds no MR series: nothing to audit")
        for item in tqdm(series, desc="C-GET", unit="series", disable=not progress):
            _get(assoc, pacs, item)
    finally:
        if assoc.is_established:
            assoc.release()
    return received


def _safe(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is replaced)."""
    return re.sub(r"[^0-9A-Za-z.]", "_", uid) or "unknown"


def _refusal(pacs: PacsAddress, calling_ae: str, assoc: Association, connected: bool) -> str:
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    answer = assoc.acceptor.primitive
    if assoc.is_rejected and isinstance(answer, A_ASSOCIATE):
        source, diagnostic = int(answer.result_source or 0), int(answer.diagnostic or 0)
        reason = _REJECT_REASONS.get((source, diagnostic), f"diagnostic {diagnostic}")
        return (f"PACS {pacs} rejected the association from {calling_ae} "
                f"(result {answer.result}, source {source}: {reason})")
    if connected:
        return (f"PACS {pacs} accepted the connection but aborted or did not answer the "
                f"association request from {calling_ae}")
    return (f"could not connect to PACS {pacs} (connection refused, host unreachable, or no "
            f"answer within {_TIMEOUT_S:.0f} s)")


def _query(level: str, study_uid: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    if level == "SERIES":
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.NumberOfSeriesRelatedInstances = ""
    return ds


def _find(assoc: Association, pacs: PacsAddress, query: Dataset) -> Iterator[Dataset]:
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        code = int(status.Status) if "Status" in status else None
        if code in _PENDING and identifier is not None:
            yield identifier
        elif code != 0x0000:
            raise AuditError(
                f"PACS {pacs} refused the C-FIND at {query.QueryRetrieveLevel} level "
                f"({_status_text(code)}); does it allow queries from this AE title?"
            )


def _get(assoc: Association, pacs: PacsAddress, series: Dataset) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = series.StudyInstanceUID
    query.SeriesInstanceUID = series.SeriesInstanceUID
    final: Dataset | None = None
    for status, _ in assoc.send_c_get(query, STUDY_ROOT_GET):
        final = status
    code = int(final.Status) if final is not None and "Status" in final else None
    if code != 0x0000:
        failed = final.get("NumberOfFailedSuboperations", "?") if final is not None else "?"
        raise AuditError(
            f"PACS {pacs} did not deliver series {series.SeriesInstanceUID} by C-GET "
            f"({_status_text(code)}, {failed} failed sub-operations); does it allow C-GET "
            "from this AE title?"
        )


def _status_text(code: int | None) -> str:
    return "no response: association lost or timed out" if code is None else f"status 0x{code:04X}"
