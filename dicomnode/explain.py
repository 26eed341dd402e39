"""``dicomnode rules explain``: a dry run of the rules over files on disk.

For each series: the normalized vendor and field, the rule that matches, why every earlier
rule did not, and, for a harmonize rule, why the node would still refuse the series.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from dicomnode.assembly import AssemblyError, dicom_files, read_header, unsupported_reason
from dicomnode.routing import RuleSet
from harmonizers.domain import nominal_field_strength, normalize_manufacturer


def explain(rules: RuleSet, paths: Sequence[Path]) -> int:
    """Print the routing of every series under ``paths``; 1 when nothing was found."""
    series: dict[str, list[Dataset]] = defaultdict(list)
    for path in dicom_files(paths):
        try:
            header = read_header(path)
        except AssemblyError as exc:
            print(f"{path}: {exc}")
            continue
        series[str(header.get("SeriesInstanceUID", path))].append(header)
    if not series:
        print("no DICOM files found")
        return 1
    for uid, headers in series.items():
        first = headers[0]
        vendor = normalize_manufacturer(str(first.get("Manufacturer", "") or ""))
        field = nominal_field_strength(first.get("MagneticFieldStrength"))
        print(f"series {uid}: {len(headers)} instances, {first.get('Modality', '?')} "
              f"\"{first.get('SeriesDescription', '')}\"")
        print(f"  manufacturer {first.get('Manufacturer', '-')!r} -> {vendor or 'unknown'}, "
              f"field {first.get('MagneticFieldStrength', '-')!r} -> "
              f"{f'{field:g} T' if field else 'unknown'}")
        decision = rules.route(first)
        for why_not in decision.skipped:
            print(f"  skipped {why_not}")
        rule = decision.rule
        target = f" with {rule.method} / {rule.model}" if rule.action == "harmonize" else ""
        print(f"  matches {rule.name}: {rule.action}{target}")
        refused = unsupported_reason(first)
        if rule.action == "harmonize" and refused:
            print(f"  but would be quarantined: {refused}")
    return 0
