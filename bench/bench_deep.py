"""Deep harmonizers: milliseconds per 512 x 512 slice and peak memory on the CPU; slices per
second on a CUDA GPU when torch sees one.

Run with ``.venv/bin/python -m bench.bench_deep``. Targets (issue "Harmonizers", Speed):
with 2 CPU threads, at most 100 ms per 512 x 512 slice, and peak memory at most 3 x the
acquisition's float32 bytes plus the model. The acquisition is 6 phases x 16 slices of
512 x 512 (0.66 mm pixels); "per slice" here is one slice position with all 6 phases
harmonized, the stricter reading, and the per-image figure is printed too. The CPU figures
are made with the model forced onto the CPU, whatever the machine has.

On a GPU (the issue asks for slices per second) the same inference runs with the networks
and the per-voxel arithmetic on the device, on 6 phases x 48 slices of 512 x 512, after a
warm-up run of the same size, with ``torch.cuda.synchronize()`` before the clock stops;
the best of three runs is printed, as 512 x 512 slice positions (all 6 phases) and as
images per second, with the device's peak memory. Input and output stay float32 numpy
arrays on the host, as the node uses them, so the figures include the copies both ways.

Each method uses its shipped ``<method>-ge-1.5t_to_siemens-3t`` model when present, else
an untrained network of the shipped architecture (the cost is the same). Peak memory is
the acquisition plus the growth of the process's peak resident set during ``harmonize``
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` once the acquisition is built).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonizers.acquisition import Acquisition
from harmonizers.base import ModelError
from harmonizers.cyclegan import CycleGANConfig, CycleGANHarmonizer, GainGenerator
from harmonizers.deep import DeepHarmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.nets import QUANTILE_LEVELS
from harmonizers.physics import PhysicsHarmonizer, Protocol, TissueLevels
from harmonizers.registry import load_model
from harmonizers.stylemapper import StyleGenerator, StyleMapperConfig, StyleMapperHarmonizer

PHASES, SLICES, SIZE = 6, 16, 512
GPU_SLICES, GPU_RUNS = 48, 3
THREADS = 2
TARGET_MS = 100.0
SOURCE = ScannerDomain("GE", 1.5)


def _model(method: str) -> tuple[DeepHarmonizer[Any], str, int]:
    """The shipped model (or an untrained stand-in), its label and its weights' bytes."""
    name = f"{method}-ge-1.5t_to_siemens-3t"
    try:
        loaded = load_model(method, name)
        size = (loaded.folder / loaded.harmonizer.weights_file).stat().st_size
        assert isinstance(loaded.harmonizer, DeepHarmonizer)
        return loaded.harmonizer, name, size
    except ModelError:
        pass
    net: torch.nn.Module
    harmonizer: DeepHarmonizer[Any]
    kinetics = PhysicsHarmonizer(target=Protocol(4.0, 10.0, 3.0, "gadobutrol"),
                                 target_levels=TissueLevels(100.0, 300.0),
                                 source_agent="gadobutrol", source_domain=SOURCE)
    if method == "cyclegan":
        c = CycleGANConfig()
        net = GainGenerator(c.width, c.blocks, c.knots)
        harmonizer = CycleGANHarmonizer(generator=net, work_mm=c.work_mm, target_scale=100.0,
                                        kinetics=kinetics, source_domain=SOURCE)
    else:
        s = StyleMapperConfig()
        net = StyleGenerator(s.width, s.blocks, s.style_dim, s.knots)
        harmonizer = StyleMapperHarmonizer(
            generator=net, work_mm=s.work_mm, target_style=torch.zeros(s.style_dim),
            target_quantiles=QUANTILE_LEVELS / 50.0, source_quantiles=QUANTILE_LEVELS / 50.0,
            target_scale=100.0, kinetics=kinetics, source_domain=SOURCE)
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    return harmonizer, f"untrained {method} (no shipped model)", size


def _acquisition(size: int, slices: int) -> Acquisition:
    """A smooth body-like phantom with noise: content does not change the cost."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    body = (((y - 0.6) / 0.35) ** 2 + ((x - 0.5) / 0.45) ** 2 < 1).astype(np.float32)
    pre = 300.0 * body[None] * (1 + 0.2 * rng.random((slices, size, size), dtype=np.float32))
    pixels = np.stack([pre * (1 + 0.1 * p) for p in range(PHASES)]).astype(np.float32)
    pixels += rng.random(pixels.shape, dtype=np.float32) * 5
    return Acquisition(pixels=pixels, spacing_mm=(2.0, 340 / size, 340 / size),
                       phase_times_s=tuple(60.0 * p for p in range(PHASES)), domain=SOURCE,
                       repetition_time_ms=5.0, flip_angle_deg=12.0)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu(method: str) -> None:
    model, label, model_bytes = _model(method)
    harmonizer = model.on("cpu")
    harmonizer.harmonize(_acquisition(128, 4))  # warm-up: allocator, kernels
    acquisition = _acquisition(SIZE, SLICES)
    base_kib = _rss_kib("VmRSS")
    can_reset = _reset_peak()
    start = time.perf_counter()
    harmonizer.harmonize(acquisition)
    seconds = time.perf_counter() - start
    peak_kib = _rss_kib("VmHWM")
    per_slice = 1000 * seconds / SLICES
    verdict = "OK" if per_slice <= TARGET_MS else "SLOW"
    print(f"{method:11s} {label}: {per_slice:6.1f} ms per 512^2 slice (6 phases), "
          f"{per_slice / PHASES:5.1f} ms per image (target <= {TARGET_MS:.0f} ms) {verdict}")
    acq_bytes = acquisition.pixels.nbytes
    budget = 3 * acq_bytes + model_bytes
    if can_reset and base_kib is not None and peak_kib is not None:
        used = (peak_kib - base_kib) * 1024 + acq_bytes
        verdict = "OK" if used <= budget else "OVER"
        print(f"{'':11s} peak memory {used / 2**20:7.1f} MiB (acquisition "
              f"{acq_bytes / 2**20:.1f} MiB; budget 3 x acquisition + model "
              f"{model_bytes / 2**20:.2f} MiB = {budget / 2**20:.1f} MiB) {verdict}")
    else:
        print(f"{'':11s} peak memory: not measurable here (needs Linux /proc)")


def _gpu(method: str) -> None:
    model, label, _ = _model(method)
    harmonizer = model.on("cuda")
    acquisition = _acquisition(SIZE, GPU_SLICES)
    harmonizer.harmonize(acquisition)  # warm-up: CUDA context, kernels, allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(GPU_RUNS):
        start = time.perf_counter()
        harmonizer.harmonize(acquisition)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"{method:11s} {label}: {GPU_SLICES / best:7.1f} slices/s (512^2, 6 phases), "
          f"{GPU_SLICES * PHASES / best:7.1f} images/s; {1000 * best / GPU_SLICES:5.2f} ms "
          f"per slice; device peak {peak:.0f} MiB")


def main() -> None:
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads; acquisition {PHASES} phases x "
          f"{SLICES} slices x {SIZE}^2 float32")
    for method in ("cyclegan", "stylemapper"):
        _cpu(method)
    if not torch.cuda.is_available():
        print("GPU: torch sees no CUDA device; no slices per second")
        return
    print(f"GPU {torch.cuda.get_device_name()}: acquisition {PHASES} phases x {GPU_SLICES} "
          f"slices x {SIZE}^2 float32, host arrays in and out, best of {GPU_RUNS} runs")
    for method in ("cyclegan", "stylemapper"):
        _gpu(method)


if __name__ == "__main__":
    main()
