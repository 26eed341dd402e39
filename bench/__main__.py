"""``make bench``: every benchmark, each in its own process (the simulator pins one thread)."""

import subprocess
import sys

BENCHMARKS = ["bench.bench_simulate", "bench.bench_node", "bench.bench_harmonizers",
              "bench.bench_deep", "bench.bench_sidecar"]

if __name__ == "__main__":
    for module in BENCHMARKS:
        print(f"\n== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)
