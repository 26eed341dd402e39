"""Model folders: save, verified load, and every way a model must be refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dicomnode.paths import models_dir
from harmonizers import make_models
from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import CARD_FILE, ModelError, save_model, sha256_file
from harmonizers.registry import available_methods, harmonizer_class, load_model
from tests.test_harmonizer_histogram import SOURCE, TARGET, fitted, source_scan

NAME = "histogram-ge-1.5t_to_siemens-3t"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root with one saved model; tests copy it before tampering."""
    root = tmp_path_factory.mktemp("models")
    save_model(fitted(), root / NAME, training_data="phantoms", training_command="pytest",
               evaluation={"note": "test"})
    return root


@pytest.fixture
def root(shipped: Path, tmp_path: Path) -> Path:
    for path in (shipped / NAME).iterdir():
        (tmp_path / NAME).mkdir(exist_ok=True)
        (tmp_path / NAME / path.name).write_bytes(path.read_bytes())
    return tmp_path


def edit_card(root: Path, **changes: object) -> None:
    path = root / NAME / CARD_FILE
    card = yaml.safe_load(path.read_text())
    card.update(changes)
    path.write_text(yaml.safe_dump(card))


def test_load_verified_model(root: Path) -> None:
    loaded = load_model("histogram", NAME, root=root)
    assert loaded.name == NAME
    assert loaded.sha256 == sha256_file(root / NAME / "model.json") == loaded.card["sha256"]
    assert loaded.card["source_domain"] == "ge-1.5t"
    assert loaded.card["target_domain"] == "siemens-3t"
    assert loaded.card["training_command"] == "pytest"
    assert loaded.card["evaluation"] == {"note": "test"}
    acq = source_scan(11, 1.0)
    loaded.check_source(acq.domain)
    out = loaded.harmonizer.harmonize(acq)
    assert out.shape == acq.pixels.shape and np.isfinite(out).all()


def test_models_dir_is_the_default_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(root))
    assert load_model("histogram", NAME).folder == root / NAME


def test_sha256_mismatch(root: Path) -> None:
    weights = root / NAME / "model.json"
    data = json.loads(weights.read_text())
    data["target_range"][1] *= 2
    weights.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"model\.json has sha256 .*, but .*card\.yaml pins"):
        load_model("histogram", NAME, root=root)


def test_corrupt_json_with_matching_card(root: Path) -> None:
    weights = root / NAME / "model.json"
    weights.write_text('{"format_version": 1, "method": "histogram", ')
    edit_card(root, sha256=sha256_file(weights))
    with pytest.raises(ModelError, match=r"model\.json: not valid JSON"):
        load_model("histogram", NAME, root=root)


def test_invalid_landmarks_with_matching_card(root: Path) -> None:
    weights = root / NAME / "model.json"
    data = json.loads(weights.read_text())
    data["target_landmarks"] = data["target_landmarks"][::-1]
    weights.write_text(json.dumps(data))
    edit_card(root, sha256=sha256_file(weights))
    with pytest.raises(ModelError, match="target landmarks must be"):
        load_model("histogram", NAME, root=root)


def test_unknown_model(root: Path) -> None:
    with pytest.raises(ModelError, match="no model 'nope'"):
        load_model("histogram", "nope", root=root)
    with pytest.raises(ModelError, match="invalid model name"):
        load_model("histogram", "../" + NAME, root=root)


