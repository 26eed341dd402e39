"""``dicomnode-eval benchmark``: every harmonization method on every metric, held-out patients.

    dicomnode-eval benchmark --patients 6 --out docs/evaluation.md
    python -m evaluation.benchmark --patients 6 --out docs/evaluation.md

Each held-out virtual patient (seeds from 6000, disjoint from every training, model-card and
quality seed) is rendered on each source scanner together with the reference scanner's
rendering of the same patient on the same grid and timing, and the truth rendering (ideal
reference physics), as in :mod:`evaluation.harmonizer_quality`. Methods: ``none`` (the source
series), each registered harmonizer with a shipped model for the pair (discovered as
harmonizer_quality discovers them), and ``combat``: ComBat on the radiomic features of the
unharmonized series (:mod:`evaluation.combat`), the feature-level baseline of radiomics
studies; it changes features, not images, so image-level metrics are ``n/a`` for it.

Radiomic features (:func:`evaluation.features.series_features`) are taken over the truth
breast and FGT masks, so paired comparisons read the same voxels. The downstream segmenter
(:mod:`evaluation.segmenter`) is fitted at start on reference-scanner training patients. The
metrics are in :mod:`evaluation.benchmark_measure`; docs/evaluation.md explains each.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.benchmark_measure import feature_metrics, image_metrics, usable_features
from evaluation.combat import PACKAGE, fit_combat, package_version
from evaluation.features import FEATURE_SET_VERSION, series_features
from evaluation.generated_docs import replace_block, table_cell
from evaluation.harmonizer_quality import REFERENCE, SOURCES, make_case, shipped_models
from evaluation.metrics import MetricError, dice
from evaluation.segmenter import TRAINING_SEEDS, fit_segmenter
from evaluation.virtual_scanner.profiles import load_profile
from harmonizers.base import Harmonizer
from harmonizers.model_store import ModelError
from harmonizers.registry import available_methods, load_model

# Disjoint from training (1000-1007, 2000-2007), model cards (3000-3002), harmonizer quality
# (4000-), the domain reference (5000-) and the segmenter's training patients (7000-).
FIRST_SEED = 6000
# ComBat's own training patients (as many as the cohort): it is fitted on them and applied to
# the held-out cohort, as the image harmonizers were trained on other patients.
COMBAT_FIRST_SEED = 8000
NONE, COMBAT = "none", "combat"
ALL = "all"
_BEGIN, _END = "<!-- evaluation-benchmark:begin -->", "<!-- evaluation-benchmark:end -->"

# (key, column header, format); "type_*" are shown as kept / total.
FEATURE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("frd_breast", "FRD breast", "{:.2f}"),
    ("frd_fgt", "FRD FGT", "{:.2f}"),
    ("auc", "scanner AUC", "{:.2f}"),
    ("ccc85", "CCC > 0.85 (%)", "{:.0f}"),
    ("ccc90", "CCC > 0.90 (%)", "{:.0f}"),
)
KINETIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("pe_lesion_orig", "lesion PE err vs orig (pp)", "{:.1f}"),
    ("pe_lesion_truth", "lesion PE err vs truth (pp)", "{:.1f}"),
    ("pe_fgt_orig", "FGT PE err vs orig (pp)", "{:.1f}"),
    ("pe_fgt_truth", "FGT PE err vs truth (pp)", "{:.1f}"),
    ("type_lesion_orig", "lesion type = orig", ""),
    ("type_lesion_truth", "lesion type = truth", ""),
    ("type_fgt_orig", "FGT type = orig", ""),
    ("type_fgt_truth", "FGT type = truth", ""),
)
STRUCTURE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("gradient", "gradient similarity", "{:.3f}"),
    ("density_orig", "FGT density diff vs orig (pp)", "{:.1f}"),
    ("density_truth", "FGT density err vs truth (pp)", "{:.1f}"),
    ("dice_breast_truth", "breast Dice vs truth", "{:.3f}"),
    ("dice_fgt_truth", "FGT Dice vs truth", "{:.3f}"),
    ("dice_breast_orig", "breast Dice vs orig", "{:.3f}"),
    ("dice_fgt_orig", "FGT Dice vs orig", "{:.3f}"),
)
# Larger is better for these; the others are errors or distances (smaller is better), except
# the AUC, whose goal is 0.5.
HIGHER_BETTER = {"ccc85", "ccc90", "gradient", *(k for k, _, _ in KINETIC_COLUMNS
                                                  if k.startswith("type_")),
                 *(k for k, _, _ in STRUCTURE_COLUMNS if k.startswith("dice_"))}


@dataclass(frozen=True)
class Settings:
    """What to run: cohort size and grid, sources and methods (None: every method)."""

    patients: int = 6
    first_seed: int = FIRST_SEED
    matrix: int = 128
    slices: int = 32
    sources: tuple[str, ...] = SOURCES
    methods: tuple[str, ...] | None = None

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.patients))

    @property
    def combat_seeds(self) -> list[int]:
        return list(range(COMBAT_FIRST_SEED, COMBAT_FIRST_SEED + self.patients))


@dataclass
class Collected:
    """Per (source, method): feature dicts and image metrics; per source: reference features.

    ``combat_fit`` holds, per source, the features of ComBat's training patients: the source
    series (``none``) and the reference renderings, in pairs.
    """

    features: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    image: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    reference: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    reference_dice: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    combat_fit: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]] = field(
        default_factory=dict)


def method_list(settings: Settings) -> list[str]:
    """The methods to compare, in table order: none, harmonizers, combat.

    ComBat harmonizes the features of the unharmonized series, so asking for it adds ``none``.
    """
    if settings.methods is not None:
        unknown = set(settings.methods) - {NONE, COMBAT, *available_methods()}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: "
                             f"{', '.join([NONE, *available_methods(), COMBAT])}")
        asked = list(dict.fromkeys(settings.methods))
        return [NONE, *asked] if COMBAT in asked and NONE not in asked else asked
    shipped = {m for source in settings.sources for m, _ in shipped_models(source)}
    return [NONE, *(m for m in available_methods() if m in shipped), COMBAT]


def _harmonizers(source: str, methods: Sequence[str], errors: dict[tuple[str, str], str]
                 ) -> dict[str, Harmonizer | None]:
    """The image-level methods for ``source``; those with no loadable model go to ``errors``."""
    models = dict(shipped_models(source))
    found: dict[str, Harmonizer | None] = {}
    for method in methods:
        if method == NONE:
            found[method] = None
        elif method == COMBAT:
            continue
        elif method not in models:
            errors[(source, method)] = f"no shipped model {method} {source} -> {REFERENCE}"
        else:
            try:
                found[method] = load_model(method, models[method]).harmonizer
            except ModelError as exc:
                errors[(source, method)] = str(exc)
    return found


def collect(settings: Settings, progress: bool = True) -> Collected:
    """Render the cohort, run each image-level method, measure features and image metrics."""
    from tqdm import tqdm

    methods = method_list(settings)
    out = Collected(methods=methods)
    segmenter = fit_segmenter(settings.matrix, settings.slices)
    reference = load_profile(REFERENCE)
    fit_seeds = settings.combat_seeds if COMBAT in methods else []
    bar = tqdm(total=len(settings.sources) * (settings.patients + len(fit_seeds)),
               desc="benchmark", disable=not progress, file=sys.stderr)
    for source in settings.sources:
        profile = load_profile(source)
        for seed in fit_seeds:
            case = make_case(seed, profile, reference, settings.matrix, settings.slices)
            spacing = case.acquisition.spacing_mm
            pair = out.combat_fit.setdefault(source, ([], []))
            pair[0].append(series_features(case.acquisition.pixels, spacing, case.breast,
                                           case.fgt))
            pair[1].append(series_features(case.reference, spacing, case.breast, case.fgt))
            bar.update()
        harmonizers = _harmonizers(source, methods, out.errors)
        for seed in settings.seeds:
            case = make_case(seed, profile, reference, settings.matrix, settings.slices)
            spacing = case.acquisition.spacing_mm
            out.reference.setdefault(source, []).append(
                series_features(case.reference, spacing, case.breast, case.fgt))
            on_reference = segmenter.segment(case.reference, spacing)
            out.reference_dice.setdefault(f"{source} breast", []).append(
                float(dice(on_reference.breast, case.breast)))
            out.reference_dice.setdefault(f"{source} fgt", []).append(
                float(dice(on_reference.fgt, case.fgt)))
            original = segmenter.segment(case.acquisition.pixels, spacing)
            for method, harmonizer in harmonizers.items():
                if (source, method) in out.errors:
                    continue
                try:
                    image = (case.acquisition.pixels if harmonizer is None
                             else harmonizer.harmonize(case.acquisition))
                except (ValueError, RuntimeError) as exc:
                    out.errors[(source, method)] = f"{type(exc).__name__}: {exc}"
                    continue
                out.features.setdefault((source, method), []).append(
                    series_features(image, spacing, case.breast, case.fgt))
                metrics = image_metrics(image, case, segmenter.segment(image, spacing), original)
                pooled = out.image.setdefault((source, method), {})
                for key, values in metrics.items():
                    pooled.setdefault(key, []).extend(values)
            bar.update()
    bar.close()
    return out



@dataclass
class Scores:
    """Per (scope, method): metric values; scope is a source or ``all``; plus what was left out."""

    features: dict[tuple[str, str], dict[str, float]]
    image: dict[tuple[str, str], dict[str, list[float]]]
    errors: dict[tuple[str, str], str]
    feature_count: int
    dropped_features: int


def _matrix(rows: list[dict[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.asarray([[row[name] for name in names] for row in rows], dtype=np.float64)


def score(collected: Collected, sources: Sequence[str]) -> Scores:
    """Feature-level metrics (after ComBat where asked) and pooled image metrics per scope."""
    errors = dict(collected.errors)
    fit_rows = [rows for pair in collected.combat_fit.values() for rows in pair]
    every = [*collected.features.values(), *collected.reference.values(), *fit_rows]
    names = sorted(set.intersection(*(set(row) for rows in every for row in rows)))
    keep = usable_features([_matrix(rows, names) for rows in every])
    names = [name for name, kept in zip(names, keep, strict=True) if kept]
    groups = {key: _matrix(rows, names) for key, rows in collected.features.items()}
    references = {source: _matrix(rows, names) for source, rows in collected.reference.items()}
    if COMBAT in collected.methods:
        fit = {source: (_matrix(series, names), _matrix(refs, names))
               for source, (series, refs) in collected.combat_fit.items()}
        groups.update(_combat_groups(groups, fit, sources, names, errors))

    features: dict[tuple[str, str], dict[str, float]] = {}
    image: dict[tuple[str, str], dict[str, list[float]]] = {}
    for method in collected.methods:
        # A method that failed on one patient has no paired rows for that source.
        present = [s for s in sources if (s, method) in groups and (s, method) not in errors]
        scopes = [(s, [s]) for s in present]
        if present == list(sources) and len(sources) > 1:
            scopes.append((ALL, present))
        for scope, members in scopes:
            try:
                features[(scope, method)] = feature_metrics(
                    np.vstack([groups[(s, method)] for s in members]),
                    np.vstack([references[s] for s in members]), names,
                    [s for s in members for _ in range(len(groups[(s, method)]))], REFERENCE)
            except MetricError as exc:
                errors[(scope, method)] = str(exc)
            if method != COMBAT:
                pooled: dict[str, list[float]] = {}
                for s in members:
                    for key, values in collected.image[(s, method)].items():
                        pooled.setdefault(key, []).extend(values)
                image[(scope, method)] = pooled
    return Scores(features, image, errors, len(names), int(np.sum(~keep)))


def _combat_groups(groups: dict[tuple[str, str], np.ndarray],
                   fit: dict[str, tuple[np.ndarray, np.ndarray]], sources: Sequence[str],
                   names: Sequence[str], errors: dict[tuple[str, str], str]
                   ) -> dict[tuple[str, str], np.ndarray]:
    """ComBat features of the held-out unharmonized series, fitted on ComBat's own patients.

    Batch = scanner; the reference renderings of the training patients are the reference
    batch (``ref_batch``), so harmonized features land in reference-scanner units. Fitting on
    other patients keeps the cross-validated AUC honest: ComBat fitted on the evaluated
    series themselves makes the batch means equal exactly, and cross-validation then scores
    below chance (each held-out series sits on the far side of its batch's remaining mean).
    """
    present = [s for s in sources if s in fit and (s, NONE) in groups]
    x = np.vstack([*(fit[s][0] for s in present), *(fit[s][1] for s in present)])
    batches = [s for s in present for _ in range(len(fit[s][0]))]
    batches += [REFERENCE] * (len(x) - len(batches))
    try:
        model = fit_combat(x, names, batches, REFERENCE)
    except ValueError as exc:
        errors.update({(s, COMBAT): f"ComBat failed: {exc}" for s in sources})
        return {}
    if model.dropped:
        raise AssertionError(f"usable features should be harmonizable: {model.dropped}")
    return {(s, COMBAT): model.apply(groups[(s, NONE)], [s] * len(groups[(s, NONE)]))
            for s in present}


def _table(columns: Sequence[tuple[str, str, str]], scopes: Sequence[str],
           methods: Sequence[str], values: dict[tuple[str, str], dict[str, float]]
           | dict[tuple[str, str], dict[str, list[float]]], scores: Scores,
           not_applicable: str | None = None) -> list[str]:
    lines = ["| scanner | method | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|---" + "|---" * len(columns) + "|"]
    for scope in scopes:
        for method in methods:
            if method == not_applicable:
                cells = ["n/a"] * len(columns)
            elif (scope, method) in scores.errors:
                cells = [f"failed: {scores.errors[(scope, method)]}",
                         *["-"] * (len(columns) - 1)]
            elif (scope, method) in values:
                metrics = values[(scope, method)]
                cells = [table_cell(k, fmt, metrics.get(k)) for k, _, fmt in columns]
            else:
                continue
            lines.append(f"| {scope} | {method} | " + " | ".join(cells) + " |")
    return lines


def _compare(key: str, fmt: str, mine: float | list[float], base: float | list[float]
             ) -> bool:
    """True when ``mine`` is worse than ``base`` as shown (ties below the precision are not)."""
    a, b = (float(table_cell(key, fmt, v).split("/")[0]) if not key.startswith("type_")
            else float(np.mean(v)) for v in (mine, base))
    if key == "auc":
        return abs(a - 0.5) > abs(b - 0.5)
    return a < b if key in HIGHER_BETTER else a > b


def losses(scores: Scores, methods: Sequence[str], scope: str) -> list[str]:
    """One line per method: the metrics on which it is worse than no harmonization.

    Metrics measured against the original series (``*_orig``, gradient similarity) are
    perfect for ``none`` by definition and are left out of the comparison.
    """
    lines = []
    for method in methods:
        if method == NONE or (scope, method) in scores.errors:
            continue
        worse = []
        for columns, table in ((FEATURE_COLUMNS, scores.features),
                               (KINETIC_COLUMNS, scores.image),
                               (STRUCTURE_COLUMNS, scores.image)):
            mine, base = table.get((scope, method)), table.get((scope, NONE))
            if mine is None or base is None:
                continue
            for key, header, fmt in columns:
                if key.endswith("_orig") or key == "gradient":
                    continue
                if mine.get(key) and base.get(key) and _compare(key, fmt, mine[key], base[key]):
                    worse.append(header)
        lines.append(f"- `{method}` is worse than `none` on: "
                     f"{', '.join(worse) if worse else 'nothing'}.")
    return lines


def report(command: str, settings: Settings, progress: bool = True) -> str:
    """The generated part of docs/evaluation.md."""
    start = time.perf_counter()
    collected = collect(settings, progress)
    scores = score(collected, settings.sources)
    minutes = (time.perf_counter() - start) / 60
    methods = collected.methods
    scopes = [*([ALL] if len(settings.sources) > 1 else []), *settings.sources]
    seeds = settings.seeds
    combat_seeds = (f"{settings.combat_seeds[0]}-{settings.combat_seeds[-1]}"
                    if COMBAT in methods else "-")
    reference_dice = ", ".join(f"{key} {np.mean(v):.3f}"
                               for key, v in collected.reference_dice.items())
    lines = [
        _BEGIN, "", "Generated by:", "", "```sh", command, "```", "",
        f"Held-out patients: seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}) on "
        f"{', '.join(settings.sources)}, each with its paired `{REFERENCE}` rendering; grid "
        f"{settings.matrix} x {settings.matrix} x {settings.slices}; {minutes:.1f} min.",
        f"Radiomic features: {scores.feature_count} used (feature set "
        f"`{FEATURE_SET_VERSION}`), {scores.dropped_features} dropped as non-finite or "
        "constant within a group. ComBat: "
        f"`{PACKAGE}` {package_version()}, fitted on seeds {combat_seeds}.",
        f"Segmenter: fitted on `{REFERENCE}` seeds {', '.join(map(str, TRAINING_SEEDS))}; "
        f"Dice on the paired reference renderings (its own domain): {reference_dice}.",
        "",
        "#### Feature level (goal: FRD 0, scanner AUC 0.5, CCC shares 100 %)", "",
        *_table(FEATURE_COLUMNS, scopes, methods, scores.features, scores),
        "",
        "#### Kinetics (types: kept / regions)", "",
        *_table(KINETIC_COLUMNS, scopes, methods, scores.image, scores, COMBAT),
        "",
        "#### Structure and downstream segmentation", "",
        *_table(STRUCTURE_COLUMNS, scopes, methods, scores.image, scores, COMBAT),
        "",
        f"Where each method is worse than `none` ({scopes[0]}; metrics against the truth "
        "or the reference):", "",
        *losses(scores, methods, scopes[0]),
        "", _END,
    ]
    return "\n".join(lines) + "\n"


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=Settings.patients,
                        help=f"held-out patients per source (default {Settings.patients})")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED,
                        help=f"seed of the first patient (default {FIRST_SEED})")
    parser.add_argument("--matrix", type=int, default=Settings.matrix,
                        help=f"in-plane matrix (default {Settings.matrix}; FOV kept)")
    parser.add_argument("--slices", type=int, default=Settings.slices,
                        help=f"slices (default {Settings.slices}; coverage kept)")
    parser.add_argument("--sources", type=_name_list, default=SOURCES,
                        help=f"comma-separated source profiles (default {','.join(SOURCES)})")
    parser.add_argument("--methods", type=_name_list, default=None,
                        help="comma-separated methods (default: none, every harmonizer with a "
                             "shipped model for a source, combat)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file whose generated block to replace (else print)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``benchmark`` to ``dicomnode-eval``'s subcommands."""
    parser = sub.add_parser(
        "benchmark", help="compare harmonization methods on every metric (simulated cohort)",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
    )
    _add_arguments(parser)
    parser.set_defaults(benchmark_prog=parser.prog)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces ``args`` (every option spelled out)."""
    words = [*shlex.split(args.benchmark_prog), "--patients", str(args.patients),
             "--first-seed", str(args.first_seed), "--matrix", str(args.matrix),
             "--slices", str(args.slices), "--sources", ",".join(args.sources)]
    if args.methods is not None:
        words += ["--methods", ",".join(args.methods)]
    if args.out is not None:
        words += ["--out", str(args.out)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed arguments; returns the exit status."""
    if args.patients < 2:
        print("dicomnode-eval benchmark: error: --patients must be >= 2 (cross-validation, "
              "ComBat and CCC need two series per scanner)", file=sys.stderr)
        return 2
    settings = Settings(patients=args.patients, first_seed=args.first_seed, matrix=args.matrix,
                        slices=args.slices, sources=tuple(args.sources),
                        methods=None if args.methods is None else tuple(args.methods))
    try:
        method_list(settings)
        for source in settings.sources:
            load_profile(source)
    except ValueError as exc:
        print(f"dicomnode-eval benchmark: error: {exc}", file=sys.stderr)
        return 2
    generated = report(_command(args), settings, progress=not args.no_progress)
    if args.out is not None:
        replace_block(args.out, generated, (_BEGIN, _END), "Evaluation benchmark")
    print(generated)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.benchmark``: the same options as ``dicomnode-eval benchmark``."""
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m evaluation.benchmark",
                                     description=__doc__.split("\n")[0])
    _add_arguments(parser)
    parser.set_defaults(benchmark_prog=parser.prog)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
