"""Inventory: which acquisitions an archive holds, their scanner domain and their provenance.

Headers only (no pixels). A breast DCE acquisition may be one multiphase series (GE,
Philips) or one series per phase (Siemens) (shared/reference/breast-dce-physics.md,
"Typical vendor protocols"), so the unit of the audit is the acquisition as
:func:`dicomnode.assembly.group_acquisitions` finds it, named by its first series.

A harmonized series keeps the study, frame of reference and geometry of its source
(dicomnode/provenance.py), so originals and each harmonizer's outputs are split apart before
grouping, by the node's private block (group 0011, creator ``DICOMNODE HARMONIZATION 1``).
Its source acquisition is found through ReferencedSeriesSequence (PS3.3 C.12.2), so original
and harmonized versions of one acquisition pair up.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

from dicomnode.assembly import (
    AssemblyError,
    group_acquisitions,
    read_header,
    scanner_domain,
    unsupported_reason,
)
from dicomnode.provenance import Provenance, read_provenance

HARMONIZED_PREFIX = "harmonized: "


@dataclass
class Entry:
    """One acquisition to audit: its files, its domain, and what it was made from."""

    uid: str  # the first series (lowest SeriesNumber), the acquisition's name everywhere
    series_uids: tuple[str, ...]
    sop_uids: tuple[str, ...]
    files: tuple[Path, ...]
    study_uid: str
    patient_id: str
    domain: str  # "VENDOR FIELDT MODEL" of the scanner that acquired it
    scanner: str  # the profile-style vendor-field name, e.g. "siemens-3t"
    provenance: Provenance | None = None
    referenced_series: tuple[str, ...] = ()
    source_uid: str | None = None  # for a harmonized entry: the original it came from
    group: str = ""  # the domain, or "harmonized: method/model from <origin>"
    origin: str = ""  # the scanner domain the pixels were acquired on

    @property
    def harmonized(self) -> bool:
        return self.provenance is not None

    @property
    def folder(self) -> Path:
        """The deepest folder holding all its files, for messages."""
        parents = {f.parent for f in self.files}
        return Path(*_common_parts([p.parts for p in parents]))

    def content_digest(self) -> str:
        """A digest of the instances it is made of: a changed series gets a new one."""
        text = "\n".join([*sorted(self.series_uids), "", *sorted(self.sop_uids)])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Inventory:
    entries: list[Entry]
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> instance count


def _common_parts(parts: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    common = list(parts[0])
    for other in parts[1:]:
        n = 0
        while n < min(len(common), len(other)) and common[n] == other[n]:
            n += 1
        common = common[:n]
    return tuple(common)


def domain_label(ds: Dataset) -> tuple[str, str]:
    """(``"GE 1.5T SIGNA HDxt"``, ``"ge-1.5t"``): vendor x nominal field x model name."""
    domain = scanner_domain(ds)
    if domain is None:  # unsupported_reason() has filtered these out already
        raise AssemblyError(f"instance {ds.get('SOPInstanceUID', '?')}: scanner domain unknown")
    model = str(ds.get("ManufacturerModelName", "") or "").strip() or "unknown model"
    return f"{domain.vendor} {domain.field_t:g}T {model}", domain.name


def provenance_of(ds: Dataset) -> Provenance | None:
    """The node's provenance block, or None for an original series."""
    prov = read_provenance(ds)
    return prov if prov is not None and prov.method else None


def _split_key(ds: Dataset) -> tuple[str, ...]:
    prov = provenance_of(ds)
    return () if prov is None else (prov.method, prov.model, prov.model_sha256)


def build_inventory(files: Sequence[Path]) -> Inventory:
    """Read every file's header and group the usable ones into acquisitions."""
    ignored: Counter[str] = Counter()
    by_split: dict[tuple[str, ...], list[Dataset]] = defaultdict(list)
    paths: dict[str, Path] = {}
    for path in files:
        try:
            ds = read_header(path)
        except AssemblyError:
            ignored["unreadable DICOM"] += 1
            continue
        reason = unsupported_reason(ds)
        if reason is not None:
            ignored[reason] += 1
            continue
        paths[str(ds.SOPInstanceUID)] = path
        by_split[_split_key(ds)].append(ds)
    entries = [
        _entry(group, paths)
        for split in sorted(by_split)
        for group in group_acquisitions(by_split[split])
    ]
    _pair(entries)
    return Inventory(sorted(entries, key=lambda e: (e.harmonized, e.domain, e.uid)),
                     dict(ignored))


def _entry(datasets: list[Dataset], paths: dict[str, Path]) -> Entry:
    series_numbers: dict[str, float] = {}
    for ds in datasets:
        number = float(ds.get("SeriesNumber") or 0)
        uid = str(ds.SeriesInstanceUID)
        series_numbers[uid] = min(number, series_numbers.get(uid, number))
    first = datasets[0]
    label, scanner = domain_label(first)
    referenced = {
        str(item.SeriesInstanceUID)
        for ds in datasets
        for item in ds.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    }
    sop_uids = sorted({str(ds.SOPInstanceUID) for ds in datasets})
    return Entry(
        uid=min(series_numbers, key=lambda u: (series_numbers[u], u)),
        series_uids=tuple(sorted(series_numbers)),
        sop_uids=tuple(sop_uids),
        files=tuple(paths[uid] for uid in sop_uids),
        study_uid=str(first.get("StudyInstanceUID", "")),
        patient_id=str(first.get("PatientID", "") or ""),
        domain=label,
        scanner=scanner,
        provenance=provenance_of(first),
        referenced_series=tuple(sorted(referenced)),
    )


def _pair(entries: list[Entry]) -> None:
    """Link each harmonized entry to its source and name every entry's group."""
    owner = {s: e for e in entries if not e.harmonized for s in e.series_uids}
    for entry in entries:
        prov = entry.provenance
        if prov is None:
            entry.group = entry.origin = entry.domain
            continue
        sources = {owner[s].uid: owner[s] for s in entry.referenced_series if s in owner}
        source = next(iter(sources.values())) if len(sources) == 1 else None
        entry.source_uid = source.uid if source else None
        # The source's own label when it is in the archive; else what the node recorded.
        origin = source.domain if source else (prov.source_domain or "unknown source")
        entry.origin = origin
        entry.group = f"{HARMONIZED_PREFIX}{prov.method}/{prov.model} from {origin}"
