"""Production of a method that needs the whole float series (no value map): the headers give
the protocol, the derived series holds the harmonizer's values."""

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.assembly import assemble
from dicomnode.production import ProductionTask, produce_series
from harmonizers.registry import load_model
from tests.samples import simulated_ge_study


@pytest.fixture(scope="module")
def ge_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return simulated_ge_study(tmp_path_factory.mktemp("sim") / "cohort", seed=12, slices=8)


@pytest.mark.parametrize("method", ["physics", "cyclegan", "stylemapper"])
def test_a_shipped_model_is_applied_to_a_series_as_its_headers_describe(
    method: str, ge_study: list[Path], tmp_path: Path
) -> None:
    model = f"{method}-ge-1.5t_to_siemens-3t"
    produced = produce_series(ProductionTask(
        tuple(map(str, ge_study)), method, model, "test", "0" * 64, str(tmp_path / "out")))
    written = sorted((tmp_path / "out").glob("*.dcm"))
    assert produced.files == len(written) == len(ge_study)
    source = assemble([dcmread(p) for p in ge_study]).acquisition
    assert source.repetition_time_ms and source.flip_angle_deg and source.domain
    expected = load_model(method, model).harmonizer.harmonize(source)
    derived = assemble([dcmread(p) for p in written]).acquisition
    step = float(dcmread(written[0], stop_before_pixels=True).RescaleSlope)
    np.testing.assert_allclose(derived.pixels, expected, rtol=0, atol=step)
    assert not np.allclose(derived.pixels, source.pixels, rtol=0.05)
