"""A resumable on-disk cache of per-acquisition measurements.

One JSON file per acquisition, named by its first SeriesInstanceUID and a digest of its
series and SOP instance UIDs plus the measurement version, so that a changed series or a new
feature set is measured again and nothing else is. Each file is written to a temporary name
and renamed into place (``os.replace`` is atomic on POSIX), so a run killed at any moment
leaves only whole entries, and the next run resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from evaluation.audit.inventory import Entry


class FeatureCache:
    """Measurements keyed by acquisition content and measurement version."""

    def __init__(self, folder: Path, version: str) -> None:
        self.folder = folder
        self.version = version

    def path(self, entry: Entry) -> Path:
        digest = hashlib.sha256(f"{self.version}\n{entry.content_digest()}".encode()).hexdigest()
        return self.folder / f"{entry.uid}-{digest[:20]}.json"

    def get(self, entry: Entry) -> dict[str, Any] | None:
        """The stored measurement, or None when absent or unreadable (then it is redone)."""
        try:
            record = json.loads(self.path(entry).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, entry: Entry, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(entry)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
