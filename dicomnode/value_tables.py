"""Harmonizing by table, for methods that map each voxel by its own value alone.

When a harmonizer is one function ``f`` of a voxel's value, the same for every voxel and
phase (:meth:`harmonizers.base.Harmonizer.value_map`; histogram standardization is one), it
need not run over float images. An integer image of ``BitsStored`` bits holds at most 65536
different stored values, so ``f`` is evaluated once for each, composed with the instance's
rescale (PS3.3 C.11.1, Modality LUT) and with the output's quantization, and each slice then
becomes one lookup from stored input to stored output. The result is what harmonizing and
then encoding the float series would give, at a fraction of the work.

The output's RescaleSlope comes from the largest value ``f`` gives over *every* possible
stored input, not only the ones that came. The encoding is thus known from the series'
header and pre-contrast, before any later phase is read, and one stored step of the output
is about one stored step of the input times the map's gain: the input's precision carries
through, and no later phase can overflow the range.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom import Dataset

from dicomnode.assembly import AssemblyError, rescale, slice_values
from dicomnode.provenance import MAX_STORED, Encoding, window_sample
from harmonizers.base import ValueMap

_MAX_TABLE_BITS = 16


def stored_range(ds: Dataset) -> tuple[int, int] | None:
    """The smallest stored value and the count of possible ones (PS3.3 C.7.6.3.1.1: Bits
    Stored, Pixel Representation); None when a table would not pay (over 16 bits, colour)."""
    try:
        bits = int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        samples = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError):
        return None
    if samples != 1 or not 1 <= bits <= _MAX_TABLE_BITS:
        return None
    return (-(1 << (bits - 1)) if signed else 0), 1 << bits


class OutputTables:
    """Stored input -> stored output, one table per rescale the series uses.

    Raises ValueError when ``value_map`` gives values that are not finite or negative: a
    bug in the method, as :meth:`harmonizers.base.Harmonizer.harmonize` treats it.
    """

    def __init__(self, value_map: ValueMap, first: Dataset,
                 rescales: Iterable[tuple[float, float]]) -> None:
        stored = stored_range(first)
        if stored is None:
            raise ValueError("these pixels cannot be harmonized by table")
        self.low, count = stored
        inputs = np.arange(self.low, self.low + count, dtype=np.float64)
        mapped = {}
        for slope, intercept in set(rescales):
            values = np.asarray(value_map(inputs * slope + intercept), dtype=np.float64)
            if values.shape != inputs.shape or not np.isfinite(values).all() or values.min() < 0:
                raise ValueError("the value map gave values that are not finite and >= 0")
            mapped[(slope, intercept)] = values
        self.top = max(float(values.max()) for values in mapped.values())
        self.slope = Encoding.slope_for(self.top)
        self._tables = {key: np.rint(values / self.slope).clip(0, MAX_STORED).astype(np.uint16)
                        for key, values in mapped.items()}
        self._shape = (int(first.Rows), int(first.Columns))

    def stored(self, ds: Dataset) -> np.ndarray:
        """The harmonized stored values of one slice, uint16; AssemblyError for a slice that
        does not fit the series (no pixels, another shape, a rescale not seen before)."""
        table = self._tables.get(rescale(ds))
        if table is None:
            raise AssemblyError(f"instance {ds.get('SOPInstanceUID', '?')}: rescale "
                                f"{rescale(ds)} differs from the rest of its series")
        values = slice_values(ds, self._shape)
        index = values if self.low == 0 else values.astype(np.int32) - self.low
        # mode="clip": a value beyond BitsStored (garbage in the unused high bits) takes the
        # table's end instead of failing the series.
        return np.take(table, index, mode="clip")

    def encoding(self, pre_contrast: Iterable[Dataset]) -> Encoding:
        """The series' encoding: this slope, and the window of the harmonized pre-contrast."""
        # Sampled while still uint16: the same voxels Encoding.of would take, without
        # converting the whole phase to float.
        sample = window_sample(np.stack([self.stored(ds) for ds in pre_contrast]))
        return Encoding.of(self.top, sample.astype(np.float32) * np.float32(self.slope))
