"""The node's configuration: ``conf/node.yaml``, validated, with embedded defaults.

Every key has a default, so ``dicomnode serve`` with no file runs the embedded set-up:
AE title DICOMNODE on 127.0.0.1:11112, a spool and ledger under ``var/``, and a local
folder as the only destination. Sites add a DICOM destination (AE title, host, port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicomnode.paths import conf_dir

_AE_TITLE = r"^[ -~]{1,16}$"  # DICOM AE: up to 16 printable ASCII characters


class ConfigError(ValueError):
    """The configuration is wrong; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomDestination(_Strict):
    """A peer that takes C-STORE: a research PACS, Orthanc, another node."""

    type: Literal["dicom"]
    ae_title: Annotated[str, Field(pattern=_AE_TITLE)]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]


class FolderDestination(_Strict):
    """A local folder; the embedded default, so the demo needs no PACS."""

    type: Literal["folder"]
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="type")]


class DeliveryPolicy(_Strict):
    """Retries with exponential backoff, capped, then the delivery is marked failed."""

    max_attempts: Annotated[int, Field(ge=1)] = 5
    backoff_seconds: Annotated[float, Field(gt=0)] = 2.0
    backoff_cap_seconds: Annotated[float, Field(gt=0)] = 300.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0


def _default_folder() -> DicomDestination | FolderDestination:
    return FolderDestination(type="folder", path=Path("var/out"))


class NodeConfig(_Strict):
    ae_title: Annotated[str, Field(pattern=_AE_TITLE)] = "DICOMNODE"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    max_pdu: Annotated[int, Field(ge=4096)] = 131072
    var_dir: Path = Path("var")
    settle_seconds: Annotated[float, Field(ge=0)] = 10.0
    rules: Path = Field(default_factory=lambda: conf_dir() / "rules.yaml")
    destinations: dict[str, Destination] = Field(
        default_factory=lambda: {"local": _default_folder()}
    )
    default_destinations: list[str] = Field(default_factory=lambda: ["local"])
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)

    @model_validator(mode="after")
    def _destinations_exist(self) -> NodeConfig:
        unknown = [d for d in self.default_destinations if d not in self.destinations]
        if unknown:
            raise ValueError(f"default_destinations names unknown destinations {unknown}")
        return self

    @property
    def spool_dir(self) -> Path:
        return self.var_dir / "spool"

    @property
    def jobs_dir(self) -> Path:
        return self.var_dir / "jobs"

    @property
    def ledger_path(self) -> Path:
        return self.var_dir / "ledger.sqlite"


def describe_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: the file, the dotted field path and what is wrong."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {error['msg']}")
    return "\n".join(lines)


def load_yaml(path: Path) -> object:
    """Parse a YAML file, turning every failure into a ConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_config(path: Path | None) -> NodeConfig:
    """The node configuration from ``path``, or the embedded defaults when None."""
    if path is None:
        return NodeConfig()
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path), exc)) from exc
