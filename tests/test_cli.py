"""The admin's commands: clear errors for wrong configs, and a readable job listing."""

from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.ledger import Ledger


def test_a_wrong_config_names_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("port: 99999\n")
    assert main(["--config", str(config), "rules", "check"]) == 2
    error = capsys.readouterr().err
    assert f"{config}:1: port: Input should be less than or equal to 65535" in error


@pytest.mark.parametrize(("text", "message"), [
    ("evaluation:\n  thresholds:\n    sharpness_pass: 1\n",
     "unknown thresholds ['sharpness_pass']"),
    ("evaluation:\n  thresholds:\n    intensity_distance_pass: 2\n",
     "need 0 <= pass limit (2.0) <= warn limit (1.0)"),
])
def test_wrong_quality_thresholds_are_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "rules", "check"]) == 2
    error = capsys.readouterr().err
    assert f"{config}:1: evaluation:" in error and message in error, error


def test_rules_check_loads_every_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    assert "7 rules, 0 unusable models" in capsys.readouterr().out


def test_jobs_list_show_and_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"var_dir: {tmp_path / 'var'}\n")
    ledger = Ledger(tmp_path / "var" / "ledger.sqlite")
    instance = ledger.add_instance(
        path="/spool/x.dcm", sop_instance_uid="1.2", sop_class_uid="1.2.3", study_uid=None,
        series_uid=None, calling_ae="SCANNER", peer="127.0.0.1:4000", size=1,
        parse_error="malformed DICOM: bad tag")
    job = ledger.create_job(None, [instance], "malformed DICOM: bad tag")
    ledger.close()
    assert main(["--config", str(config), "jobs", "list", "--state", "quarantined"]) == 0
    assert "quarantined" in (listing := capsys.readouterr().out)
    assert "malformed DICOM: bad tag" in listing
    assert main(["--config", str(config), "jobs", "show", str(job)]) == 0
    assert "1 instances from SCANNER" in capsys.readouterr().out
    assert main(["--config", str(config), "jobs", "retry", str(job)]) == 0
    assert main(["--config", str(config), "jobs", "retry", str(job)]) == 2
    assert "only quarantined or failed jobs retry" in capsys.readouterr().err
    assert main(["--config", str(config), "jobs", "show", "999"]) == 2


def test_jobs_list_and_show_give_the_quality_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"var_dir: {tmp_path / 'var'}\n")
    ledger = Ledger(tmp_path / "var" / "ledger.sqlite")
    instance = ledger.add_instance(
        path="/spool/x.dcm", sop_instance_uid="1.2", sop_class_uid="1.2.3", study_uid="1.1",
        series_uid="1.1.1", calling_ae="SCANNER", peer="127.0.0.1:4000", size=1)
    job = ledger.create_job("1.1", [instance])
    ledger.update_job(job, "delivered", "images sent")
    ledger.request_report(job, ["pacs"])
    ledger.report_written(job, "/var/jobs/1/report/quality-report.dcm", "warn")
    ledger.close()
    assert main(["--config", str(config), "jobs", "list"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.split()[:2] == [str(job), "delivered"] and " warn " in row
    assert main(["--config", str(config), "jobs", "show", str(job)]) == 0
    shown = capsys.readouterr().out
    assert "quality report: written: warn" in shown
    assert "delivery pacs (report): pending" in shown
