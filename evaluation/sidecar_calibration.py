"""Where the sidecar's default thresholds come from: its measures on held-out virtual patients.

    python -m evaluation.sidecar_calibration [--patients 4] [--matrix 96] [--slices 24]

For every patient (seeds 6000 onwards, held out from all training) this runs
:func:`evaluation.sidecar.assess` on: the reference scanner's own exam left as it is (what a
series already in the reference domain scores), every source profile left as it is
(``none``), and every shipped model applied to it. It prints one line per case, then the
range of each measure per case kind, the figures quoted in
:class:`evaluation.sidecar.Thresholds`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from evaluation.domain_reference import load
from evaluation.harmonizer_quality import REFERENCE, shipped_models
from evaluation.sidecar import Assessment, assess
from evaluation.virtual_scanner.profiles import available_profiles, load_profile
from evaluation.virtual_scanner.render import render_seed
from harmonizers.registry import load_model

FIRST_SEED = 6000


def _line(case: str, assessment: Assessment) -> str:
    values = " ".join(f"{name}={m.value:.3g}" for name, m in assessment.measurements().items())
    types = " ".join(f"{region}={before}->{after}"
                     for region, (before, after) in assessment.curve_types().items())
    return f"{case:<44} {assessment.verdict:<4} {values} {types}"


def calibrate(patients: int, matrix: int, slices: int) -> dict[str, list[Assessment]]:
    """Assessments by case kind: ``reference``, ``none`` and ``<method>``."""
    reference = load()
    kinds: dict[str, list[Assessment]] = defaultdict(list)
    for seed in range(FIRST_SEED, FIRST_SEED + patients):
        exam = render_seed(seed, load_profile(REFERENCE), matrix, slices).acquisition()
        kinds["reference"].append(assess(exam, exam, reference))
        print(_line(f"{seed} {REFERENCE} as acquired", kinds["reference"][-1]), flush=True)
        for source in (p for p in available_profiles() if p != REFERENCE):
            original = render_seed(seed, load_profile(source), matrix, slices).acquisition()
            kinds["none"].append(assess(original, original, reference))
            print(_line(f"{seed} {source} none", kinds["none"][-1]), flush=True)
            for method, model in shipped_models(source):
                loaded = load_model(method, model)
                harmonized = dataclasses.replace(
                    original, pixels=loaded.harmonizer.harmonize(original))
                kinds[method].append(assess(original, harmonized, reference))
                print(_line(f"{seed} {source} {method}", kinds[method][-1]), flush=True)
    return kinds


def summary(kinds: dict[str, list[Assessment]]) -> list[str]:
    """min / median / max of each measure per case kind, and curve-type changes."""
    lines = []
    for kind, assessments in kinds.items():
        lines.append(f"{kind} ({len(assessments)} series):")
        for name in assessments[0].measurements():
            values = np.array([a.measurements()[name].value for a in assessments])
            lines.append(f"  {name:<28} min {values.min():8.3g}  median "
                         f"{np.median(values):8.3g}  max {values.max():8.3g}")
        changed = sum(before != after for a in assessments
                      for before, after in a.curve_types().values())
        lines.append(f"  curve types changed: {changed} of {2 * len(assessments)} regions")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.sidecar_calibration",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--matrix", type=int, default=96)
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args(argv)
    print("\n".join(summary(calibrate(args.patients, args.matrix, args.slices))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
