"""The spool: received instances on disk, written durably before the sender hears Success.

File names are made here (a random hex name under the day's folder), never from strings the
sender chose, so no header value can become a path. Two instances with the same
SOPInstanceUID (some test files share one) are kept side by side, not overwritten.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` so that it survives a crash once this returns.

    Temporary file, fsync, atomic rename, then fsync of the folder so the rename itself is
    on disk. On any failure nothing is left under ``name``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    temporary = folder / f".{name}.partial"
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_dir(folder)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


class Spool:
    """Where the node keeps what it received, one folder per day."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self, data: bytes) -> Path:
        """Store one encoded instance (DICOM file format) and return its path."""
        day = time.strftime("%Y%m%d")
        return write_durably(self.root / day, f"{uuid.uuid4().hex}.dcm", data)
