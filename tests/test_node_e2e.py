"""The node end to end as a real process, between real peers.

DCMTK storescu plays the scanner, Orthanc the research PACS, dciodvfy the validator.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import requests
from pydicom import Dataset, dcmread
from scipy.stats import wasserstein_distance

from dicomnode.assembly import assemble
from dicomnode.ledger import Job, Ledger
from dicomnode.provenance import PRIVATE_CREATOR, PRIVATE_GROUP
from evaluation.virtual_scanner.cohort import simulate_cohort
from evaluation.virtual_scanner.truth import breast_mask
from harmonizers.registry import load_model
from tests.peers import Node, Orthanc, dciodvfy_errors, echo, have, storescu, wait_for
from tests.samples import SAMPLES

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(
        not have("storescu", "echoscu", "Orthanc", "dciodvfy"),
        reason="needs dcmtk, orthanc and dicom3tools (make test installs them)",
    ),
]

TERMINAL = {"delivered", "quarantined", "failed"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[Node]:
    pacs = {"type": "dicom", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
            "port": orthanc.dicom_port}
    running = Node(tmp_path_factory.mktemp("node"), {
        "settle_seconds": 1,
        "destinations": {"pacs": pacs},
        "default_destinations": ["pacs"],
    }).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "cohort"
    simulate_cohort(out, patients=1, scanners=["ge-1.5t"], seed=11, matrix=96, slices=16,
                    reference="siemens-3t", progress=False)
    return out


def _jobs_for(node: Node, study_uid: str | None = None) -> list[Job]:
    ledger = Ledger(Path(node.config["var_dir"]) / "ledger.sqlite")
    try:
        return [j for j in ledger.jobs() if study_uid is None or j.study_uid == study_uid]
    finally:
        ledger.close()


def _settled(node: Node, study_uid: str | None = None, count: int = 1) -> list[Job]:
    def done() -> bool:
        jobs = _jobs_for(node, study_uid)
        return len(jobs) >= count and all(j.state in TERMINAL for j in jobs)

    wait_for(done, 180, "the node's jobs to finish", interval=0.5)
    return _jobs_for(node, study_uid)


def _download(orthanc: Orthanc, instance_id: str) -> Dataset:
    response = requests.get(f"{orthanc.url}/instances/{instance_id}/file", timeout=30)
    response.raise_for_status()
    return dcmread(io.BytesIO(response.content))


def test_a_simulated_ge_study_arrives_harmonized_at_the_pacs(
    node: Node, orthanc: Orthanc, cohort: Path, tmp_path: Path
) -> None:
    (study,) = cohort.glob("*/ge-1.5t")
    sent = sorted((study / "dicom").rglob("*.dcm"))
    study_uid = str(dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    result = storescu([study / "dicom"], node.ae_title, node.port)
    assert result.returncode == 0, result.stderr

    (job,) = _settled(node, study_uid)
    assert job.state == "delivered", job.reason
    assert (job.rule, job.method, job.model) == (
        "ge-1.5t", "histogram", "histogram-ge-1.5t_to_siemens-3t")

    # Orthanc holds the original study's UID with one complete derived series.
    suffix = "[harmonized histogram]"
    derived = [s for s in orthanc.series()
               if s["MainDicomTags"].get("SeriesDescription", "").endswith(suffix)]
    assert len(derived) == 1
    assert orthanc.get(f"/series/{derived[0]['ID']}/study")["MainDicomTags"][
        "StudyInstanceUID"] == study_uid
    instances = derived[0]["Instances"]
    assert len(instances) == len(sent)

    datasets = [_download(orthanc, i) for i in instances]
    model = load_model("histogram", "histogram-ge-1.5t_to_siemens-3t")
    for ds in datasets[:3]:
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SyntheticData == "YES"
        equipment = ds.ContributingEquipmentSequence[-1]
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[0x02].value == model.name
        assert block[0x03].value == model.sha256
        assert block[0x04].value == "ge-1.5t"
    path = tmp_path / "derived.dcm"
    datasets[0].save_as(path)
    assert dciodvfy_errors(path) == []

    # Measured, not assumed: the harmonized breast histogram is closer to the reference
    # scanner's rendering of the same virtual patient than the input was.
    truth = np.load(study / "truth" / "truth.npz")
    reference = truth["reference"]
    mask = np.broadcast_to(breast_mask(study / "truth"), reference.shape)
    before = assemble([dcmread(p) for p in sent]).acquisition.pixels
    after = assemble(datasets).acquisition.pixels
    distance_before = wasserstein_distance(before[mask], reference[mask])
    distance_after = wasserstein_distance(after[mask], reference[mask])
    assert distance_after < 0.5 * distance_before, (distance_before, distance_after)
    # Also on the shape of the histogram, with the scanner's arbitrary gain divided out.
    def shape(values: np.ndarray) -> np.ndarray:
        return values[mask] / np.median(values[mask])
    assert wasserstein_distance(shape(after), shape(reference)) < wasserstein_distance(
        shape(before), shape(reference))

    # The rule says `evaluate: true`: the quality report follows the images to the PACS, in
    # the same study, and dciodvfy and highdicom accept it.
    def reports() -> list[dict[str, object]]:
        return [s for s in orthanc.series()
                if s["MainDicomTags"].get("Modality") == "SR"
                and s["ParentStudy"] == derived[0]["ParentStudy"]]

    wait_for(lambda: len(reports()) == 1, 180, "the quality report in Orthanc", interval=0.5)
    (report_series,) = reports()
    report = _download(orthanc, str(report_series["Instances"][0]))  # type: ignore[index]
    sr = hd.sr.Comprehensive3DSR.from_dataset(report)
    assert sr.StudyInstanceUID == study_uid
    evidence = {item.SeriesInstanceUID for item in
                sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert datasets[0].SeriesInstanceUID in evidence
    report.save_as(tmp_path / "report.dcm")
    assert dciodvfy_errors(tmp_path / "report.dcm") == []
    (job,) = _jobs_for(node, study_uid)
    ledger = Ledger(Path(node.config["var_dir"]) / "ledger.sqlite")
    try:
        written = ledger.report(job.id)
    finally:
        ledger.close()
    assert written is not None and written.state == "written"


def test_real_vendor_files_are_routed_or_quarantined_and_the_node_stays_up(
    node: Node, orthanc: Orthanc
) -> None:
    before = {j.id for j in _jobs_for(node)}
    folders = [p for p in SAMPLES.iterdir() if p.is_dir() and p.name != "LICENSES"]
    result = storescu(folders, node.ae_title, node.port)
    assert result.returncode == 0, result.stderr
    # GE 3 T, Philips 3 T, Siemens 3 T, GE Genesis, ISPY1 SEG, 2 x Enhanced MR (Philips, Siemens)
    wait_for(lambda: len({j.id for j in _jobs_for(node)} - before) >= 7, 120, "7 new jobs")
    jobs = [j for j in _settled(node, count=len(before) + 7) if j.id not in before]
    states = sorted((j.rule or "", j.state) for j in jobs)
    assert states == [
        ("default", "quarantined"),  # the SEG: no field strength, no rule of its own
        ("ge-1.5t", "delivered"),  # the 1996 GE Genesis image: 15000 gauss is 1.5 T
        ("ge-3t", "delivered"),
        ("philips-3t", "delivered"),
        ("philips-3t", "quarantined"),  # Enhanced MR: not harmonized yet
        ("reference-scanner", "delivered"),  # Siemens 3 T, classic
        ("reference-scanner", "delivered"),  # Siemens 3 T, Enhanced MR: passed through
    ]
    reasons = [j.reason or "" for j in jobs if j.state == "quarantined"]
    assert any("(not an MR image (Modality SEG" in r for r in reasons)
    assert any("Enhanced MR (multi-frame) is not harmonized yet" in r for r in reasons)
    # The SEG was stored, never harmonized, and the admin sees why.
    listing = node.cli("jobs", "list", "--state", "quarantined")
    assert "not an MR image (Modality SEG" in listing.stdout
    assert echo(node.ae_title, node.port)
    logged = [e for e in node.log_events() if e.get("event", "").startswith("job_")]
    assert logged and all("job_id" in e for e in logged)
    assert any(e["event"] == "job_quarantined" and "SEG" in e.get("reason", "") for e in logged)


@pytest.mark.parametrize(
    ("compressor", "propose", "seed", "syntax"),
    [("dcmcjpls", "-xt", 21, "1.2.840.10008.1.2.4.80"),
     ("dcmcrle", "-xr", 22, "1.2.840.10008.1.2.5")],
)
def test_compressed_studies_are_accepted_decoded_and_harmonized(
    node: Node, tmp_path: Path, compressor: str, propose: str, seed: int, syntax: str
) -> None:
    simulate_cohort(tmp_path / "sim", patients=1, scanners=["philips-3t"], seed=seed, matrix=64,
                    slices=8, progress=False)
    (study,) = (tmp_path / "sim").glob("*/philips-3t")
    compressed = tmp_path / "compressed"
    compressed.mkdir()
    for index, path in enumerate(sorted((study / "dicom").rglob("*.dcm"))):
        subprocess.run([compressor, str(path), str(compressed / f"{index:04d}.dcm")], check=True)
    study_uid = str(dcmread(compressed / "0000.dcm", stop_before_pixels=True).StudyInstanceUID)
    result = storescu([compressed], node.ae_title, node.port, extra=[propose])
    assert result.returncode == 0, result.stderr
    (job,) = _settled(node, study_uid)
    assert job.state == "delivered", job.reason
    assert job.model == "histogram-philips-3t_to_siemens-3t"
    ledger = Ledger(Path(node.config["var_dir"]) / "ledger.sqlite")
    spooled = dcmread(ledger.instances(job.id)[0].path)
    ledger.close()
    assert spooled.file_meta.TransferSyntaxUID == syntax  # kept as the scanner sent it


def test_a_killed_node_loses_nothing_it_acknowledged(tmp_path: Path, cohort: Path) -> None:
    """SIGKILL after the sender heard Success, before the study settled: a restart delivers.

    The last instance is held back: with it the study would complete at once on its
    expected count, and the kill would race the job's creation."""
    (study,) = cohort.glob("*/ge-1.5t")
    sent = sorted((study / "dicom").rglob("*.dcm"))
    config = {"settle_seconds": 5,
              "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
              "default_destinations": ["out"]}
    first = Node(tmp_path / "node", config).start()
    try:
        assert storescu(sent[:-1], first.ae_title, first.port).returncode == 0
        assert first.process is not None
        first.process.kill()
        first.process.wait(10)
    finally:
        first.stop()
    assert _jobs_for(first) == []  # it died before the study settled
    second = Node(tmp_path / "node", config).start()
    try:
        assert storescu(sent[-1:], second.ae_title, second.port).returncode == 0
        (job,) = _settled(second)
        assert job.state == "delivered", job.reason
        assert len(list((tmp_path / "out" / f"job-{job.id:08d}").glob("*.dcm"))) == len(sent)
    finally:
        second.stop()
