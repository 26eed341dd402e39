from pathlib import Path

import pytest
from pydicom import Dataset

from dicomnode.config import ConfigError, load_config
from dicomnode.paths import conf_dir
from dicomnode.routing import RuleSet


def _header(manufacturer: str, field: str, **tags: str) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = manufacturer
    ds.MagneticFieldStrength = field
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def test_shipped_rules_route_every_simulated_scanner_and_old_gauss_headers() -> None:
    rules = RuleSet.load(conf_dir() / "rules.yaml", {"local"})
    assert rules.route(_header("GE MEDICAL SYSTEMS", "15000")).rule.name == "ge-1.5t"
    assert rules.route(_header("GE MEDICAL SYSTEMS", "1.494")).rule.name == "ge-1.5t"
    assert rules.route(_header("Siemens Healthcare GmbH", "3")).rule.action == "passthrough"
    assert rules.route(_header("Philips Medical Systems", "3.0")).rule.name == "philips-3t"
    unknown = rules.route(_header("Acme", "1.5"))
    assert unknown.rule.name == "default"
    assert unknown.rule.action == "quarantine"
    assert any("manufacturer None != GE" in why for why in unknown.skipped)


def test_first_match_wins_and_tags_are_compared(tmp_path: Path) -> None:
    path = _rules(tmp_path, """
rules:
  - name: vibrant-only
    match: {manufacturer: GE, tags: {SeriesDescription: Ax VIBRANT}}
    action: passthrough
  - name: any-ge
    match: {manufacturer: ge medical systems}
    action: quarantine
  - name: default
    action: quarantine
""")
    rules = RuleSet.load(path)
    assert rules.route(_header("GE", "1.5", SeriesDescription="ax vibrant")).rule.name == (
        "vibrant-only"
    )
    decision = rules.route(_header("GE", "1.5", SeriesDescription="T2"))
    assert decision.rule.name == "any-ge"
    assert decision.skipped == ("vibrant-only: SeriesDescription 'T2' != 'Ax VIBRANT'",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - name: a\n    action: harmonize\n",
         "rules.0: Value error, action 'harmonize'"),
        ("rules:\n  - name: a\n    match: {manufacturer: GE}\n    action: passthrough\n",
         "the last rule must be a default"),
        ("rules:\n  - name: a\n    match: {tags: {NotAKeyword: x}}\n    action: passthrough\n"
         "  - name: d\n    action: quarantine\n", "rules.0.match.tags"),
        ("rules:\n  - name: a\n    action: passthrough\n    colour: red\n", "rules.0.colour"),
        ("rules: [\n", "not valid YAML"),
    ],
)
def test_bad_rules_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = _rules(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        RuleSet.load(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_rules_may_only_name_configured_destinations(tmp_path: Path) -> None:
    path = _rules(tmp_path, "rules:\n  - name: d\n    action: passthrough\n"
                            "    destinations: [pacs]\n")
    with pytest.raises(ConfigError, match=r"rules.0.destinations: unknown destinations \['pacs'\]"):
        RuleSet.load(path, {"local"})


def test_node_config_defaults_and_errors(tmp_path: Path) -> None:
    defaults = load_config(None)
    assert defaults.destinations["local"].type == "folder"
    assert defaults.ledger_path == Path("var/ledger.sqlite")
    bad = tmp_path / "node.yaml"
    bad.write_text("port: 0\ndestinations:\n  pacs: {type: dicom, ae_title: PACS, host: h}\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert f"{bad}: port:" in str(error.value)
    assert f"{bad}: destinations.pacs.dicom.port: Field required" in str(error.value)
