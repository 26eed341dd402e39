"""The spool: received instances on disk, written durably before the sender hears Success.

File names are made here (a random hex name under the day's folder), never from strings the
sender chose, so no header value can become a path. Two instances with the same
SOPInstanceUID (some test files share one) are kept side by side, not overwritten.

A spool file is made, under its final name, before its data arrives (:meth:`Spool.reserve`:
the network makes the next one while the sender is still sending), and its folder is fsynced
then. Its commit is then one write and one fsync, the folder's fsync already done: that
fsync is off the path between the last byte and Success. A spool file without a ledger row
was never answered Success (the row is committed before it); start-up removes those that
are empty or cut short (a reserve or a write a crash interrupted) and registers the rest.

Other durable writes (derived series, copies to folder destinations) go through a hidden
``.NAME.partial`` file, fsync, atomic rename to ``NAME`` and fsync of the folder, so that
a reader that finds ``NAME`` finds it whole (:func:`write_durably`).
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


def _write_and_fsync(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, fsync it, close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` so that it survives a crash once this returns.

    Temporary file, fsync, atomic rename, then fsync of the folder so the rename itself is
    on disk. On any failure nothing is left under ``name``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final, temporary = folder / name, folder / f".{name}.partial"
    try:
        _write_and_fsync(
            os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644), data)
        os.replace(temporary, final)
        _fsync_dir(folder)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


class SpoolFile:
    """A received instance's file, made empty and durable under its final name, then
    :meth:`commit` writes it (see the module doc)."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / name
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        _fsync_dir(folder)

    def commit(self, data: bytes) -> Path:
        """Write ``data`` and fsync it; on any failure the file is removed."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path} was already committed or released")
        self._fd = None
        try:
            _write_and_fsync(fd, data)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return self.path

    def release(self) -> None:
        """Give the file up unused."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


class Spool:
    """Where the node keeps what it received, one folder per day."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def reserve(self) -> SpoolFile:
        """A new spool file, empty, for :meth:`SpoolFile.commit`."""
        return SpoolFile(self.root / time.strftime("%Y%m%d"), f"{uuid.uuid4().hex}.dcm")

    def store(self, data: bytes) -> Path:
        """Store one encoded instance (DICOM file format) and return its path."""
        return self.reserve().commit(data)
