"""Group-level metrics of an audit, from the per-acquisition measurements.

Every figure comes from :mod:`evaluation.metrics` (FRD, identifiability, percent enhancement,
intensity distance, constant-feature check), so the audit, the benchmark and the sidecar
report agree on what a number means. Groups are scanner domains of the originals and, for
harmonized series, ``harmonized: method/model from <source domain>``.

- FRD: each group to the reference group (Konz et al. 2024).
- Identifiability: cross-validated ROC AUC of telling the original domains apart, and, per
  harmonization method, of telling the source domains of its outputs (with the reference
  originals) apart: harmonization should bring it towards 0.5.
- Pairs: a harmonized acquisition against its own original (ReferencedSeriesSequence):
  change of FGT density and whether the kinetic curve type survived.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.audit.errors import AuditError
from evaluation.audit.inventory import Entry
from evaluation.metrics import (
    Identifiability,
    MetricError,
    check_not_constant,
    frd,
    identifiability,
    intensity_distance,
    quantiles,
)


@dataclass
class Table:
    """Measured acquisitions and their features, row by row."""

    entries: list[Entry]
    records: list[dict[str, Any]]
    names: list[str]
    x: np.ndarray  # (acquisitions, features)
    dropped: list[dict[str, str]] = field(default_factory=list)

    def rows(self, group: str) -> np.ndarray:
        return np.array([i for i, e in enumerate(self.entries) if e.group == group], dtype=int)

    @property
    def groups(self) -> list[str]:
        return sorted({e.group for e in self.entries}, key=lambda g: (g.startswith("harm"), g))


@dataclass
class Analysis:
    table: Table
    reference: str
    reference_rows: np.ndarray
    metrics: dict[str, Any]
    roc: dict[str, Identifiability]  # "original", "harmonized: <method>"
    embedding: np.ndarray  # (acquisitions, 2)


def feature_table(entries: Sequence[Entry], records: dict[str, dict[str, Any]],
                  drop_constant: bool) -> Table:
    """The feature matrix; a feature constant within a group is an error unless dropped."""
    names = sorted(records[entries[0].uid]["features"])
    dropped: list[dict[str, str]] = []
    for entry in entries:
        have = records[entry.uid]["features"]
        if sorted(have) != names:
            raise AuditError(f"series {entry.uid} ({entry.folder}) has another feature set "
                             "than the others; clear the cache and run again")
    x = np.array([[records[e.uid]["features"][n] for n in names] for e in entries], dtype=float)
    finite = np.isfinite(x).all(axis=0)
    for index in np.flatnonzero(~finite):
        bad = entries[int(np.flatnonzero(~np.isfinite(x[:, index]))[0])]
        dropped.append({"feature": names[index], "reason": f"not finite in series {bad.uid}"})
    table = Table(list(entries), [records[e.uid] for e in entries],
                  [n for n, ok in zip(names, finite, strict=True) if ok], x[:, finite], dropped)
    constant = np.zeros(len(table.names), dtype=bool)
    for group in table.groups:
        rows = table.rows(group)
        if len(rows) < 2:
            continue
        if not drop_constant:
            try:
                check_not_constant(table.x[rows], table.names, group)
            except MetricError as exc:
                raise AuditError(str(exc)) from exc
        now = np.ptp(table.x[rows], axis=0) == 0
        for index in np.flatnonzero(now & ~constant):
            table.dropped.append({"feature": table.names[index],
                                  "reason": f"constant across group {group!r}"})
        constant |= now
    if constant.all():
        raise AuditError("every feature is constant within some group: nothing left to compare")
    table.names = [n for n, c in zip(table.names, constant, strict=True) if not c]
    table.x = table.x[:, ~constant]
    return table


def reference_group(entries: Sequence[Entry], requested: str | None) -> tuple[str, list[int]]:
    """The reference group's name and rows: ``requested`` (a domain label or a profile-style
    name such as ``siemens-3t``), else the harmonizers' one target domain when the archive
    holds it, else the most common original domain."""
    originals = [i for i, e in enumerate(entries) if not e.harmonized]
    if not originals:
        raise AuditError("the audit holds no original series to compare against")

    def matching(name: str) -> list[int]:
        return [i for i in originals if name in (entries[i].domain, entries[i].scanner)]

    if requested:
        rows = matching(requested)
        if not rows:
            known = sorted({entries[i].domain for i in originals}
                           | {entries[i].scanner for i in originals})
            raise AuditError(f"--reference-domain {requested!r} matches no original series; "
                             f"known: {', '.join(known)}")
        return requested, rows
    targets = {e.provenance.target_domain for e in entries if e.provenance}
    if len(targets) == 1 and (rows := matching(next(iter(targets)))):
        return next(iter(targets)), rows
    counts = Counter(entries[i].domain for i in originals)
    top = max(sorted(counts), key=lambda d: counts[d])
    return top, matching(top)


def analyse(table: Table, requested_reference: str | None) -> Analysis:
    entries = table.entries
    reference, ref_list = reference_group(entries, requested_reference)
    ref_rows = np.asarray(ref_list, dtype=int)
    ref_set = set(ref_list)
    ref_quantiles = quantiles(np.concatenate([table.records[i]["quantiles"] for i in ref_list]),
                              len(table.records[ref_list[0]]["quantiles"]))
    groups: dict[str, Any] = {}
    for group in table.groups:
        rows = table.rows(group)
        groups[group] = _group_summary(table, rows, ref_quantiles)
        groups[group]["is_reference"] = bool(set(rows.tolist()) <= ref_set)
        if not groups[group]["is_reference"]:
            groups[group]["frd"] = _value(lambda rows=rows: frd(table.x[rows], table.x[ref_rows]))
    roc: dict[str, Identifiability] = {}
    ident: dict[str, Any] = {}
    originals = np.array([i for i, e in enumerate(entries) if not e.harmonized], dtype=int)
    ident["original"] = _identify(table, originals, roc, "original")
    for method in sorted({e.provenance.method for e in entries if e.provenance}):
        rows = np.array([i for i, e in enumerate(entries)
                         if (e.provenance and e.provenance.method == method) or i in ref_set],
                        dtype=int)
        ident[f"harmonized: {method}"] = _identify(table, rows, roc, f"harmonized: {method}")
    metrics = {
        "reference_domain": reference,
        "reference_series": len(ref_list),
        "features": table.names,
        "dropped_features": table.dropped,
        "groups": groups,
        "identifiability": ident,
        "pairs": _pairs(table),
    }
    return Analysis(table, reference, ref_rows, metrics, roc, _embedding(table.x))


def _value(compute: Any) -> dict[str, Any]:
    try:
        return {"value": float(compute())}
    except MetricError as exc:
        return {"value": None, "error": str(exc)}


def _group_summary(table: Table, rows: np.ndarray, ref_quantiles: np.ndarray) -> dict[str, Any]:
    records = [table.records[i] for i in rows]
    density = np.array([r["fgt_density"] for r in records])
    distances = []
    for record in records:
        try:
            distances.append(intensity_distance(np.asarray(record["quantiles"]), ref_quantiles))
        except MetricError:
            continue
    return {
        "series": len(rows),
        "uids": [table.entries[i].uid for i in rows],
        "fgt_density_mean": float(density.mean()),
        "fgt_density_sd": float(density.std(ddof=1)) if len(density) > 1 else None,
        "intensity_distance_to_reference": float(np.mean(distances)) if distances else None,
        "curve_types": dict(Counter(str(r["curve_type"]) for r in records)),
        "peak_enhancement_pct_mean": float(np.mean(
            [max(r["fgt_pe"]) for r in records])),
    }


def _identify(table: Table, rows: np.ndarray, roc: dict[str, Identifiability],
              key: str) -> dict[str, Any]:
    labels = [table.entries[i].origin for i in rows]
    try:
        result = identifiability(table.x[rows], labels)
    except MetricError as exc:
        return {"auc": None, "error": str(exc), "series": len(rows)}
    roc[key] = result
    return {"auc": result.auc, "classes": list(result.classes), "series": len(rows)}


def _pairs(table: Table) -> dict[str, Any]:
    """Harmonized acquisitions against their own originals, by harmonized group."""
    index = {e.uid: i for i, e in enumerate(table.entries)}
    by_group: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, entry in enumerate(table.entries):
        if entry.source_uid is not None and entry.source_uid in index:
            by_group[entry.group].append((i, index[entry.source_uid]))
    summary: dict[str, Any] = {}
    for group, pairs in sorted(by_group.items()):
        delta = [table.records[h]["fgt_density"] - table.records[o]["fgt_density"]
                 for h, o in pairs]
        kept = [table.records[h]["curve_type"] == table.records[o]["curve_type"]
                for h, o in pairs]
        summary[group] = {
            "pairs": len(pairs),
            "fgt_density_change_mean": float(np.mean(delta)),
            "fgt_density_change_abs_mean": float(np.mean(np.abs(delta))),
            "curve_type_kept_fraction": float(np.mean(kept)),
        }
    return summary


def _embedding(x: np.ndarray) -> np.ndarray:
    """A 2D PCA of the standardized features of all acquisitions (one fit, so the before and
    after panels share axes)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if len(x) < 2:
        return np.zeros((len(x), 2))
    scaled = StandardScaler().fit_transform(x)
    components = min(2, len(x), x.shape[1])
    coords = PCA(n_components=components, random_state=0).fit_transform(scaled)
    return np.pad(coords, ((0, 0), (0, 2 - components)))
