"""Scanner profiles: the six shipped ones load, and impossible values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evaluation.cli import main
from evaluation.virtual_scanner.profiles import (
    ProfileError,
    available_profiles,
    load_profile,
    profile_from_mapping,
    profiles_dir,
)

SHIPPED = ["ge-1.5t", "ge-3t", "philips-1.5t", "philips-3t", "siemens-1.5t", "siemens-3t"]


def _yaml(name: str) -> dict:
    return yaml.safe_load((profiles_dir() / f"{name}.yaml").read_text())


def test_six_profiles_ship_and_load() -> None:
    assert set(SHIPPED) <= set(available_profiles())
    for name in SHIPPED:
        p = load_profile(name)
        assert p.name == name
        assert p.field_strength_t in (1.5, 3.0)
        assert p.echo_time_ms < p.repetition_time_ms
    assert load_profile("ge-1.5t").layout == "multiphase"
    formats = {load_profile(n).field_strength_format for n in SHIPPED}
    assert {"3", "3.0"} <= formats  # both real-world spellings of 3 T are exercised


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("sequence", "repetition_time_ms", -5.0, "sequence.repetition_time_ms"),
        ("sequence", "flip_angle_deg", 95, "sequence.flip_angle_deg"),
        ("geometry", "matrix", 0, "geometry.matrix"),
        ("scanner", "field_strength_format", "7", "scanner.field_strength_format"),
        ("dicom", "layout", "dynamics", "dicom.layout"),
        ("contrast", "agent", "water", "contrast.agent"),
    ],
)
def test_impossible_values_name_the_field(section: str, key: str, value: object,
                                          needle: str) -> None:
    data = _yaml("ge-1.5t")
    data[section][key] = value
    with pytest.raises(ProfileError, match=needle.replace(".", r"\.")) as err:
        profile_from_mapping("bad", data, "bad.yaml")
    assert "bad.yaml" in str(err.value)


def test_missing_and_unknown_fields_are_reported() -> None:
    data = _yaml("siemens-3t")
    del data["timing"]["phases"]
    with pytest.raises(ProfileError, match=r"timing\.phases is missing"):
        profile_from_mapping("x", data, "x.yaml")
    data = _yaml("siemens-3t")
    data["hardware"]["snr_typo"] = 3
    with pytest.raises(ProfileError, match="snr_typo"):
        profile_from_mapping("x", data, "x.yaml")


def test_admin_adds_a_profile_by_dropping_a_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scanners").mkdir()
    data = _yaml("philips-3t")
    data["scanner"]["model_name"] = "Ingenia Elition X"
    (tmp_path / "scanners" / "site-a.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DICOMNODE_CONF_DIR", str(tmp_path))
    assert available_profiles() == ["site-a"]
    assert load_profile("site-a").model_name == "Ingenia Elition X"


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", str(tmp_path / "a"), "--scanners", "ge-9t"]) == 2
    err = capsys.readouterr().err
    assert "ge-9t" in err and "ge-1.5t" in err  # names the bad profile and lists good ones
    assert main(["simulate", "--out", str(tmp_path / "b"), "--matrix", "0"]) == 2
    assert "matrix" in capsys.readouterr().err
    assert main(["simulate", "--out", str(tmp_path / "c"), "--patients", "0"]) == 2
    assert "patients" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_help_lists_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
