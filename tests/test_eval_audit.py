"""``dicomnode-eval audit``: a small simulated cohort, from a folder and from Orthanc.

The cohort is 2 patients on GE 1.5 T and Siemens 3 T (64 x 64 x 16), plus the GE studies
harmonized to Siemens 3 T with the shipped histogram model and written with the node's
provenance (dicomnode.provenance.derived_series): six acquisitions in three groups.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.assembly import assemble, dicom_files
from dicomnode.provenance import Provenance, derived_series
from evaluation.audit.__main__ import main as audit_main
from evaluation.audit.report import FIGURES
from evaluation.virtual_scanner.cohort import simulate_cohort
from harmonizers.registry import load_model
from tests.peers import Orthanc, free_port, have, storescu

SCANNERS = ["ge-1.5t", "siemens-3t"]
MODEL = "histogram-ge-1.5t_to_siemens-3t"
DROP = ("--drop-constant-features",)


def _harmonize(study: Path, target: Path) -> None:
    """Harmonize one study as the node does and write the derived series under ``target``."""
    loaded = load_model("histogram", MODEL)
    assembled = assemble([dcmread(f) for f in dicom_files([study])])
    harmonized = loaded.harmonizer.harmonize(assembled.acquisition)
    provenance = Provenance(
        method="histogram", model=loaded.name, model_sha256=loaded.sha256, rule="ge-1.5t",
        config_hash="0" * 64, source_domain="ge-1.5t",
        target_domain=str(loaded.card["target_domain"]),
    )
    target.mkdir(parents=True)
    for index, ds in enumerate(derived_series(assembled, harmonized, provenance)):
        ds.save_as(target / f"{index:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit") / "cohort"
    simulate_cohort(root, 2, SCANNERS, matrix=64, slices=16, progress=False)
    for study in sorted(root.glob("*/ge-1.5t")):
        _harmonize(study / "dicom", study / "harmonized")
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One measurement cache for the bad-input tests: each acquisition is measured once."""
    return tmp_path_factory.mktemp("audit-cache")


def _feature_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "features.csv").open() as handle:
        return {row["uid"]: row for row in csv.DictReader(handle)}


