"""Model folders: weights plus a card that says what the model is and pins the weights.

A model is a folder ``models_dir()/<name>/`` holding the method's weights file and
``card.yaml``::

    method: histogram
    source_domain: ge-1.5t
    target_domain: siemens-3t
    weights: model.json
    sha256: 3f5a...            # of the weights file
    training_data: ...
    training_command: ...
    date: '2025-01-31T12:00:00+00:00'
    evaluation: {...}          # free-form figures

The node refuses a model whose weights do not match the card's SHA-256, so a harmonized
series can always be traced to the exact weights that made it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dicomnode.paths import models_dir
from harmonizers.base import Harmonizer, ModelError
from harmonizers.domain import ScannerDomain

__all__ = [
    "CARD_FILE", "LoadedModel", "ModelCard", "ModelError", "load_model_folder", "save_model"
]

CARD_FILE = "card.yaml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelCard:
    """The contents of ``card.yaml``."""

    method: str
    source_domain: str
    target_domain: str
    weights: str
    sha256: str
    training_data: str
    training_command: str
    date: str
    evaluation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Parse and validate a card file; ModelError names the file and the problem."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"{path}: cannot read model card ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{path}: model card must be a YAML mapping")
        required = [name for name in cls.__dataclass_fields__ if name != "evaluation"]
        missing = [name for name in required if data.get(name) in (None, "")]
        if missing:
            raise ModelError(f"{path}: model card lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelError(f"{path}: model card has unknown keys {', '.join(unknown)}")
        # YAML turns an unquoted date into a date object; the card keeps text.
        card = cls(**{k: str(v) for k, v in data.items() if k in required},
                   evaluation=dict(data.get("evaluation") or {}))
        for side in (card.source_domain, card.target_domain):
            try:
                ScannerDomain.parse(side)
            except ValueError as exc:
                raise ModelError(f"{path}: {exc}") from None
        if not _SHA256.fullmatch(card.sha256):
            raise ModelError(f"{path}: sha256 must be 64 lower-case hex digits")
        return card

    def write(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(asdict(self), sort_keys=False))


@dataclass(frozen=True)
class LoadedModel:
    """A verified model, ready for the node: its harmonizer and its provenance.

    ``card`` is the validated ``card.yaml`` as a dict (keys as in :class:`ModelCard`);
    ``sha256`` is the weights' digest, checked against the card at load time.
    """

    name: str
    folder: Path
    harmonizer: Harmonizer
    card: dict[str, Any]
    sha256: str
    source_domain: ScannerDomain

    def check_source(self, domain: ScannerDomain | None) -> None:
        """Raise ModelError unless a series from ``domain`` is what this model maps from."""
        expected = self.source_domain
        if domain is None:
            raise ModelError(
                f"model {self.name!r} maps {expected.name} series, but this series' scanner "
                "is unknown (Manufacturer or MagneticFieldStrength missing or unrecognised)"
            )
        if domain.vendor != expected.vendor or not math.isclose(domain.field_t, expected.field_t):
            raise ModelError(
                f"model {self.name!r} maps {expected.name} series, not {domain.name} "
                f"({self.folder / CARD_FILE})"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_folder(
    cls: type[Harmonizer], name: str, *, root: Path | None = None
) -> LoadedModel:
    """Load model ``name`` from ``root`` (default ``models_dir()``) with class ``cls``.

    Checks, in order, that the folder and its card exist, the card is for ``cls.method``,
    and the weights' SHA-256 equals the card's; then loads the weights. Every failure raises
    ModelError saying what is wrong and with which file. The node calls this through
    :func:`harmonizers.registry.load_model`, which picks ``cls`` by method name.
    """
    method = cls.method
    if not _NAME.fullmatch(name):
        raise ModelError(f"invalid model name {name!r}: expected one folder name")
    folder = (root if root is not None else models_dir()) / name
    if not folder.is_dir():
        raise ModelError(f"no model {name!r}: {folder} is not a folder")
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"model {name!r} has no card: {card_path} is missing")
    card = ModelCard.read(card_path)
    if card.method != method:
        raise ModelError(f"{card_path}: model {name!r} is a {card.method!r} model, not {method!r}")
    if card.weights != cls.weights_file:
        raise ModelError(
            f"{card_path}: weights {card.weights!r}, but {method} models use {cls.weights_file!r}"
        )
    weights_path = folder / card.weights
    if not weights_path.is_file():
        raise ModelError(f"model {name!r}: weights file {weights_path} is missing")
    actual = sha256_file(weights_path)
    if actual != card.sha256:
        raise ModelError(
            f"model {name!r}: {weights_path} has sha256 {actual}, but {card_path} pins "
            f"{card.sha256}; the weights were changed or the card is stale"
        )
    try:
        harmonizer = cls.load(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {name!r}: cannot load weights: {exc}") from exc
    for side, own, carded in (
        ("source", harmonizer.source_domain, card.source_domain),
        ("target", harmonizer.target_domain, card.target_domain),
    ):
        if own is not None and own != ScannerDomain.parse(carded):
            raise ModelError(
                f"model {name!r}: {weights_path} was fitted with {side} {own.name}, "
                f"but {card_path} says {carded}"
            )
    return LoadedModel(
        name=name,
        folder=folder,
        harmonizer=harmonizer,
        card=asdict(card),
        sha256=actual,
        source_domain=ScannerDomain.parse(card.source_domain),
    )


def save_model(
    harmonizer: Harmonizer,
    folder: Path,
    *,
    training_data: str,
    training_command: str,
    evaluation: dict[str, Any] | None = None,
) -> ModelCard:
    """Write the harmonizer's weights and a card pinning them into ``folder``.

    The harmonizer must know its source and target domains (fitted on acquisitions whose
    scanner was recognised), since the node routes and checks series by them.
    """
    if harmonizer.source_domain is None or harmonizer.target_domain is None:
        raise ModelError("cannot save a model without known source and target domains")
    harmonizer.save(folder)
    card = ModelCard(
        method=harmonizer.method,
        source_domain=harmonizer.source_domain.name,
        target_domain=harmonizer.target_domain.name,
        weights=harmonizer.weights_file,
        sha256=sha256_file(folder / harmonizer.weights_file),
        training_data=training_data,
        training_command=training_command,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        evaluation=evaluation or {},
    )
    card.write(folder / CARD_FILE)
    return card
