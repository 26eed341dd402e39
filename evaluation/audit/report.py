"""The audit's outputs: ``report.html`` (self-contained), ``metrics.json``, ``features.csv``.

The HTML embeds its figures as base64 PNG data URIs and carries its own style, with no
external URL, so it can be mailed, archived, or opened on a reading-room workstation that is
off the internet.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluation.audit import plots
from evaluation.audit.analysis import Analysis

FIGURES: tuple[tuple[str, str, Callable[[Analysis], bytes]], ...] = (
    ("Intensity histograms per domain",
     "Breast pre-contrast intensities of every group on one axis: scanners that store other "
     "units, or other contrast, sit apart.", plots.histograms),
    ("Radiomic feature embedding, before and after",
     "First two principal components of the standardized radiomic features; one fit for "
     "both panels. Circles are harmonized series, squares originals.", plots.embedding),
    ("Scanner identifiability ROC",
     "Cross-validated logistic regression telling the acquiring scanner from the features "
     "(AUC 0.5: cannot be told; 1: always can).", plots.roc),
    ("Kinetic curves",
     "Percent enhancement, 100 (S(t) - S(0)) / S(0), of the FGT region's mean signal over "
     "time.", plots.kinetics),
    ("Fréchet Radiomic Distance to the reference",
     "FRD (Konz et al. 2024) of each group's features to the reference group's.",
     plots.frd_bars),
)

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; } img { max-width: 100%; } .note { color: #555; }
"""


def write_outputs(folder: Path, analysis: Analysis, summary: dict[str, Any]) -> None:
    """Write the three outputs into ``folder`` (the caller renames it into place)."""
    metrics = {**summary, **analysis.metrics}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_features_csv(folder / "features.csv", analysis)
    (folder / "report.html").write_text(render_html(analysis, metrics), encoding="utf-8")


def write_features_csv(path: Path, analysis: Analysis) -> None:
    table = analysis.table
    fixed = ["uid", "study_uid", "patient_id", "domain", "group", "harmonized", "method",
             "model", "source_uid", "fgt_density", "curve_type"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fixed + table.names)
        for entry, record, row in zip(table.entries, table.records, table.x, strict=True):
            prov = entry.provenance
            writer.writerow([
                entry.uid, entry.study_uid, entry.patient_id, entry.origin, entry.group,
                int(entry.harmonized), prov.method if prov else "", prov.model if prov else "",
                entry.source_uid or "", f"{record['fgt_density']:.6g}", record["curve_type"],
                *(f"{v:.9g}" for v in row),
            ])


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_html(analysis: Analysis, metrics: dict[str, Any]) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>dicomnode scanner audit</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>Scanner audit</h1>",
        f"<p>Source: {html.escape(str(metrics.get('source', '')))}. "
        f"{metrics['series']} acquisitions audited ({metrics['computed']} measured now, "
        f"{metrics['cached']} from the cache), {len(metrics['skipped'])} skipped. "
        f"Reference domain: <b>{html.escape(analysis.reference)}</b> "
        f"({metrics['reference_series']} series). Feature set "
        f"{html.escape(str(metrics['feature_set_version']))}, {len(metrics['features'])} "
        "features.</p>",
        "<h2>Groups</h2>",
        _table(
            ["group", "series", "FRD to reference", "intensity distance (IQR)",
             "FGT density % (mean)", "peak enhancement % (mean)", "curve types"],
            [[g, s["series"], s.get("frd", {}).get("value") if not s["is_reference"]
              else "reference", s["intensity_distance_to_reference"], s["fgt_density_mean"],
              s["peak_enhancement_pct_mean"],
              ", ".join(f"{k} {v}" for k, v in sorted(s["curve_types"].items()))]
             for g, s in metrics["groups"].items()],
        ),
        "<h2>Identifiability</h2>",
        _table(["series set", "AUC", "domains", "note"],
               [[k, v["auc"], ", ".join(v.get("classes", [])), v.get("error", "")]
                for k, v in metrics["identifiability"].items()]),
    ]
    if metrics["pairs"]:
        parts += ["<h2>Harmonized against their own originals</h2>",
                  _table(["group", "pairs", "FGT density change (pp)", "|change| (pp)",
                          "curve type kept"],
                         [[g, p["pairs"], p["fgt_density_change_mean"],
                           p["fgt_density_change_abs_mean"], p["curve_type_kept_fraction"]]
                          for g, p in metrics["pairs"].items()])]
    for title, note, draw in FIGURES:
        png = base64.b64encode(draw(analysis)).decode("ascii")
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p class='note'>{html.escape(note)}</p>",
                  f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"]
    if metrics["skipped"]:
        parts += ["<h2>Skipped series</h2>",
                  _table(["series", "folder", "reason"],
                         [[s["uid"], s["folder"], s["reason"]] for s in metrics["skipped"]])]
    if metrics["dropped_features"]:
        parts += ["<h2>Dropped features</h2>",
                  _table(["feature", "reason"],
                         [[d["feature"], d["reason"]] for d in metrics["dropped_features"]])]
    parts.append("</body></html>")
    return "\n".join(parts)
