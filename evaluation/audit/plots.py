"""The report's figures, as PNG bytes, so the HTML can embed them and stay self-contained.

Built on matplotlib's object API with the Agg canvas (no pyplot, no global backend switch),
so drawing in a worker or a test changes nothing for anyone else in the process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.audit.analysis import Analysis

_HIST_BINS = 60
_HIST_RANGE_PCT = (0.5, 99.5)  # of all pooled quantiles: the axis all domains share


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(names)))}


def _legend(ax: Axes) -> None:
    """Below the axes: group names are long and would hide the data."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


def _panels(count: int, width: float = 5.2) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width * count, 3.8))
    axes = figure.subplots(1, count, squeeze=False)[0]
    return figure, list(axes)


def _split(analysis: Analysis) -> tuple[list[int], list[int]]:
    """Rows before (originals) and after (harmonized outputs plus the reference originals)."""
    entries = analysis.table.entries
    before = [i for i, e in enumerate(entries) if not e.harmonized]
    after = [i for i, e in enumerate(entries) if e.harmonized] + analysis.reference_rows.tolist()
    return before, after


def histograms(analysis: Analysis) -> bytes:
    """Breast pre-contrast intensity distribution of each group on one shared axis."""
    table = analysis.table
    pooled = {g: np.concatenate([table.records[i]["quantiles"] for i in table.rows(g)])
              for g in table.groups}
    low, high = np.percentile(np.concatenate(list(pooled.values())), _HIST_RANGE_PCT)
    bins = np.linspace(low, high, _HIST_BINS + 1).tolist()
    colours = _colours(table.groups)
    harmonized = [g for g in table.groups if g.startswith("harmonized")]
    figure, axes = _panels(2 if harmonized else 1)
    originals = [g for g in table.groups if g not in harmonized]
    reference = [g for g in originals if analysis.metrics["groups"][g]["is_reference"]]
    for ax, names, title in zip(axes, (originals, harmonized + reference),
                                ("original series", "harmonized (and reference)"), strict=False):
        for group in names:
            ax.hist(pooled[group], bins=bins, density=True, histtype="step", linewidth=1.5,
                    color=colours[group], label=group)
        ax.set_xlabel("breast pre-contrast intensity (real-world value)")
        ax.set_ylabel("density")
        ax.set_title(title)
        _legend(ax)
    return _png(figure)


def embedding(analysis: Analysis) -> bytes:
    """The 2D PCA of radiomic features, coloured by acquiring domain, before and after."""
    table, coords = analysis.table, analysis.embedding
    before, after = _split(analysis)
    colours = _colours([e.origin for e in table.entries])
    figure, axes = _panels(2)
    for ax, rows, title in zip(axes, (before, after),
                               ("before: original series", "after: harmonized + reference"),
                               strict=True):
        for origin in sorted({table.entries[i].origin for i in rows}):
            mine = [i for i in rows if table.entries[i].origin == origin]
            marker = ["o" if table.entries[i].harmonized else "s" for i in mine]
            for m in sorted(set(marker)):
                pick = [i for i, k in zip(mine, marker, strict=True) if k == m]
                ax.scatter(coords[pick, 0], coords[pick, 1], color=colours[origin], marker=m,
                           label=origin if m == marker[0] else None, s=30)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(title)
        _legend(ax)
    return _png(figure)


def roc(analysis: Analysis) -> bytes:
    """ROC of the domain classifier: originals, and each harmonization method's outputs."""
    figure, (ax,) = _panels(1, width=5.0)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (AUC 0.5)")
    for key, result in analysis.roc.items():
        ax.plot(result.fpr, result.tpr, linewidth=1.5, label=f"{key}: AUC {result.auc:.2f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("scanner identifiability")
    ax.legend(fontsize=7, loc="lower right")
    return _png(figure)


def kinetics(analysis: Analysis) -> bytes:
    """Percent enhancement of the FGT region's mean signal against time."""
    table = analysis.table
    colours = _colours(table.groups)
    before, after = _split(analysis)
    figure, axes = _panels(2)
    for ax, rows, title in zip(axes, (before, after), ("original series",
                                                       "harmonized (and reference)"), strict=True):
        labelled: set[str] = set()
        for i in rows:
            record, group = table.records[i], table.entries[i].group
            ax.plot(np.asarray(record["phase_times_s"]) / 60.0, record["fgt_pe"], marker=".",
                    color=colours[group], alpha=0.8,
                    label=None if group in labelled else group)
            labelled.add(group)
        ax.set_xlabel("time after first phase (min)")
        ax.set_ylabel("enhancement (%)")
        ax.set_title(title)
        _legend(ax)
    return _png(figure)


def frd_bars(analysis: Analysis) -> bytes:
    """FRD of every group to the reference group; groups it could not be computed for say so."""
    groups = {g: s for g, s in analysis.metrics["groups"].items() if not s["is_reference"]}
    names = list(groups)
    values = [groups[g]["frd"]["value"] for g in names]
    figure = Figure(figsize=(7.5, 0.5 + 0.45 * max(len(names), 1)))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    positions = np.arange(len(names))
    ax.barh(positions, [v if v is not None else 0.0 for v in values],
            color=["tab:orange" if g.startswith("harmonized") else "tab:blue" for g in names])
    for y, v in zip(positions, values, strict=True):
        if v is None:
            ax.text(0, float(y), " not computable (see metrics.json)", va="center", fontsize=7)
    ax.set_yticks(positions, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"FRD to {analysis.reference}")
    ax.set_title("Fréchet Radiomic Distance (lower is closer)")
    return _png(figure)
