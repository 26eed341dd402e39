from pathlib import Path

import pytest
from pydicom import Dataset

from dicomnode.config import ConfigError, load_config
from dicomnode.paths import conf_dir
from dicomnode.routing import RuleSet


def _header(manufacturer: str, field: str, **tags: object) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = manufacturer
    ds.MagneticFieldStrength = field
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return RuleSet.load(path)


def test_shipped_rules_route_every_simulated_scanner_and_old_gauss_headers() -> None:
    rules = RuleSet.load(conf_dir() / "rules.yaml", {"local"})
    assert rules.route(_header("GE MEDICAL SYSTEMS", "15000")).rule.name == "ge-1.5t"
    assert rules.route(_header("GE MEDICAL SYSTEMS", "1.494")).rule.name == "ge-1.5t"
    assert rules.route(_header("Siemens Healthcare GmbH", "3")).rule.action == "passthrough"
    assert rules.route(_header("Philips Medical Systems", "3.0")).rule.name == "philips-3t"
    unknown = rules.route(_header("Acme", "1.5"))
    assert unknown.rule.name == "default"
    assert unknown.rule.action == "quarantine"
    assert "ge-1.5t: manufacturer None not = 'GE'" in unknown.skipped


RULES = """
rules:
  - name: vibrant
    match: {manufacturer: ge medical systems, tags: {SeriesDescription: {regex: "(?i)vibrant"}}}
    action: passthrough
  - name: short-te
    match: {tags: {EchoTime: {min: 1.0, max: 2.5}}}
    action: harmonize
    method: histogram
    model: m
    evaluate: true
  - name: stations
    match: {field_strength: [1.5, 3], tags: {StationName: [MR1, mr2]}}
    action: discard
  - name: exact
    match: {tags: {Modality: mr, EchoNumbers: 2}}
    action: passthrough
  - name: default
    action: quarantine
"""


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        (_header("GE MEDICAL SYSTEMS", "1.5", SeriesDescription="Ax VIBRANT MPh"), "vibrant"),
        (_header("Siemens", "3", SeriesDescription="Ax VIBRANT", EchoTime="2.0"), "short-te"),
        (_header("GE", "1.5", SeriesDescription="T2", EchoTime="2.5"), "short-te"),
        (_header("GE", "1.5", EchoTime="2.6", StationName="Mr2"), "stations"),
        (_header("GE", "0.5", EchoTime="2.6", StationName="MR2"), "default"),
        (_header("GE", "1.5", Modality="MR", EchoNumbers="2"), "exact"),
        (_header("GE", "1.5", Modality="MR"), "default"),
    ],
)
def test_equality_regex_range_and_in_list(tmp_path: Path, header: Dataset, rule: str) -> None:
    assert _rules(tmp_path, RULES).route(header).rule.name == rule


def test_explained_mismatches_say_why(tmp_path: Path) -> None:
    decision = _rules(tmp_path, RULES).route(_header("GE", "1.5", EchoTime="9"))
    assert decision.skipped[:2] == (
        "vibrant: SeriesDescription None not matching /(?i)vibrant/",
        "short-te: EchoTime '9' not in [1.0, 2.5]",
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("rules:\n  - name: a\n    action: harmonize\n", 2,
         "rules.0: Value error, action 'harmonize' needs both"),
        ("rules:\n  - name: a\n    match: {manufacturer: GE}\n    action: passthrough\n", 1,
         "the last rule must be a default"),
        ("rules:\n  - name: a\n    match:\n      tags: {NotAKeyword: x}\n"
         "    action: passthrough\n  - name: d\n    action: quarantine\n", 4,
         "rules.0.match.tags"),
        ("rules:\n  - name: a\n    action: passthrough\n    colour: red\n", 4, "rules.0.colour"),
        ("rules:\n  - name: a\n    match: {tags: {SeriesDescription: {regex: '(['}}}\n"
         "    action: passthrough\n  - name: d\n    action: quarantine\n", 3,
         "invalid regular expression"),
        ("rules:\n  - name: a\n    match: {manufacturer: Acme}\n    action: passthrough\n", 3,
         "unknown vendor 'Acme'"),
        ("rules: [\n", 2, "not valid YAML"),
    ],
)
def test_bad_rules_name_the_file_line_and_field(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _rules(tmp_path, text)
    assert f"{tmp_path / 'rules.yaml'}:{line}: " in str(error.value)
    assert message in str(error.value)


def test_rules_may_only_name_configured_destinations(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: d\n    action: passthrough\n    destinations: [pacs]\n")
    with pytest.raises(ConfigError, match=r":4: rules.0.destinations: unknown destinations"):
        RuleSet.load(path, {"local"})


def test_node_config_defaults_and_errors(tmp_path: Path) -> None:
    defaults = load_config(None)
    assert defaults.destinations["local"].type == "folder"
    assert defaults.ledger_path == Path("var/ledger.sqlite")
    bad = tmp_path / "node.yaml"
    bad.write_text("port: 0\ndestinations:\n  pacs: {type: dicom, ae_title: PACS, host: h}\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert f"{bad}:1: port:" in str(error.value)
    assert f"{bad}:3: destinations.pacs.dicom.port: Field required" in str(error.value)
