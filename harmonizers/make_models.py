"""Fit the shipped models from virtual-scanner cohorts (``make models``).

    python -m harmonizers.make_models [--method histogram|physics] [--out DIR]
                                      [--sources ge-1.5t ...]

For every simulated scanner profile except the reference ``siemens-3t``, it renders an
unpaired training cohort on the source and on the reference profile, fits
``<method>-<source>_to_siemens-3t`` (default method ``histogram``) and evaluates it on
held-out patients rendered on both:
the 1D Wasserstein distance between the body intensities of the source rendering and of the
reference rendering of the same patient, before and after harmonization. The figures go
into each model's card. The seeds below are disjoint from the low seeds tests use.

The acquisitions carry TR, TE and flip angle from the profile, as the node reads them from
the headers. ``physics`` learns only the target protocol and pre-contrast levels from the
``siemens-3t`` cohort; the contrast agents come from the profiles, since the node's
acquisitions do not carry ContrastBolusAgent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from tqdm import tqdm

from dicomnode.paths import models_dir
from evaluation.virtual_scanner.cohort import render_patient
from evaluation.virtual_scanner.profiles import load_profile
from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer
from harmonizers.cyclegan import CycleGANHarmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import CARD_FILE, ModelCard, save_model
from harmonizers.physics import PhysicsHarmonizer
from harmonizers.registry import load_model
from harmonizers.stylemapper import StyleMapperHarmonizer

REFERENCE = "siemens-3t"
SOURCES = ("ge-1.5t", "ge-3t", "siemens-1.5t", "philips-1.5t", "philips-3t")
METHODS = ("histogram", "physics", "cyclegan", "stylemapper")
# The deep methods train for minutes per model, so they ship for the 1.5 T sources only.
DEEP_METHODS = ("cyclegan", "stylemapper")
DEEP_SOURCES = ("ge-1.5t", "philips-1.5t", "siemens-1.5t")
# Scanners the style mapper learns styles from besides the reference: philips-3t stays
# unseen, as a scanner a site could add at run time with a style reference.
STYLE_DOMAINS = ("ge-1.5t", "ge-3t", "philips-1.5t", "siemens-1.5t")
SOURCE_SEEDS = tuple(range(1000, 1008))
TARGET_SEEDS = tuple(range(2000, 2008))  # other patients: training is unpaired
HELD_OUT_SEEDS = tuple(range(3000, 3003))
MATRIX, SLICES = 96, 24
# Wasserstein on every body voxel of every phase is slow and no more telling than a sample.
_MAX_VOXELS = 200_000


def render(seed: int, profile_name: str) -> tuple[Acquisition, np.ndarray]:
    """One patient on one profile at the modest training grid, and its body mask."""
    rendering = render_patient(seed, load_profile(profile_name), matrix=MATRIX, slices=SLICES)
    # Ground-truth labels (0 = air) rather than the harmonizer's own foreground estimate, so
    # the evaluation does not grade the foreground with itself.
    return rendering.acquisition(), rendering.labels != 0


def body_values(pixels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Body-voxel intensities of a (phase, z, y, x) array, evenly subsampled."""
    values = pixels[..., body].ravel()
    return values[:: max(1, values.size // _MAX_VOXELS)]


def fit(method: str, source: str, cohort: list[Acquisition],
        target: list[Acquisition], checkpoints: Path | None = None) -> Harmonizer:
    """Fit ``method`` on the source cohort and the reference cohort.

    The deep methods train with one CPU thread (the same result on any machine) and
    checkpoint into ``checkpoints``, so an interrupted run resumes.
    """
    if method == "histogram":
        return HistogramHarmonizer.fit(cohort, target)
    physics = PhysicsHarmonizer.fit(cohort, target, source_agent=load_profile(source).agent,
                                    target_agent=load_profile(REFERENCE).agent)
    if method in DEEP_METHODS:
        torch.set_num_threads(1)
    if method == "cyclegan":
        return CycleGANHarmonizer.fit(
            cohort, target, kinetics=physics, progress=True,
            checkpoint=checkpoints / f"cyclegan-{source}.pt" if checkpoints else None)
    if method == "stylemapper":
        # One network for every source: only the label of the source scanner differs.
        if "stylemapper" not in _TRAINED:
            _TRAINED["stylemapper"] = _train_style_mapper(target, checkpoints)
        return _TRAINED["stylemapper"].restyled(target, source_domain=ScannerDomain.parse(source),
                                                source=cohort, source_agent=physics.source_agent)
    return physics


# The style mapper trained in this run, reused for every source.
_TRAINED: dict[str, StyleMapperHarmonizer] = {}


def _train_style_mapper(target: list[Acquisition], checkpoints: Path | None
                        ) -> StyleMapperHarmonizer:
    """The style mapper trained once on STYLE_DOMAINS and the reference."""
    cohorts = [[render(seed, name)[0] for seed in SOURCE_SEEDS] for name in STYLE_DOMAINS]
    return StyleMapperHarmonizer.fit(
        cohorts[0], target, others=cohorts[1:], progress=True,
        checkpoint=checkpoints / "stylemapper.pt" if checkpoints else None)


def evaluate(harmonizer: Harmonizer, source: str) -> dict[str, Any]:
    """Wasserstein distances to the reference rendering of held-out patients.

    Profiles differ in phase timing, so each source phase is compared with the reference
    phase nearest in time.
    """
    rows = []
    for seed in HELD_OUT_SEEDS:
        src, src_body = render(seed, source)
        ref, ref_body = render(seed, REFERENCE)
        out = harmonizer.harmonize(src)
        ref_times = np.asarray(ref.phase_times_s)
        nearest = [int(np.argmin(np.abs(ref_times - t))) for t in src.phase_times_s]
        row: dict[str, Any] = {"seed": seed}
        for scope, phases, ref_phases in (
            ("pre_contrast", [0], [0]),
            ("all_phases", list(range(src.n_phases)), nearest),
        ):
            reference = body_values(ref.pixels[ref_phases], ref_body)
            row[scope] = {
                "before": wasserstein_distance(body_values(src.pixels[phases], src_body),
                                               reference),
                "after": wasserstein_distance(body_values(out[phases], src_body), reference),
            }
        rows.append(row)
    summary = {
        scope: {
            when: round(float(np.mean([r[scope][when] for r in rows])), 3)
            for when in ("before", "after")
        }
        for scope in ("pre_contrast", "all_phases")
    }
    return {
        "metric": (
            f"1D Wasserstein distance between body-voxel intensities of the {source} and the "
            f"{REFERENCE} rendering of the same held-out patient, in {REFERENCE} units; "
            "all_phases pairs each source phase with the reference phase nearest in time; "
            "before = raw source values, after = harmonized"
        ),
        "held_out_seeds": list(HELD_OUT_SEEDS),
        "grid": {"matrix": MATRIX, "slices": SLICES},
        "mean": summary,
        "per_patient": [
            {"seed": r["seed"], **{
                scope: {k: round(float(v), 3) for k, v in r[scope].items()}
                for scope in ("pre_contrast", "all_phases")
            }}
            for r in rows
        ],
    }


def reevaluate(root: Path, name: str, source: str, command: str) -> str:
    """Evaluate an existing model again and write the figures into its card.

    The weights, their sha256 and the training command and date stay as they are; the
    evaluation records the command and date it was made with, since it then describes
    the inference code of that date, not of the training run.
    """
    card = ModelCard.read(root / name / CARD_FILE)
    loaded = load_model(card.method, name, root=root)
    evaluation = {**evaluate(loaded.harmonizer, source), "command": command,
                  "date": datetime.now(UTC).isoformat(timespec="seconds")}
    dataclasses.replace(card, evaluation=evaluation).write(root / name / CARD_FILE)
    mean = evaluation["mean"]["all_phases"]
    return f"{name}: W1 all phases {mean['before']} -> {mean['after']} (re-evaluated)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harmonizers.make_models",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, default="histogram")
    parser.add_argument("--out", type=Path, default=None, help="models folder (models_dir())")
    parser.add_argument("--sources", nargs="+", choices=SOURCES,
                        help=f"default: {' '.join(SOURCES)}; "
                             f"for {' and '.join(DEEP_METHODS)}: {' '.join(DEEP_SOURCES)}")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="re-run the held-out evaluation of the existing models and "
                             "rewrite it in their cards (after a change of inference)")
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    deep = args.method in DEEP_METHODS
    args.sources = args.sources or list(DEEP_SOURCES if deep else SOURCES)
    root = args.out if args.out is not None else models_dir()
    if args.evaluate_only:
        command = shlex.join(["python", "-m", "harmonizers.make_models", *args_list])
        for source in args.sources:
            print(reevaluate(root, f"{args.method}-{source}_to_{REFERENCE}", source, command))
        return 0
    # Deep models are written into a hidden folder beside the models folder (not in it:
    # every folder in it must be a model) and renamed into place when complete, so an
    # interrupted run leaves no half-written model; checkpoints wait there too. One folder
    # per method and sources: the same command run again resumes, and runs for other
    # sources can go on beside it (sharing one, the first to finish deleted the others').
    sources = "+".join(args.sources)
    checkpoints = root.parent / f".{root.name}.{args.method}.{sources}.partial" if deep else None
    target = [render(seed, REFERENCE)[0] for seed in tqdm(TARGET_SEEDS, desc=REFERENCE)]
    for source in args.sources:
        cohort = [render(seed, source)[0] for seed in tqdm(SOURCE_SEEDS, desc=source)]
        harmonizer = fit(args.method, source, cohort, target, checkpoints)
        name = f"{args.method}-{source}_to_{REFERENCE}"
        folder = checkpoints / name if checkpoints else root / name
        card = save_model(
            harmonizer,
            folder,
            training_data=(
                f"virtual scanner (evaluation.virtual_scanner.cohort.render_patient), "
                f"matrix {MATRIX}, {SLICES} slices: {source} seeds {SOURCE_SEEDS[0]}-"
                f"{SOURCE_SEEDS[-1]}, {REFERENCE} seeds {TARGET_SEEDS[0]}-{TARGET_SEEDS[-1]}"
                + (f"; one network for all sources, also trained on {', '.join(STYLE_DOMAINS)}"
                   f" seeds {SOURCE_SEEDS[0]}-{SOURCE_SEEDS[-1]}; style reference from the "
                   f"{REFERENCE} series" if args.method == "stylemapper" else "")
            ),
            training_command=shlex.join(["python", "-m", "harmonizers.make_models", *args_list]),
            evaluation=evaluate(harmonizer, source),
        )
        if checkpoints:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / name, ignore_errors=True)
            os.replace(folder, root / name)
        mean = card.evaluation["mean"]["all_phases"]
        print(f"{name}: W1 all phases {mean['before']} -> {mean['after']}")
    if checkpoints:
        shutil.rmtree(checkpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
