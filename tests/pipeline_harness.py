"""An in-process pipeline on a temporary ledger, spool and rules, driven tick by tick."""

from pathlib import Path

import pytest

from dicomnode.config import NodeConfig
from dicomnode.intake import register
from dicomnode.ledger import Ledger
from dicomnode.pipeline import Pipeline
from dicomnode.routing import RuleSet
from dicomnode.spool import Spool

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

    def __init__(
        self,
        root: Path,
        destinations: dict[str, object] | None = None,
        rules: str = RULES,
        **settings: object,
    ) -> None:
        (root / "rules.yaml").write_text(rules)
        self.config = NodeConfig.model_validate({
            "var_dir": str(root / "var"),
            "settle_seconds": 0,
            "rules": str(root / "rules.yaml"),
            "destinations": destinations or {"local": {"type": "folder",
                                                       "path": str(root / "out")}},
            "default_destinations": list(destinations or ["local"]),
            "delivery": {"max_attempts": 2, "backoff_seconds": 1, "timeout_seconds": 2},
            **settings,
        })
        self.ledger = Ledger(self.config.ledger_path)
        self.spool = Spool(self.config.spool_dir)
        ruleset = RuleSet.load(self.config.rules, set(self.config.destinations))
        self.pipeline = Pipeline(self.config, self.ledger, ruleset)

    def receive(self, paths: list[Path]) -> None:
        """What the SCP does per instance: spool it, then file it in the ledger."""
        for path in paths:
            data = path.read_bytes()
            register(self.ledger, self.spool.store(data), data, "SCANNER", "127.0.0.1:1")

    def run(self, now: float, ticks: int = 3) -> None:
        for _ in range(ticks):
            self.pipeline.run_once(now)


def dicom_harness(tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, port: int,
                  **settings: object) -> Harness:
    """A harness whose one destination is a DICOM SCP on loopback ``port`` (PACS)."""
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(models))
    return Harness(tmp_path, {"pacs": {"type": "dicom", "ae_title": "PACS",
                                       "host": "127.0.0.1", "port": port}}, RULES,
                   **settings)
