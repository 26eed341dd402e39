"""Virtual-scanner speed: one study, and a 20-patient x 4-scanner cohort, on one core.

Run with ``.venv/bin/python -m bench.bench_simulate``. Targets (issue "Speed"): one patient
on one scanner, 6 phases at 256 x 256 x 48, at most 5 s; 20 patients x 4 scanners at
128 x 128 x 32, at most 2 minutes. Both include writing DICOM and ground truth.
"""

from __future__ import annotations

import os

# One core: the BLAS/OpenMP pools must be capped before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from threadpoolctl import threadpool_limits  # noqa: E402

from evaluation.virtual_scanner.cohort import simulate_cohort  # noqa: E402

SINGLE = {"patients": 1, "scanners": ["ge-1.5t"], "matrix": 256, "slices": 48}
COHORT = {"patients": 20, "scanners": ["ge-1.5t", "ge-3t", "siemens-1.5t", "philips-3t"],
          "matrix": 128, "slices": 32}
TARGETS_S = {"single": 5.0, "cohort": 120.0}


def _time(work: Path, name: str, spec: dict[str, object]) -> float:
    start = time.perf_counter()
    simulate_cohort(work / name, seed=1, progress=False, **spec)  # type: ignore[arg-type]
    return time.perf_counter() - start


def main() -> None:
    """Print both timings next to their targets."""
    work = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    try:
        with threadpool_limits(limits=1):
            _time(work, "warmup", {**SINGLE, "matrix": 64, "slices": 8})  # imports, caches
            single = _time(work, "single", SINGLE)
            cohort = _time(work, "cohort", COHORT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, name, seconds in (
        ("single study  ge-1.5t 6 phases 256x256x48", "single", single),
        ("cohort 20 patients x 4 scanners 128x128x32", "cohort", cohort),
    ):
        target = TARGETS_S[name]
        verdict = "OK" if seconds <= target else "SLOW"
        print(f"{label}: {seconds:6.2f} s (target <= {target:.0f} s) {verdict}")


if __name__ == "__main__":
    main()
