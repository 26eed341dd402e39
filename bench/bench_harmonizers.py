"""Harmonizer speed and memory on one full-size series, on one core.

Run with ``.venv/bin/python -m bench.bench_harmonizers``. Targets (issue "Harmonizers"): a
6-phase 48 x 256 x 256 acquisition harmonized in at most 1 s on the CPU, with peak memory
(numpy allocations traced by tracemalloc while harmonizing, the input excluded) at most 3x
the acquisition's float32 bytes. The series is a ge-1.5t virtual patient; the models are the
shipped ``<method>-ge-1.5t_to_siemens-3t``.
"""

from __future__ import annotations

import os

# One core: the BLAS/OpenMP pools must be capped before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402
import tracemalloc  # noqa: E402

from threadpoolctl import threadpool_limits  # noqa: E402

from evaluation.virtual_scanner.cohort import render_patient  # noqa: E402
from evaluation.virtual_scanner.profiles import load_profile  # noqa: E402
from harmonizers.acquisition import Acquisition  # noqa: E402
from harmonizers.registry import load_model  # noqa: E402

SOURCE = "ge-1.5t"
METHODS = ("histogram", "physics")
MATRIX, SLICES = 256, 48
TARGET_S = 1.0
MEMORY_FACTOR = 3.0
REPEATS = 3


def acquisition() -> Acquisition:
    """The benchmark series: 6 phases (the ge-1.5t protocol) at 48 x 256 x 256."""
    return render_patient(7, load_profile(SOURCE), matrix=MATRIX, slices=SLICES).acquisition()


def main() -> None:
    """Print seconds (best of REPEATS) and traced peak memory per method, with verdicts."""
    acq = acquisition()
    budget = MEMORY_FACTOR * acq.pixels.nbytes
    print(f"series {acq.pixels.shape} float32, {acq.pixels.nbytes / 2**20:.0f} MiB")
    with threadpool_limits(limits=1):
        for method in METHODS:
            harmonizer = load_model(method, f"{method}-{SOURCE}_to_siemens-3t").harmonizer
            harmonizer.harmonize(acq)  # warm-up: first-touch page faults, caches
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                harmonizer.harmonize(acq)
                times.append(time.perf_counter() - start)
            tracemalloc.start()
            harmonizer.harmonize(acq)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            seconds = min(times)
            print(
                f"{method:10s} {seconds:5.2f} s (target <= {TARGET_S:.0f} s) "
                f"{'OK' if seconds <= TARGET_S else 'SLOW'}; peak {peak / 2**20:5.0f} MiB "
                f"(<= {MEMORY_FACTOR:.0f}x input = {budget / 2**20:.0f} MiB) "
                f"{'OK' if peak <= budget else 'OVER'}"
            )


if __name__ == "__main__":
    main()
