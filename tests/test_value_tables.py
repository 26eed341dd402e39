"""Harmonizing by table gives what harmonizing the float series and encoding it gives."""

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from dicomnode.assembly import AssemblyError, assemble, ordered_sources
from dicomnode.production import ProductionTask, produce_series
from dicomnode.provenance import MAX_STORED
from dicomnode.value_tables import OutputTables, stored_range
from harmonizers.histogram import HistogramHarmonizer
from tests.pipeline_harness import MODEL
from tests.samples import read_sample, sample_files


def _model() -> HistogramHarmonizer:
    source = assemble(read_sample("ge-signa-architect-3t-multiphase")).acquisition
    target = assemble(read_sample("siemens-prisma-3t-prone")).acquisition
    return HistogramHarmonizer.fit([source], [target])


@pytest.mark.parametrize("folder", ["ge-signa-architect-3t-multiphase",
                                    "philips-achieva-3t-dynamics"])
def test_tables_give_the_harmonized_values_within_one_stored_step(folder: str) -> None:
    model = _model()
    assembled = assemble(read_sample(folder))
    expected = model.harmonize(assembled.acquisition)
    phases = ordered_sources(read_sample(folder))
    sources = [ds for phase in phases for ds in phase]
    tables = OutputTables(model.value_map(assembled.acquisition), sources[0],
                          {(float(ds.get("RescaleSlope", 1) or 1),
                            float(ds.get("RescaleIntercept", 0) or 0)) for ds in sources})
    got = np.stack([tables.stored(ds) for ds in sources]).astype(np.float64) * tables.slope
    np.testing.assert_allclose(got, expected.reshape(got.shape), atol=tables.slope)
    # The slope covers every stored value the header allows, not only those that came: the
    # largest one is stored as it maps, not clipped.
    ceiling = copy.deepcopy(sources[-1])
    low, count = stored_range(ceiling) or (0, 0)
    dtype = np.uint16 if low == 0 else np.int16
    ceiling.PixelData = np.full((ceiling.Rows, ceiling.Columns), low + count - 1, dtype).tobytes()
    slope, intercept = (float(ceiling.get("RescaleSlope", 1) or 1),
                        float(ceiling.get("RescaleIntercept", 0) or 0))
    top = model.value_map(assembled.acquisition)(np.array([(low + count - 1) * slope + intercept]))
    assert top[0] > expected.max()
    assert tables.stored(ceiling).max() == MAX_STORED
    assert tables.slope * MAX_STORED == pytest.approx(top[0])


def test_signed_pixels_are_looked_up_from_the_bottom_of_their_range() -> None:
    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.SamplesPerPixel = 12, 1, 1
    assert stored_range(ds) == (-2048, 4096)
    ds.BitsStored = 32
    assert stored_range(ds) is None


def test_a_slice_that_does_not_fit_the_series_is_refused() -> None:
    datasets = read_sample("ge-signa-architect-3t-multiphase")
    tables = OutputTables(lambda v: np.maximum(v, 0.0), datasets[0], {(1.0, 0.0)})
    other_scale = copy.deepcopy(datasets[1])
    other_scale.RescaleSlope = "2"
    with pytest.raises(AssemblyError, match="rescale"):
        tables.stored(other_scale)
    no_pixels = copy.deepcopy(datasets[1])
    del no_pixels.PixelData
    with pytest.raises(AssemblyError, match="no PixelData"):
        tables.stored(no_pixels)


def test_a_map_that_gives_nan_or_negative_values_is_refused() -> None:
    first = read_sample("ge-signa-architect-3t-multiphase")[0]
    for broken in (lambda v: v * np.nan, lambda v: v - 1e9):
        with pytest.raises(ValueError, match="finite"):
            OutputTables(broken, first, {(1.0, 0.0)})


def test_a_series_whose_later_phases_have_another_rescale_is_produced_whole(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-instance RescaleSlope (as Philips writes): the same real-world values stored at
    twice the scale in the later phases give the same derived values."""
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    files = sample_files("ge-signa-architect-3t-multiphase")
    rescaled = []
    for index, path in enumerate(files):
        ds = dcmread(path)
        if int(ds.TemporalPositionIdentifier) > 1:
            ds.PixelData = (ds.pixel_array * 2).astype(ds.pixel_array.dtype).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = "0.5", "0"
        ds.save_as(tmp_path / f"{index:03d}.dcm")
        rescaled.append(str(tmp_path / f"{index:03d}.dcm"))
    outputs, slopes = {}, []
    for name, paths in (("as sent", tuple(map(str, files))), ("rescaled", tuple(rescaled))):
        produce_series(ProductionTask(paths, "histogram", MODEL, "r", "0" * 64,
                                      str(tmp_path / name)))
        derived = [dcmread(p) for p in sorted((tmp_path / name).glob("*.dcm"))]
        outputs[name] = {str(d.SOPInstanceUID): d.pixel_array * float(d.RescaleSlope)
                         for d in derived}
        slopes.append(float(derived[0].RescaleSlope))
    assert outputs["as sent"].keys() == outputs["rescaled"].keys()
    for uid, values in outputs["as sent"].items():
        np.testing.assert_allclose(outputs["rescaled"][uid], values, atol=max(slopes))
