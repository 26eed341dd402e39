"""The job pipeline in-process, on real vendor files: route, harmonize, quarantine, deliver."""

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.assembly import assemble
from dicomnode.config import NodeConfig
from dicomnode.ledger import Ledger
from dicomnode.pipeline import Pipeline
from dicomnode.provenance import PRIVATE_CREATOR, PRIVATE_GROUP
from dicomnode.routing import RuleSet
from dicomnode.spool import Spool
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import save_model
from tests.peers import free_port
from tests.samples import SAMPLES, read_sample, sample_files

MODEL = "histogram-ge-3t_to_siemens-3t"
RULES = f"""
rules:
  - name: ge-3t
    match: {{manufacturer: GE, field_strength: 3}}
    action: harmonize
    method: histogram
    model: {MODEL}
  - name: reference
    match: {{manufacturer: SIEMENS}}
    action: passthrough
  - name: default
    action: quarantine
"""


class Harness:
    """A ledger, spool, rules and model in a temporary folder, driven tick by tick."""

    def __init__(self, root: Path, destinations: dict[str, object] | None = None) -> None:
        (root / "rules.yaml").write_text(RULES)
        self.config = NodeConfig.model_validate({
            "var_dir": str(root / "var"),
            "settle_seconds": 0,
            "rules": str(root / "rules.yaml"),
            "destinations": destinations or {"local": {"type": "folder",
                                                       "path": str(root / "out")}},
            "default_destinations": list(destinations or ["local"]),
            "delivery": {"max_attempts": 2, "backoff_seconds": 1, "timeout_seconds": 2},
        })
        self.ledger = Ledger(self.config.ledger_path)
        self.spool = Spool(self.config.spool_dir)
        rules = RuleSet.load(self.config.rules, set(self.config.destinations))
        self.pipeline = Pipeline(self.config, self.ledger, rules)

    def receive(self, paths: list[Path]) -> None:
        for path in paths:
            stored = self.spool.store(path.read_bytes())
            header = dcmread(stored, stop_before_pixels=True)
            self.ledger.add_instance(
                path=str(stored), sop_instance_uid=str(header.SOPInstanceUID),
                sop_class_uid=str(header.SOPClassUID), study_uid=str(header.StudyInstanceUID),
                series_uid=str(header.SeriesInstanceUID), calling_ae="SCANNER",
                peer="127.0.0.1:1", size=stored.stat().st_size,
            )

    def run(self, now: float, ticks: int = 3) -> None:
        for _ in range(ticks):
            self.pipeline.run_once(now)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A histogram model GE 3 T -> Siemens 3 T, fitted on the real sample series."""
    root = tmp_path_factory.mktemp("models")
    source = assemble(read_sample("ge-signa-architect-3t-multiphase")).acquisition
    target = assemble(read_sample("siemens-prisma-3t-prone")).acquisition
    save_model(HistogramHarmonizer.fit([source], [target]), root / MODEL,
               training_data="tests/data samples", training_command="pytest fixture")
    return root


@pytest.fixture
def harness(tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    return Harness(tmp_path)


def test_every_real_file_is_routed_by_its_header_or_quarantined_with_a_reason(
    harness: Harness, tmp_path: Path
) -> None:
    harness.receive([p for p in SAMPLES.rglob("*.dcm")])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"1.2" * 3)
    harness.ledger.add_instance(
        path=str(broken), sop_instance_uid=None, sop_class_uid=None, study_uid=None,
        series_uid=None, calling_ae="SCANNER", peer="127.0.0.1:1", size=140,
        parse_error="malformed DICOM: truncated",
    )
    harness.run(now=1e12)
    jobs = {job.id: job for job in harness.ledger.jobs()}
    by_rule = {job.rule: job for job in jobs.values() if job.rule}
    # GE 3 T multiphase: harmonized, one derived series of 100 instances.
    ge = by_rule["ge-3t"]
    assert ge.state == "delivered"
    delivered = sorted((tmp_path / "out" / f"job-{ge.id:08d}").glob("*.dcm"))
    assert len(delivered) == 100
    first = dcmread(delivered[0])
    assert first.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value == MODEL
    # Siemens 3 T: the reference scanner, passed through unchanged.
    assert by_rule["reference"].state == "delivered"
    # Philips and the 1996 GE Genesis image (gauss, 1.5 T) have no model here: the default
    # rule quarantines them, and says so.
    reasons = sorted(job.reason or "" for job in jobs.values() if job.state == "quarantined")
    assert reasons.count("rule 'default' quarantines it") == 2
    assert any("not an MR image (Modality SEG" in r for r in reasons)
    assert sum("Enhanced MR" in r for r in reasons) == 2
    assert "malformed DICOM: truncated" in reasons
    assert {job.state for job in jobs.values()} <= {"delivered", "quarantined"}


def test_a_tampered_model_quarantines_the_job_until_an_admin_retries(
    harness: Harness, models: Path, tmp_path: Path
) -> None:
    weights = models / MODEL / "model.json"
    original = weights.read_text()
    weights.write_text(json.dumps({**json.loads(original), "target_range": [0, 1]}))
    try:
        harness.receive(sample_files("ge-signa-architect-3t-multiphase"))
        harness.run(now=1e12)
        (job,) = harness.ledger.jobs()
        assert job.state == "quarantined"
        assert "sha256" in (job.reason or "") and "model.json" in (job.reason or "")
    finally:
        weights.write_text(original)
    harness.ledger.retry(job.id)
    harness.run(now=1e12)
    retried = harness.ledger.job(job.id)
    assert retried is not None and retried.state == "delivered"


def test_an_unreachable_destination_is_retried_then_failed(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    closed_port = free_port()
    harness = Harness(tmp_path, {"pacs": {"type": "dicom", "ae_title": "PACS",
                                          "host": "127.0.0.1", "port": closed_port}})
    harness.receive(sample_files("siemens-prisma-3t-prone")[:2])
    harness.run(now=1e12, ticks=1)
    (delivery,) = harness.ledger.deliveries(1)
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert delivery.next_attempt_at == pytest.approx(1e12 + 1)
    harness.run(now=1e12 + 0.5, ticks=1)  # not yet due: backoff
    assert harness.ledger.deliveries(1)[0].attempts == 1
    harness.run(now=1e12 + 2, ticks=1)
    job = harness.ledger.job(1)
    assert job is not None and job.state == "failed"
    assert "delivery to pacs failed after 2 attempts" in (job.reason or "")
    # Nothing lost: the received files are still in the spool for a retry.
    assert all(Path(i.path).is_file() for i in harness.ledger.instances(1))


def test_restart_resumes_an_unfinished_job(harness: Harness, tmp_path: Path) -> None:
    harness.receive(sample_files("ge-signa-architect-3t-multiphase"))
    harness.pipeline.claim_settled(1e12)
    (job,) = harness.ledger.jobs()
    harness.pipeline.route(job)
    harness.ledger.close()  # the node dies between routing and harmonizing
    restarted = Harness(tmp_path)
    restarted.run(now=1e12)
    done = restarted.ledger.job(job.id)
    assert done is not None and done.state == "delivered"
    assert [state for _, state, _ in restarted.ledger.events(job.id)][:2] == ["complete", "routed"]