def audit(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    status = audit_main([str(a) for a in (*args, "--no-progress")])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _copy_study(source: Path, target: Path, edit: object = None) -> None:
    """Copy a study's DICOM files with new study, series, instance and frame UIDs."""
    new = {kind: generate_uid() for kind in ("StudyInstanceUID", "FrameOfReferenceUID")}
    series: dict[str, str] = {}
    target.mkdir(parents=True)
    for index, path in enumerate(dicom_files([source])):
        ds = dcmread(path)
        for keyword, uid in new.items():
            setattr(ds, keyword, uid)
        ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if callable(edit):
            edit(ds)
        ds.save_as(target / f"{index:04d}.dcm", enforce_file_format=True)


def _flatten(ds: object) -> None:
    """Every pixel the same value: no breast can be found in it."""
    pixels = np.full_like(ds.pixel_array, 100)  # type: ignore[attr-defined]
    ds.PixelData = pixels.tobytes()  # type: ignore[attr-defined]


def _assert_no_report(out: Path) -> None:
    for name in ("report.html", "metrics.json", "features.csv"):
        assert not (out / name).exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging folder left behind


def test_folder_audit_writes_the_report_and_a_rerun_measures_only_new_series(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    # Two patients per scanner: some features (the breast's extent across the field of
    # view, a minimum of 0) come out equal by chance, so the normal run drops them.
    status, stdout, stderr = audit(capsys, cohort, "--out", out, "--jobs", "2", *DROP)
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert (summary["series"], summary["computed"], summary["cached"]) == (6, 6, 0)
    assert summary["reference_domain"] == "siemens-3t"  # the harmonizer's target

    report = (out / "report.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", report)
    for title, _, _ in FIGURES:
        assert title in headings
    assert report.count("src='data:image/png;base64,") == len(FIGURES) == 5
    assert not re.search(r"(src|href)=['\"]?https?:", report)  # self-contained

    metrics = json.loads((out / "metrics.json").read_text())
    groups = metrics["groups"]
    harmonized = f"harmonized: histogram/{MODEL} from GE 1.5T SIGNA HDxt"
    assert set(groups) == {"GE 1.5T SIGNA HDxt", "SIEMENS 3T MAGNETOM Vida", harmonized}
    assert groups["SIEMENS 3T MAGNETOM Vida"]["is_reference"]
    for name in ("GE 1.5T SIGNA HDxt", harmonized):
        assert groups[name]["frd"]["value"] > 0
    assert 0 <= metrics["identifiability"]["original"]["auc"] <= 1
    assert 0 <= metrics["identifiability"]["harmonized: histogram"]["auc"] <= 1
    # Each harmonized acquisition pairs with its own original through the references.
    assert metrics["pairs"][harmonized]["pairs"] == 2
    # The harmonizer moves intensities towards the reference.
    assert (groups[harmonized]["intensity_distance_to_reference"]
            < groups["GE 1.5T SIGNA HDxt"]["intensity_distance_to_reference"])

    with (out / "features.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert sorted(r["harmonized"] for r in rows) == ["0"] * 4 + ["1"] * 2
    originals = {r["uid"] for r in rows if r["harmonized"] == "0"}
    assert {r["source_uid"] for r in rows if r["harmonized"] == "1"} <= originals
    assert len(metrics["features"]) > 10 and metrics["features"][0] in rows[0]

    status, stdout, stderr = audit(capsys, cohort, "--out", out, "--jobs", "1", *DROP)
    assert status == 0, stderr
    assert (json.loads(stdout)["computed"], json.loads(stdout)["cached"]) == (0, 6)

    # A new study in the archive is the only thing measured on the next run.
    grown = tmp_path / "grown"
    shutil.copytree(cohort, grown)
    _copy_study(cohort / "SYNTH-P0001" / "siemens-3t" / "dicom", grown / "extra")
    status, stdout, stderr = audit(capsys, grown, "--out", out, "--jobs", "1", *DROP)
    assert status == 0, stderr
    assert (json.loads(stdout)["computed"], json.loads(stdout)["series"]) == (1, 7)


def test_an_empty_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    status, _, stderr = audit(capsys, empty, "--out", out)
    assert status != 0
    assert f"no DICOM files under {empty}" in stderr
    assert not out.exists()


def test_a_series_without_a_breast_fails_the_audit_unless_skipped(
    cohort: Path, shared_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "source", tmp_path / "out"
    shutil.copytree(cohort, source)
    _copy_study(cohort / "SYNTH-P0001" / "siemens-3t" / "dicom", source / "flat", _flatten)
    flat_series = {str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
                   for f in dicom_files([source / "flat"])}

    status, _, stderr = audit(capsys, source, "--out", out, "--cache", shared_cache)
    assert status != 0
    named = re.search(r"series (\S+) in (\S+): (.+)", stderr)
    assert named, stderr
    assert named[1] in flat_series and Path(named[2]) == source / "flat"
    assert "breast" in named[3] and "--skip-bad" in stderr
    assert not out.exists()  # the cache lives elsewhere here; nothing else was written

    status, stdout, stderr = audit(capsys, source, "--out", out, "--cache", shared_cache,
                                   "--skip-bad", *DROP)
    assert status == 0, stderr
    assert json.loads(stdout)["computed"] == 0  # only the bad one was tried again
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]
    assert [s["uid"] for s in skipped] == [named[1]]


def test_a_feature_constant_across_a_group_fails_the_audit(
    cohort: Path, shared_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same acquisition twice under new UIDs: every feature is constant in its group.
    source, out = tmp_path / "source", tmp_path / "out"
    study = cohort / "SYNTH-P0001" / "siemens-3t" / "dicom"
    _copy_study(study, source / "a")
    _copy_study(study, source / "b")
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    status, _, stderr = audit(capsys, source, "--out", out, "--cache", shared_cache)
    assert status != 0
    assert "is constant" in stderr and "SIEMENS 3T MAGNETOM Vida" in stderr
    assert "--drop-constant-features" in stderr
    assert (out / "report.html").read_text() == "an earlier report"  # left as it was
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]


def test_a_pacs_that_cannot_be_reached_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    out = tmp_path / "out"
    status, _, stderr = audit(capsys, "--pacs", f"ORTHANC@127.0.0.1:{port}", "--out", out)
    assert status != 0
    assert f"could not connect to PACS ORTHANC@127.0.0.1:{port}" in stderr
    assert not out.exists()
    _assert_no_report(out)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if not have("Orthanc", "storescu"):
        pytest.skip("Orthanc or DCMTK not installed")
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.peers
def test_an_audit_from_orthanc_matches_the_folder_audit(
    cohort: Path, orthanc: Orthanc, shared_cache: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import requests

    sent = storescu([cohort], orthanc.ae_title, orthanc.dicom_port)
    assert sent.returncode == 0, sent.stderr
    pacs = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"

    # Orthanc answers C-FIND and C-GET only for modalities it knows (DicomAlwaysAllowFind
    # and DicomAlwaysAllowGet default to false): until then the query is refused.
    unknown = tmp_path / "unknown"
    status, _, stderr = audit(capsys, "--pacs", pacs, "--out", unknown)
    assert status != 0
    assert f"PACS {pacs} refused the C-FIND at STUDY level" in stderr
    assert not unknown.exists()
    response = requests.put(f"{orthanc.url}/modalities/eval", timeout=10, json={
        "AET": "DICOMNODE-EVAL", "Host": "127.0.0.1", "Port": free_port(),
    })
    response.raise_for_status()

    # Its own cache: every acquisition is measured from the pixels Orthanc sent back.
    out = tmp_path / "out"
    status, stdout, stderr = audit(capsys, "--pacs", pacs, "--out", out, "--jobs", "1", *DROP)
    assert status == 0, stderr
    assert (json.loads(stdout)["series"], json.loads(stdout)["computed"]) == (6, 6)
    folder_out = tmp_path / "folder"
    status, _, stderr = audit(capsys, cohort, "--out", folder_out, "--cache", shared_cache,
                              "--jobs", "1", *DROP)
    assert status == 0, stderr
    assert _feature_rows(out) == _feature_rows(folder_out)
    report = (out / "report.html").read_text()
    assert report.count("src='data:image/png;base64,") == len(FIGURES)
    assert json.loads((out / "metrics.json").read_text())["source"] == pacs
    assert not list(tmp_path.glob(".out.*"))  # the download folder is gone

    refused = tmp_path / "refused"
    wrong = f"NOT-ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    status, _, stderr = audit(capsys, "--pacs", wrong, "--out", refused)
    assert status != 0
    assert f"PACS {wrong} rejected the association" in stderr
    assert "called AE title not recognized" in stderr
    _assert_no_report(refused)
    assert not refused.exists()
