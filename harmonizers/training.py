"""The training loop the deep harmonizers share: device, progress bar, checkpoints, resume.

A method supplies a :class:`Trainer` (its networks, optimizers, a numpy random generator
for sampling batches, and one optimization step). :func:`run_training` runs it to a fixed
number of steps, saving a checkpoint every ``checkpoint_every`` steps, at the end and when
interrupted (Ctrl-C). Given an existing checkpoint it resumes from its step: the weights,
the optimizer moments and both random states (numpy sampling, torch) are restored, so on
the CPU an interrupted and resumed run ends in the same state as an uninterrupted one.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harmonizers.acquisition import Acquisition
from harmonizers.nets import (
    TISSUE_LEVEL,
    check_acquisition,
    normalized,
    series_scale,
    work_volume,
)

_CHECKPOINT_VERSION = 1


def training_device() -> torch.device:
    """The GPU when there is one, else the CPU (training completes on either)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrainingConfig:
    """Mixin for a method's frozen hyperparameter dataclass.

    Declares the dataclass fields so that ``asdict`` type-checks on ``self``.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def resumable(self) -> dict[str, Any]:
        """Everything but ``steps``: a checkpoint may be continued to a larger budget."""
        return {k: v for k, v in asdict(self).items() if k != "steps"}


class Trainer(ABC):
    """What :func:`run_training` needs from a method.

    ``config`` is the method's hyperparameters as plain data; a checkpoint made with other
    hyperparameters is refused rather than silently mixed in.
    """

    method: str
    config: dict[str, Any]
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    rng: np.random.Generator
    device: torch.device

    def __init__(self, seed: int) -> None:
        """Seed torch before a subclass builds its networks (their initial weights) and
        the numpy generator that samples batches, so a run is reproducible."""
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.device = training_device()

    @abstractmethod
    def step(self) -> dict[str, float]:
        """One optimization step; returns the losses to show."""

    def update(self, optimizer: str, loss: torch.Tensor) -> None:
        """One gradient step of ``self.optimizers[optimizer]`` on ``loss``."""
        self.optimizers[optimizer].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[optimizer].step()


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the betas CycleGAN and MUNIT use for adversarial training (0.5, 0.999)."""
    return torch.optim.Adam(parameters, lr=lr, betas=(0.5, 0.999))


def _state(trainer: Trainer, step: int) -> dict[str, Any]:
    return {
        "version": _CHECKPOINT_VERSION,
        "method": trainer.method,
        "config": trainer.config,
        "step": step,
        "modules": {k: m.state_dict() for k, m in trainer.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "numpy_rng": trainer.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }


def save_checkpoint(trainer: Trainer, step: int, path: Path) -> None:
    """Write the checkpoint atomically: a crash mid-write leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(_state(trainer, step), tmp)
    os.replace(tmp, path)


def load_checkpoint(trainer: Trainer, path: Path) -> int:
    """Restore ``trainer`` from ``path``; returns the step it had reached.

    Raises ValueError for an unreadable checkpoint or one made by another method or with
    other hyperparameters (delete it or train into another folder to start afresh).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a version {_CHECKPOINT_VERSION} training checkpoint")
    if state["method"] != trainer.method or state["config"] != trainer.config:
        raise ValueError(
            f"{path}: checkpoint of {state['method']!r} with config {state['config']}, but this "
            f"run is {trainer.method!r} with {trainer.config}; delete it to start afresh"
        )
    for name, module in trainer.modules.items():
        module.load_state_dict(state["modules"][name])
    for name, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    trainer.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def run_training(
    trainer: Trainer,
    *,
    steps: int,
    checkpoint: Path | None = None,
    checkpoint_every: int = 100,
    progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Train to ``steps`` steps, resuming from ``checkpoint`` if that file exists.

    ``on_step(step, losses)`` is called after each completed step (step counts from 1).
    Returns the step the run started from (0 unless it resumed). On KeyboardInterrupt the
    last completed step is checkpointed before the interrupt propagates.
    """
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = load_checkpoint(trainer, checkpoint)
    for module in trainer.modules.values():
        module.train()
    done = start
    with tqdm(total=steps, initial=start, desc=f"train {trainer.method}", unit="step",
              disable=not progress) as bar:
        try:
            for step in range(start + 1, steps + 1):
                losses = trainer.step()
                done = step
                bar.update()
                if step % 10 == 0 or step == steps:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                if checkpoint is not None and step % checkpoint_every == 0:
                    save_checkpoint(trainer, step, checkpoint)
                if on_step is not None:
                    on_step(step, losses)
        except KeyboardInterrupt:
            if checkpoint is not None:
                save_checkpoint(trainer, done, checkpoint)
            raise
    if checkpoint is not None:
        save_checkpoint(trainer, done, checkpoint)
    for module in trainer.modules.values():
        module.eval()
    return start


def crop_batch(
    rng: np.random.Generator,
    volumes: list[np.ndarray],
    batch: int,
    crop: int,
    device: torch.device,
) -> torch.Tensor:
    """Random 2.5D crops (batch, 3, crop, crop) from normalized (z, y, x) working volumes.

    A crop is redrawn (up to 8 times) while it is mostly air: tissue is what must be
    mapped. Volumes smaller than ``crop`` in-plane are zero-padded, i.e. more air.
    """
    out = np.zeros((batch, 3, crop, crop), dtype=np.float32)
    for item in range(batch):
        for _ in range(8):
            volume = volumes[int(rng.integers(len(volumes)))]
            z = int(rng.integers(volume.shape[0]))
            zs = [max(z - 1, 0), z, min(z + 1, volume.shape[0] - 1)]
            y0 = int(rng.integers(max(volume.shape[1] - crop, 0) + 1))
            x0 = int(rng.integers(max(volume.shape[2] - crop, 0) + 1))
            patch = volume[zs, y0:y0 + crop, x0:x0 + crop]
            if (patch[1] > TISSUE_LEVEL).mean() > 0.25:
                break
        out[item, :, :patch.shape[1], :patch.shape[2]] = patch
    return torch.from_numpy(out).to(device)


def prepare_volumes(
    acquisitions: Sequence[Acquisition], work_mm: float, method: str
) -> tuple[list[np.ndarray], list[float]]:
    """Normalized pre-contrast volumes on the working grid, and each series' scale."""
    volumes, scales = [], []
    for acq in acquisitions:
        check_acquisition(acq, work_mm, method)
        scale = series_scale(acq.pre_contrast)
        volumes.append(work_volume(normalized(acq.pre_contrast, scale), acq.spacing_mm[1:],
                                   work_mm))
        scales.append(scale)
    return volumes, scales