def test_unknown_method(root: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown harmonization method 'magic'.*histogram"):
        load_model("magic", NAME, root=root)
    assert "histogram" in available_methods()


def test_every_registered_name_is_its_class_method() -> None:
    for method in available_methods():
        assert harmonizer_class(method).method == method


def test_a_histogram_model_loads_without_torch(root: Path) -> None:
    # The node's processes import the method a rule names, not every method.
    code = ("import sys; from pathlib import Path; from harmonizers.registry import load_model; "
            f"load_model('histogram', {NAME!r}, root=Path({str(root)!r})); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_card_for_another_method(root: Path) -> None:
    edit_card(root, method="cyclegan")
    with pytest.raises(ModelError, match="is a 'cyclegan' model, not 'histogram'"):
        load_model("histogram", NAME, root=root)


def test_missing_or_broken_card(root: Path) -> None:
    card = root / NAME / CARD_FILE
    edit_card(root, sha256=None)
    with pytest.raises(ModelError, match="card.yaml: model card lacks sha256"):
        load_model("histogram", NAME, root=root)
    card.write_text("method: [unclosed\n")
    with pytest.raises(ModelError, match="card.yaml: cannot read model card"):
        load_model("histogram", NAME, root=root)
    card.unlink()
    with pytest.raises(ModelError, match="has no card"):
        load_model("histogram", NAME, root=root)


def test_card_disagrees_with_weights(root: Path) -> None:
    edit_card(root, source_domain="philips-3t")
    with pytest.raises(ModelError, match="fitted with source ge-1.5t, but .*card.yaml says"):
        load_model("histogram", NAME, root=root)


def test_source_domain_mismatch(root: Path) -> None:
    loaded = load_model("histogram", NAME, root=root)
    loaded.check_source(SOURCE)
    loaded.check_source(ScannerDomain("GE", 1.5))
    with pytest.raises(ModelError, match="maps ge-1.5t series, not siemens-3t"):
        loaded.check_source(TARGET)
    with pytest.raises(ModelError, match="not ge-3t"):
        loaded.check_source(ScannerDomain("GE", 3.0))
    with pytest.raises(ModelError, match="scanner is unknown"):
        loaded.check_source(None)


def test_save_needs_domains(tmp_path: Path) -> None:
    harmonizer = fitted()
    harmonizer.source_domain = None
    with pytest.raises(ModelError, match="source and target domains"):
        save_model(harmonizer, tmp_path / "x", training_data="", training_command="")


@pytest.mark.parametrize("name", sorted(p.name for p in models_dir().iterdir() if p.is_dir()))
def test_shipped_model_verifies(name: str) -> None:
    """Shipped models are named <method>-<source>_to_<target> and match their cards."""
    method = name.split("-", 1)[0]
    card = load_model(method, name).card
    assert name == f"{method}-{card['source_domain']}_to_{card['target_domain']}"


def test_shipped_weights_come_from_the_committed_training_command(tmp_path: Path) -> None:
    """Re-running `make models` for one source gives the very weights that are shipped."""
    name = "histogram-ge-1.5t_to_siemens-3t"
    assert make_models.main(["--out", str(tmp_path), "--sources", "ge-1.5t"]) == 0
    shipped = load_model("histogram", name).card
    rebuilt = load_model("histogram", name, root=tmp_path).card
    assert rebuilt["sha256"] == shipped["sha256"]
    assert shipped["training_command"] == "python -m harmonizers.make_models"


def test_evaluate_only_rewrites_just_the_evaluation(tmp_path: Path) -> None:
    """After a change of inference code: same weights and training record, new figures."""
    name = "histogram-ge-1.5t_to_siemens-3t"
    shutil.copytree(models_dir() / name, tmp_path / name)
    before = yaml.safe_load((tmp_path / name / CARD_FILE).read_text())
    argv = ["--out", str(tmp_path), "--sources", "ge-1.5t", "--evaluate-only"]
    assert make_models.main(argv) == 0
    after = yaml.safe_load((tmp_path / name / CARD_FILE).read_text())
    assert {k: v for k, v in after.items() if k != "evaluation"} == {
        k: v for k, v in before.items() if k != "evaluation"}
    assert after["evaluation"]["command"] == "python -m harmonizers.make_models " + " ".join(argv)
    assert after["evaluation"]["mean"] == before["evaluation"]["mean"]  # a deterministic model
    assert load_model("histogram", name, root=tmp_path).sha256 == before["sha256"]


def test_deep_runs_for_other_sources_stage_and_checkpoint_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of `make_models --method cyclegan --sources S` side by side (one GPU, several
    sources) must not share a staging folder: the first to finish used to delete it under
    the others."""
    staged: list[Path | None] = []

    def quick_fit(method: str, source: str, cohort: list[Acquisition],
                  target: list[Acquisition], checkpoints: Path | None = None) -> Harmonizer:
        staged.append(checkpoints)
        return HistogramHarmonizer.fit(cohort, target)  # the staging is what is tested

    monkeypatch.setattr(make_models, "fit", quick_fit)
    root = tmp_path / "models"
    other = tmp_path / ".models.cyclegan.philips-1.5t.partial"
    other.mkdir()
    argv = ["--method", "cyclegan", "--out", str(root), "--sources", "ge-1.5t"]
    assert make_models.main(argv) == 0
    assert staged == [tmp_path / ".models.cyclegan.ge-1.5t.partial"]
    assert (root / "cyclegan-ge-1.5t_to_siemens-3t" / CARD_FILE).is_file()
    assert other.is_dir() and not (tmp_path / ".models.cyclegan.ge-1.5t.partial").exists()
