"""Routing: ``conf/rules.yaml`` maps a scanner to a harmonizer and destinations.

Rules are tried in order and the first match wins; the last rule must match everything, so
no series goes unrouted without a stated reason. A rule matches on the normalized vendor
(``manufacturer``), the nominal field in tesla (``field_strength``), and exact values of any
other DICOM keyword (``tags``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict

from dicomnode.config import ConfigError, describe_validation_error, load_yaml
from harmonizers.domain import nominal_field_strength, normalize_manufacturer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    manufacturer: str | None = None
    field_strength: float | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("manufacturer")
    @classmethod
    def _known_vendor(cls, value: str | None) -> str | None:
        if value is None:
            return None
        vendor = normalize_manufacturer(value)
        if vendor is None:
            raise ValueError(f"unknown vendor {value!r}")
        return vendor

    @field_validator("field_strength")
    @classmethod
    def _nominal(cls, value: float | None) -> float | None:
        if value is None:
            return None
        field = nominal_field_strength(value)
        if field is None:
            raise ValueError(f"implausible field strength {value!r}")
        return field

    @field_validator("tags")
    @classmethod
    def _keywords(cls, value: dict[str, str]) -> dict[str, str]:
        for keyword in value:
            if keyword not in keyword_dict or dictionary_VR(keyword_dict[keyword]) == "SQ":
                raise ValueError(f"{keyword!r} is not a DICOM keyword with a value")
        return value

    @property
    def is_catch_all(self) -> bool:
        return self.manufacturer is None and self.field_strength is None and not self.tags


class Rule(_Strict):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    action: Literal["harmonize", "passthrough", "quarantine"]
    method: str | None = None
    model: str | None = None
    destinations: list[str] | None = None

    @model_validator(mode="after")
    def _harmonize_needs_model(self) -> Rule:
        if self.action == "harmonize" and not (self.method and self.model):
            raise ValueError("action 'harmonize' needs both 'method' and 'model'")
        if self.action != "harmonize" and (self.method or self.model):
            raise ValueError(f"action {self.action!r} takes no 'method' or 'model'")
        return self


class RuleFile(_Strict):
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _sound(self) -> RuleFile:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        if not self.rules[-1].match.is_catch_all:
            raise ValueError("the last rule must be a default with an empty 'match'")
        return self


@dataclass(frozen=True)
class Decision:
    """Which rule matched, and why each earlier rule did not."""

    rule: Rule
    skipped: tuple[str, ...]


def _mismatch(match: Match, ds: Dataset) -> str | None:
    if match.manufacturer is not None:
        vendor = normalize_manufacturer(str(ds.get("Manufacturer", "") or ""))
        if vendor != match.manufacturer:
            return f"manufacturer {vendor} != {match.manufacturer}"
    if match.field_strength is not None:
        field = nominal_field_strength(ds.get("MagneticFieldStrength"))
        if field != match.field_strength:
            return f"field {field} T != {match.field_strength} T"
    for keyword, wanted in match.tags.items():
        actual = str(ds.get(keyword, "") or "").strip()
        if actual.lower() != wanted.strip().lower():
            return f"{keyword} {actual!r} != {wanted!r}"
    return None


class RuleSet:
    """The validated rules of one file, ready to route datasets."""

    def __init__(self, rules: list[Rule], source: str) -> None:
        self.rules = rules
        self.source = source

    @classmethod
    def load(cls, path: Path, destinations: set[str] | None = None) -> RuleSet:
        data = load_yaml(path)
        try:
            parsed = RuleFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(str(path), exc)) from exc
        if destinations is not None:
            for index, rule in enumerate(parsed.rules):
                unknown = sorted(set(rule.destinations or []) - destinations)
                if unknown:
                    raise ConfigError(
                        f"{path}: rules.{index}.destinations: unknown destinations {unknown} "
                        f"(node.yaml defines {sorted(destinations)})"
                    )
        return cls(parsed.rules, str(path))

    def route(self, ds: Dataset) -> Decision:
        skipped: list[str] = []
        for rule in self.rules:
            why_not = _mismatch(rule.match, ds)
            if why_not is None:
                return Decision(rule, tuple(skipped))
            skipped.append(f"{rule.name}: {why_not}")
        raise AssertionError("RuleFile guarantees a catch-all last rule")
