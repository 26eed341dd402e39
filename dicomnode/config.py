"""The node's configuration: ``conf/node.yaml``, validated, with embedded defaults.

Every key has a default, so ``dicomnode serve`` with no file runs the embedded set-up:
AE title DICOMNODE on 127.0.0.1:11112, a spool and ledger under ``var/``, and a local
folder as the only destination. Sites add a DICOM destination (AE title, host, port).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicomnode.paths import conf_dir

if TYPE_CHECKING:
    from evaluation.sidecar import Thresholds

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
    # Associations a harmonized series is streamed over at once: a DICOM C-STORE waits for
    # each response, so two in flight hide much of the round trip.
    stream_associations: Annotated[int, Field(ge=1, le=8)] = 2


class AllowedCaller(_Strict):
    """A sender the node accepts: its calling AE title and, optionally, its hosts."""

    ae_title: Annotated[str, Field(pattern=_AE_TITLE)]
    hosts: list[str] | None = None  # IP addresses; None accepts the AE title from any host


class TlsSettings(_Strict):
    """DICOM TLS (PS3.15 B.1): TLS 1.2 or later with the node's certificate."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None  # trusted client CAs, needed to require client certs
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsSettings:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


class Security(_Strict):
    """Who may send. ``allowed_callers`` None accepts any calling AE (logged at start)."""

    allowed_callers: list[AllowedCaller] | None = None
    tls: TlsSettings | None = None


class Admission(_Strict):
    """Limits that keep the node serving: refused work gets 0xA700, out of resources."""

    min_free_disk_mb: Annotated[float, Field(ge=0)] = 1024.0
    max_associations: Annotated[int, Field(ge=1)] = 16
    max_instance_mb: Annotated[float, Field(gt=0)] = 512.0


class Retention(_Strict):
    """How long the spool keeps a finished job's files; None keeps them."""

    discarded_days: Annotated[float, Field(ge=0)] | None = 7.0
    delivered_days: Annotated[float, Field(ge=0)] | None = None


class Metrics(_Strict):
    """Prometheus metrics and /healthz over HTTP on a loopback port; port 0 turns it off."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464


class Evaluation(_Strict):
    """The quality-report sidecar of rules with ``evaluate: true`` (evaluation/sidecar.py)."""

    # The reference domain's intensity and feature statistics; None takes the shipped
    # evaluation/reference/siemens-3t.json.
    reference: Path | None = None
    # Pass/warn limits by name (evaluation.sidecar.Thresholds); unnamed ones keep defaults.
    thresholds: dict[str, float | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_thresholds(self) -> Evaluation:
        self.limits()  # unknown names and inconsistent limits are refused at load
        return self

    def limits(self) -> Thresholds:
        """The thresholds as the sidecar takes them."""
        from evaluation.sidecar import Thresholds

        known = {f.name for f in dataclasses.fields(Thresholds)}
        unknown = sorted(set(self.thresholds) - known)
        if unknown:
            raise ValueError(
                f"unknown thresholds {unknown}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = dict(self.thresholds)
        return Thresholds(**values)


def _default_folder() -> DicomDestination | FolderDestination:
    return FolderDestination(type="folder", path=Path("var/out"))


class NodeConfig(_Strict):
    ae_title: Annotated[str, Field(pattern=_AE_TITLE)] = "DICOMNODE"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    max_pdu: Annotated[int, Field(ge=4096)] = 131072
    var_dir: Path = Path("var")
    settle_seconds: Annotated[float, Field(ge=0)] = 10.0
    # Instances of a series whose job already ran: "new-version" makes a new job holding
    # the whole series again (its output replaces the old, same UIDs); "quarantine" holds
    # the late instances for an admin.
    late_instances: Literal["new-version", "quarantine"] = "new-version"
    # Harmonize and send a multiphase series while it arrives (dicomnode/head_start.py);
    # off: a job starts when its study is complete.
    head_start: bool = True
    rules: Path = Field(default_factory=lambda: conf_dir() / "rules.yaml")
    destinations: dict[str, Destination] = Field(
        default_factory=lambda: {"local": _default_folder()}
    )
    default_destinations: list[str] = Field(default_factory=lambda: ["local"])
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    retention: Retention = Field(default_factory=Retention)
    security: Security = Field(default_factory=Security)
    admission: Admission = Field(default_factory=Admission)
    metrics: Metrics = Field(default_factory=Metrics)
    evaluation: Evaluation = Field(default_factory=Evaluation)

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


Lines = dict[tuple[str | int, ...], int]


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML and, for every mapping key and sequence item, the line it starts on."""

    path: Path
    data: object
    lines: Lines

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        """The line of the deepest part of a pydantic error location found in the file.

        Locations may hold parts that are not in the file (a union's tag, say); those are
        skipped, so the line is that of the nearest enclosing key.
        """
        found: tuple[str | int, ...] = ()
        line = self.lines.get(())
        for part in loc:
            candidate = (*found, part)
            if candidate in self.lines:
                found = candidate
                line = self.lines[candidate]
        return line

    def describe(self, exc: ValidationError) -> str:
        """One line per problem: file, line, the dotted field path and what is wrong."""
        messages = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            where = ".".join(str(part) for part in loc) or "(top level)"
            line = self.line_of(loc)
            at = f"{self.path}:{line}" if line else str(self.path)
            messages.append(f"{at}: {where}: {error['msg']}")
        return "\n".join(messages)


def _node_lines(node: yaml.Node, prefix: tuple[str | int, ...], lines: Lines) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            lines[path] = key.start_mark.line + 1
            _node_lines(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*prefix, index), lines)


def load_yaml(path: Path) -> YamlDocument:
    """Parse a YAML file, turning every failure into a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    lines: Lines = {}
    if root is not None:
        _node_lines(root, (), lines)
    return YamlDocument(path, data, lines)


def load_config(path: Path | None) -> NodeConfig:
    """The node configuration from ``path``, or the embedded defaults when None."""
    if path is None:
        return NodeConfig()
    document = load_yaml(path)
    data = document.data if document.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(document.describe(exc)) from exc
