"""A multiphase series is harmonized and sent while it arrives, and its job adopts that."""

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.admin import status
from dicomnode.head_start import progress, remove_unadopted
from dicomnode.production import ProductionTask, produce_series
from dicomnode.provenance import config_hash
from dicomnode.retention import head_starts_dir
from dicomnode.routing import RuleSet
from tests.peers import wait_for
from tests.pipeline_harness import MODEL, RULES, Harness, dicom_harness
from tests.recording_scp import RecordingSCP
from tests.samples import sample_files
from tests.test_pipeline_streaming import GE_MULTIPHASE


def _harness(tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch,
             port: int, head_start: bool = True) -> Harness:
    # No quiet period in reach: the study completes only by its expected count (100).
    return dicom_harness(tmp_path, models, monkeypatch, port, settle_seconds=3600,
                         head_start=head_start)


def _run_until(harness: Harness, done: object, what: str) -> None:
    def step() -> bool:
        harness.pipeline.run_once(time.time())
        return bool(done())  # type: ignore[operator]

    wait_for(step, 60, what, interval=0.02)


def _arriving_outputs(harness: Harness) -> list[Path]:
    return sorted(head_starts_dir(harness.config).glob("*/out/*.dcm"))


def _pixels_by_uid(paths: list[Path]) -> dict[str, bytes]:
    return {str(ds.SOPInstanceUID): ds.PixelData for ds in map(dcmread, paths)}


def test_a_series_is_sent_while_it_arrives_and_its_job_adopts_what_was_made(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP,
    capsys: pytest.CaptureFixture[str],
) -> None:
    harness = _harness(tmp_path, models, monkeypatch, scp.port)
    files = sample_files(GE_MULTIPHASE)  # instance order: the 10 pre-contrast slices first
    harness.receive(files[:60])
    _run_until(harness, lambda: len(scp.stored) >= 60, "60 instances sent while arriving")
    assert harness.ledger.jobs() == []  # the study is not complete yet
    status(harness.config)
    assert "harmonizing while arriving" in capsys.readouterr().out
    harness.receive(files[60:])
    _run_until(harness, lambda: (job := harness.ledger.job(1)) and job.state == "delivered",
               "the job to be delivered")
    job = harness.ledger.job(1)
    assert job is not None and job.output_dir
    assert Path(job.output_dir).parent.parent == head_starts_dir(harness.config)
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    made = sorted(Path(job.output_dir).glob("*.dcm"))
    assert sorted(scp.stored) == sorted(_pixels_by_uid(made))  # every one, once
    # The same instances, pixel for pixel, as producing the complete series gives.
    whole = tmp_path / "whole"
    produce_series(ProductionTask(tuple(map(str, files)), "histogram", MODEL, "ge-3t",
                                  _config_hash(harness), str(whole)))
    assert _pixels_by_uid(made) == _pixels_by_uid(sorted(whole.glob("*.dcm")))


def _config_hash(harness: Harness) -> str:
    rule = harness.pipeline.rules.rule("ge-3t")
    assert rule is not None
    return config_hash(rule.model_dump(mode="json"))


def test_a_head_start_the_job_cannot_adopt_is_cancelled_and_the_job_made_afresh(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP
) -> None:
    harness = _harness(tmp_path, models, monkeypatch, scp.port)
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files[:60])
    _run_until(harness, lambda: len(_arriving_outputs(harness)) >= 60, "output while arriving")
    # The admin changes the rule (a new config hash) before the series is complete.
    (tmp_path / "rules.yaml").write_text(RULES.replace("name: ge-3t", "name: ge-3t-v2"))
    harness.pipeline.rules = RuleSet.load(harness.config.rules, {"pacs"})
    harness.receive(files[60:])
    _run_until(harness, lambda: (job := harness.ledger.job(1)) and job.state == "delivered",
               "the job to be delivered")
    job = harness.ledger.job(1)
    assert job is not None and job.rule == "ge-3t-v2"
    assert job.output_dir == str(harness.config.jobs_dir / "00000001" / "out")
    assert _arriving_outputs(harness) == []  # the cancelled head start left nothing
    made = _pixels_by_uid(sorted(Path(job.output_dir).glob("*.dcm")))
    assert len(made) == 100 and set(made) <= set(scp.stored)


def test_with_head_start_off_nothing_is_made_before_the_study_is_complete(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP
) -> None:
    harness = _harness(tmp_path, models, monkeypatch, scp.port, head_start=False)
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files[:60])
    for _ in range(20):
        harness.pipeline.run_once(time.time())
        time.sleep(0.01)
    assert _arriving_outputs(harness) == [] and scp.stored == []
    harness.receive(files[60:])
    _run_until(harness, lambda: (job := harness.ledger.job(1)) and job.state == "delivered",
               "the job to be delivered")
    assert len(scp.stored) == 100


def test_a_series_whose_pre_contrast_comes_last_is_made_once_complete(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, scp: RecordingSCP
) -> None:
    harness = _harness(tmp_path, models, monkeypatch, scp.port)
    files = sample_files(GE_MULTIPHASE)
    harness.receive(files[10:])
    for _ in range(20):
        harness.pipeline.run_once(time.time())
        time.sleep(0.01)
    assert _arriving_outputs(harness) == []  # no pre-contrast, nothing to map with yet
    harness.receive(files[:10])
    _run_until(harness, lambda: (job := harness.ledger.job(1)) and job.state == "delivered",
               "the job to be delivered")
    job = harness.ledger.job(1)
    assert job is not None and job.output_dir
    assert len(list(Path(job.output_dir).glob("*.dcm"))) == 100


def test_head_start_folders_no_job_adopted_are_removed_at_start(tmp_path: Path) -> None:
    adopted, left = tmp_path / "a", tmp_path / "b"
    for folder in (adopted, left):
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "00000.dcm").write_bytes(np.zeros(4).tobytes())
    (left / "sources.txt").write_text("a.dcm\nb.dcm\nCANCEL\n")
    assert progress(left) == (2, 1)
    remove_unadopted(tmp_path, {str(adopted / "out")})
    assert adopted.is_dir() and not left.exists()
