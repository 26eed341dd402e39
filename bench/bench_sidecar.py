"""The quality report's cost: seconds and peak memory of one assessment at a scanner's grid.

Run with ``.venv/bin/python -m bench.bench_sidecar``. The node computes each report in a
separate, niced child process (dicomnode/quality_reports.py), so this is that process's
cost, not the node's: one ge-1.5t virtual patient at the profile's own grid, harmonized with
the shipped histogram model, then :func:`evaluation.sidecar.assess` (masks, features before
and after, kinetics) and the SR. Peak memory is this process's maximum resident size.
"""

from __future__ import annotations

import dataclasses
import resource
import time

from evaluation.domain_reference import load
from evaluation.sidecar import assess
from evaluation.virtual_scanner.cohort import render_patient
from evaluation.virtual_scanner.profiles import load_profile
from harmonizers.registry import load_model

SOURCE = "ge-1.5t"


def main() -> None:
    original = render_patient(7, load_profile(SOURCE)).acquisition()
    model = load_model("histogram", f"histogram-{SOURCE}_to_siemens-3t")
    harmonized = dataclasses.replace(original, pixels=model.harmonizer.harmonize(original))
    reference = load()
    started = time.perf_counter()
    assessment = assess(original, harmonized, reference)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape = " x ".join(str(n) for n in original.pixels.shape)
    print(f"assess {SOURCE} ({shape}, {original.pixels.nbytes / 2**20:.0f} MiB float32): "
          f"{seconds:.1f} s, verdict {assessment.verdict}; process peak {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
