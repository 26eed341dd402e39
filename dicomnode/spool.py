"""The spool: received instances on disk, written durably before the sender hears Success.

File names are made here (a random hex name under the day's folder), never from strings the
sender chose, so no header value can become a path. Two instances with the same
SOPInstanceUID (some test files share one) are kept side by side, not overwritten.

Every file goes through the same steps: a hidden ``.NAME.partial`` file, fsync, atomic
rename to ``NAME``, fsync of the folder so the rename itself is on disk. A ``.partial`` file
was never acknowledged; start-up removes any that a crash left behind.
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


class PartialFile:
    """``folder/.name.partial``, created and open, that :meth:`commit` turns into ``name``.

    Creating the file is a good part of a durable write's time on ext4; the network makes
    the next one while the sender is still sending, so that the instance's own write starts
    with its data.
    """

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.final = folder / name
        self.temporary = folder / f".{name}.partial"
        self._fd: int | None = os.open(
            self.temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def commit(self, data: bytes) -> Path:
        """Write ``data`` and make the file durable under its name; on any failure nothing
        is left under either name."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.temporary} was already committed or released")
        self._fd = None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.temporary, self.final)
            _fsync_dir(self.final.parent)
        except BaseException:
            self.temporary.unlink(missing_ok=True)
            raise
        return self.final

    def release(self) -> None:
        """Give the file up unused."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.temporary.unlink(missing_ok=True)


def write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` so that it survives a crash once this returns.

    Temporary file, fsync, atomic rename, then fsync of the folder so the rename itself is
    on disk. On any failure nothing is left under ``name``.
    """
    return PartialFile(folder, name).commit(data)


class Spool:
    """Where the node keeps what it received, one folder per day."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def reserve(self) -> PartialFile:
        """A new spool file, empty, for :meth:`PartialFile.commit`."""
        return PartialFile(self.root / time.strftime("%Y%m%d"), f"{uuid.uuid4().hex}.dcm")

    def store(self, data: bytes) -> Path:
        """Store one encoded instance (DICOM file format) and return its path."""
        return self.reserve().commit(data)
