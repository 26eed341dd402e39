"""The interface every harmonization method implements.

A harmonizer maps a DCE acquisition from one scanner domain (the *source*, e.g. ``ge-1.5t``)
into the intensity space of another (the *target*, e.g. ``siemens-3t``). It is fitted once on
unpaired acquisitions from both domains, saved into a model folder (see
:mod:`harmonizers.model_store`), and later loaded by the node to harmonize one incoming
series at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from harmonizers.acquisition import Acquisition
from harmonizers.domain import ScannerDomain

# A function of a voxel's own value: real-world values in, target values out (any float).
ValueMap = Callable[[np.ndarray], np.ndarray]


class ModelError(ValueError):
    """A model cannot be used: missing, corrupt, tampered with, or for another scanner."""


class Harmonizer(ABC):
    """A fitted mapping from a source scanner domain to a target scanner domain.

    Subclasses set :attr:`method` (the registry name) and :attr:`weights_file` (the file in
    the model folder whose SHA-256 the model card pins) and implement :meth:`fit`,
    :meth:`_harmonize`, :meth:`save` and :meth:`load`. :meth:`harmonize` wraps
    :meth:`_harmonize` with the output checks every method must pass, so that the node can
    rely on them whatever the method.
    """

    method: ClassVar[str]
    weights_file: ClassVar[str]

    def __init__(
        self, *, source_domain: ScannerDomain | None, target_domain: ScannerDomain | None
    ) -> None:
        self.source_domain = source_domain
        self.target_domain = target_domain

    @classmethod
    @abstractmethod
    def fit(cls, source: Sequence[Acquisition], target: Sequence[Acquisition]) -> Self:
        """Fit on unpaired acquisitions from the source and the target domain."""

    @abstractmethod
    def _harmonize(self, acquisition: Acquisition) -> np.ndarray:
        """Method-specific mapping; :meth:`harmonize` validates what this returns."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the weights into ``folder / weights_file`` (creating ``folder``)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Self:
        """Read the weights that :meth:`save` wrote; raise ValueError if they are invalid."""

    def value_map(self, pre_contrast: Acquisition) -> ValueMap | None:
        """The method as one function of each voxel's own value, if it is one.

        For a method whose output at a voxel depends only on that voxel's value, through a
        function fitted on the pre-contrast (``pre_contrast``: the acquisition's first phase,
        or the whole acquisition) and then the same for every voxel and phase, return that
        function: the node applies it by table to integer pixels, as each slice comes
        (:mod:`dicomnode.value_tables`). None, the default, for methods that look at
        neighbours or at other phases.
        """
        return None

    def harmonize(self, acquisition: Acquisition) -> np.ndarray:
        """Map every phase of ``acquisition`` into the target domain.

        Returns float32 real-world values in the target scanner's units with the same
        (phase, z, y, x) shape as ``acquisition.pixels``; finite and non-negative, since MR
        magnitude images are.
        """
        if not isinstance(acquisition, Acquisition):
            raise TypeError(f"expected an Acquisition, got {type(acquisition).__name__}")
        out = np.asarray(self._harmonize(acquisition), dtype=np.float32)
        # These are bugs in the method, not bad input, hence RuntimeError.
        if out.shape != acquisition.pixels.shape:
            raise RuntimeError(
                f"{self.method} returned shape {out.shape} for input {acquisition.pixels.shape}"
            )
        if out.size:
            # min and max propagate NaN and show infinities, with no series-sized temporary.
            low, high = float(out.min()), float(out.max())
            if not (np.isfinite(low) and np.isfinite(high)):
                raise RuntimeError(f"{self.method} returned non-finite values")
            if low < 0:
                raise RuntimeError(f"{self.method} returned negative values")
        return out


def common_domain(acquisitions: Sequence[Acquisition], side: str) -> ScannerDomain | None:
    """The one scanner domain shared by ``acquisitions``; None if none of them has one.

    Raises ValueError when they mix domains (or mix known and unknown), because a model is
    fitted for exactly one source and one target domain. ``side`` names the set in messages.
    """
    if not acquisitions:
        raise ValueError(f"no {side} acquisitions")
    domains = {acq.domain for acq in acquisitions}
    if len(domains) > 1:
        names = sorted(d.name if d else "unknown" for d in domains)
        raise ValueError(f"{side} acquisitions mix scanner domains: {', '.join(names)}")
    return domains.pop()
