"""The image grid of one study: voxel size, orientation and position in patient coordinates.

Coordinates are DICOM patient coordinates (LPS: +x to the patient's left, +y posterior, +z
head). Slices are axial. The in-plane directions follow the scanner frame for a prone patient:
head-first prone (HFP) rows run to the patient's right and columns anterior; feet-first prone
(FFP) rows run to the patient's left and columns anterior, so the breasts hang down the image
as on the scanner console. Slices are stored along the slice normal (row x column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.virtual_scanner.profiles import ScannerProfile

# Row and column direction cosines of an axial prone image, per patient position.
_ORIENTATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


@dataclass(frozen=True)
class Grid:
    """A (z, y, x) voxel grid; ``z`` is the slice index, ``y`` the row, ``x`` the column."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    first_position: tuple[float, float, float]

    @property
    def normal(self) -> tuple[float, float, float]:
        """Slice normal: row direction x column direction."""
        n = np.cross(self.row_dir, self.col_dir)
        return (float(n[0]), float(n[1]), float(n[2]))

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k`` (centre of its first voxel)."""
        n = self.normal
        dz = self.spacing_mm[0]
        return tuple(p + k * dz * c for p, c in zip(self.first_position, n, strict=True))  # type: ignore[return-value]

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x, y, z of the voxel centres along columns, rows and slices (float32).

        The orientations used here are axis-aligned, so each patient axis depends on one
        index only and the anatomy can be evaluated by broadcasting 1D arrays.
        """
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing_mm
        x0, y0, z0 = self.first_position
        x = x0 + np.arange(nx) * dx * self.row_dir[0]
        y = y0 + np.arange(ny) * dy * self.col_dir[1]
        z = z0 + np.arange(nz) * dz * self.normal[2]
        return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


def grid_for(profile: ScannerProfile, matrix: int | None = None, slices: int | None = None) -> Grid:
    """The study grid of ``profile``; ``matrix``/``slices`` override counts, keeping the FOV.

    The field of view is centred on the patient origin, where the anatomy model puts the
    centre of the breasts, so every profile images the same patient region.
    """
    n = matrix or profile.matrix
    nz = slices or profile.slices
    d = profile.fov_mm / n
    dz = profile.coverage_mm / nz
    row, col = _ORIENTATION[profile.patient_position]
    normal = np.cross(row, col)
    # Centre of voxel (0, 0, 0): half a FOV back along each axis, then half a voxel in.
    first = (
        -np.asarray(row) * (profile.fov_mm / 2 - d / 2)
        - np.asarray(col) * (profile.fov_mm / 2 - d / 2)
        - normal * (profile.coverage_mm / 2 - dz / 2)
    )
    return Grid(
        shape=(nz, n, n),
        spacing_mm=(dz, d, d),
        row_dir=row,
        col_dir=col,
        first_position=(float(first[0]), float(first[1]), float(first[2])),
    )
