"""The unit every harmonizer works on: one DCE acquisition, all phases on one geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harmonizers.domain import ScannerDomain


@dataclass(frozen=True)
class Acquisition:
    """A 4D breast DCE acquisition as the node assembled it from DICOM.

    ``pixels`` holds real-world values (stored value x RescaleSlope + RescaleIntercept) as
    float32, indexed (phase, z, y, x). Phase 0 is the pre-contrast phase. ``z`` follows the
    slice normal, ``y`` the rows and ``x`` the columns of the source images.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    phase_times_s: tuple[float, ...]
    domain: ScannerDomain | None = None
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    flip_angle_deg: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4:
            raise ValueError(f"pixels must be (phase, z, y, x), got shape {self.pixels.shape}")
        if self.pixels.dtype != np.float32:
            raise ValueError(f"pixels must be float32, got {self.pixels.dtype}")
        if len(self.phase_times_s) != self.pixels.shape[0]:
            raise ValueError(
                f"{len(self.phase_times_s)} phase times for {self.pixels.shape[0]} phases"
            )

    @property
    def n_phases(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def pre_contrast(self) -> np.ndarray:
        """The first phase, (z, y, x)."""
        return self.pixels[0]
