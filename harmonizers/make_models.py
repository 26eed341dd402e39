"""Fit the shipped histogram models from virtual-scanner cohorts (``make models``).

    python -m harmonizers.make_models [--out DIR] [--sources ge-1.5t ...]

For every simulated scanner profile except the reference ``siemens-3t``, it renders an
unpaired training cohort on the source and on the reference profile, fits
``histogram-<source>_to_siemens-3t`` and evaluates it on held-out patients rendered on both:
the 1D Wasserstein distance between the body intensities of the source rendering and of the
reference rendering of the same patient, before and after harmonization. The figures go
into each model's card. The seeds below are disjoint from the low seeds tests use.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance
from tqdm import tqdm

from dicomnode.paths import models_dir
from evaluation.virtual_scanner.cohort import render_patient
from evaluation.virtual_scanner.profiles import load_profile
from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import save_model

REFERENCE = "siemens-3t"
SOURCES = ("ge-1.5t", "ge-3t", "siemens-1.5t", "philips-1.5t", "philips-3t")
SOURCE_SEEDS = tuple(range(1000, 1008))
TARGET_SEEDS = tuple(range(2000, 2008))  # other patients: training is unpaired
HELD_OUT_SEEDS = tuple(range(3000, 3003))
MATRIX, SLICES = 96, 24
# Wasserstein on every body voxel of every phase is slow and no more telling than a sample.
_MAX_VOXELS = 200_000


def render(seed: int, profile_name: str) -> tuple[Acquisition, np.ndarray]:
    """One patient on one profile at the modest training grid, and its body mask."""
    rendering = render_patient(seed, load_profile(profile_name), matrix=MATRIX, slices=SLICES)
    acquisition = Acquisition(
        pixels=np.asarray(rendering.pixels, dtype=np.float32),
        spacing_mm=rendering.spacing_mm,
        phase_times_s=rendering.phase_times_s,
        domain=ScannerDomain.parse(profile_name),
    )
    # Ground-truth labels (0 = air) rather than the harmonizer's own foreground estimate, so
    # the evaluation does not grade the foreground with itself.
    return acquisition, rendering.labels != 0


def body_values(pixels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Body-voxel intensities of a (phase, z, y, x) array, evenly subsampled."""
    values = pixels[..., body].ravel()
    return values[:: max(1, values.size // _MAX_VOXELS)]


def evaluate(harmonizer: HistogramHarmonizer, source: str) -> dict[str, Any]:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harmonizers.make_models",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="models folder (models_dir())")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    root = args.out if args.out is not None else models_dir()
    target = [render(seed, REFERENCE)[0] for seed in tqdm(TARGET_SEEDS, desc=REFERENCE)]
    for source in args.sources:
        cohort = [render(seed, source)[0] for seed in tqdm(SOURCE_SEEDS, desc=source)]
        harmonizer = HistogramHarmonizer.fit(cohort, target)
        name = f"histogram-{source}_to_{REFERENCE}"
        card = save_model(
            harmonizer,
            root / name,
            training_data=(
                f"virtual scanner (evaluation.virtual_scanner.cohort.render_patient), "
                f"matrix {MATRIX}, {SLICES} slices: {source} seeds {SOURCE_SEEDS[0]}-"
                f"{SOURCE_SEEDS[-1]}, {REFERENCE} seeds {TARGET_SEEDS[0]}-{TARGET_SEEDS[-1]}"
            ),
            training_command=shlex.join(["python", "-m", "harmonizers.make_models", *args_list]),
            evaluation=evaluate(harmonizer, source),
        )
        mean = card.evaluation["mean"]["all_phases"]
        print(f"{name}: W1 all phases {mean['before']} -> {mean['after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
