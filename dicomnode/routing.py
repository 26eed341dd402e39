"""Routing: ``conf/rules.yaml`` maps a scanner to an action, a harmonizer and destinations.

Rules are tried in order and the first match wins; the last rule must match everything, so
no series goes unrouted without a stated reason. A rule matches on

- ``manufacturer``: the normalized vendor (GE, SIEMENS, PHILIPS, CANON, FUJIFILM), whatever
  the header spells ("GE MEDICAL SYSTEMS", "Siemens Healthcare GmbH", "TOSHIBA_MEC");
- ``field_strength``: the nominal field in tesla ("1.494", "3", "15000" gauss all normalize);
- ``tags``: any other DICOM keyword.

Each condition is a value (equality: numbers compare as numbers, text case-insensitively),
a list (in-list), ``{regex: ...}`` (Python regular expression, searched) or
``{min: ..., max: ...}`` (numeric range, inclusive). Rules are data: nothing in the file is
ever evaluated as code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict

from dicomnode.config import ConfigError, load_yaml
from harmonizers.domain import nominal_field_strength, normalize_manufacturer

Scalar = str | int | float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Regex(_Strict):
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value


class Range(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


Condition = Annotated[Scalar | list[Scalar] | Regex | Range, Field(union_mode="left_to_right")]


def _number(value: object) -> float | None:
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _equal(actual: str, wanted: Scalar) -> bool:
    a, w = _number(actual), _number(wanted)
    if a is not None and w is not None:
        return a == w
    return actual.strip().lower() == str(wanted).strip().lower()


def _satisfies(actual: str | None, condition: Condition) -> bool:
    """Whether a header value (None when absent) meets a condition."""
    if actual is None:
        return False
    if isinstance(condition, Regex):
        return re.search(condition.regex, actual) is not None
    if isinstance(condition, Range):
        value = _number(actual)
        return (
            value is not None
            and (condition.min is None or value >= condition.min)
            and (condition.max is None or value <= condition.max)
        )
    if isinstance(condition, list):
        return any(_equal(actual, item) for item in condition)
    return _equal(actual, condition)


def _describe(condition: Condition) -> str:
    if isinstance(condition, Regex):
        return f"matching /{condition.regex}/"
    if isinstance(condition, Range):
        return f"in [{condition.min if condition.min is not None else '-inf'}, " \
               f"{condition.max if condition.max is not None else 'inf'}]"
    if isinstance(condition, list):
        return f"in {condition}"
    return f"= {condition!r}"


def _normalized_vendor(condition: Condition) -> Condition:
    """Vendor conditions compare normalized stems, so 'ge medical systems' means GE."""
    def stem(value: Scalar) -> str:
        vendor = normalize_manufacturer(str(value))
        if vendor is None:
            raise ValueError(f"unknown vendor {value!r}")
        return vendor

    if isinstance(condition, list):
        return [stem(v) for v in condition]
    if isinstance(condition, Range):
        raise ValueError("a vendor cannot be a numeric range")
    return condition if isinstance(condition, Regex) else stem(condition)


def _nominal_field(condition: Condition) -> Condition:
    def nominal(value: Scalar) -> float:
        field = nominal_field_strength(value)
        if field is None:
            raise ValueError(f"implausible field strength {value!r}")
        return field

    if isinstance(condition, list):
        return [nominal(v) for v in condition]
    return condition if isinstance(condition, Regex | Range) else nominal(condition)


class Match(_Strict):
    manufacturer: Condition | None = None
    field_strength: Condition | None = None
    tags: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("manufacturer")
    @classmethod
    def _vendor(cls, value: Condition | None) -> Condition | None:
        return None if value is None else _normalized_vendor(value)

    @field_validator("field_strength")
    @classmethod
    def _field(cls, value: Condition | None) -> Condition | None:
        return None if value is None else _nominal_field(value)

    @field_validator("tags")
    @classmethod
    def _keywords(cls, value: dict[str, Condition]) -> dict[str, Condition]:
        for keyword in value:
            if keyword not in keyword_dict or dictionary_VR(keyword_dict[keyword]) == "SQ":
                raise ValueError(f"{keyword!r} is not a DICOM keyword with a value")
        return value

    @property
    def is_catch_all(self) -> bool:
        return self.manufacturer is None and self.field_strength is None and not self.tags

    def mismatch(self, ds: Dataset) -> str | None:
        """Why ``ds`` does not match, or None when it does."""
        checks: list[tuple[str, str | None, Condition | None]] = [
            ("manufacturer",
             normalize_manufacturer(str(ds.get("Manufacturer", "") or "")), self.manufacturer),
            ("field", _text(nominal_field_strength(ds.get("MagneticFieldStrength"))),
             self.field_strength),
        ]
        checks += [(k, _header_text(ds, k), c) for k, c in self.tags.items()]
        for name, actual, condition in checks:
            if condition is not None and not _satisfies(actual, condition):
                return f"{name} {actual!r} not {_describe(condition)}"
        return None


def _text(value: object) -> str | None:
    return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _header_text(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    value = ds[keyword].value
    # Multi-valued elements compare as DICOM writes them, values joined by a backslash.
    return "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


class Rule(_Strict):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    action: Literal["harmonize", "passthrough", "quarantine", "discard"]
    method: str | None = None
    model: str | None = None
    evaluate: bool = False
    destinations: list[str] | None = None

    @model_validator(mode="after")
    def _action_fields(self) -> Rule:
        if self.action == "harmonize" and not (self.method and self.model):
            raise ValueError("action 'harmonize' needs both 'method' and 'model'")
        if self.action != "harmonize" and (self.method or self.model or self.evaluate):
            raise ValueError(f"action {self.action!r} takes no 'method', 'model' or 'evaluate'")
        if self.action in ("quarantine", "discard") and self.destinations:
            raise ValueError(f"action {self.action!r} sends nothing: remove 'destinations'")
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


class RuleSet:
    """The validated rules of one file, ready to route datasets."""

    def __init__(self, rules: Sequence[Rule], source: str) -> None:
        self.rules = list(rules)
        self.source = source

    @classmethod
    def load(cls, path: Path, destinations: set[str] | None = None) -> RuleSet:
        """Validate ``path``; a ConfigError names the file, the line and the field."""
        document = load_yaml(path)
        try:
            parsed = RuleFile.model_validate(document.data)
        except ValidationError as exc:
            raise ConfigError(document.describe(exc)) from exc
        if destinations is not None:
            for index, rule in enumerate(parsed.rules):
                unknown = sorted(set(rule.destinations or []) - destinations)
                if unknown:
                    line = document.line_of(("rules", index, "destinations"))
                    raise ConfigError(
                        f"{path}:{line}: rules.{index}.destinations: unknown destinations "
                        f"{unknown} (node.yaml defines {sorted(destinations)})"
                    )
        return cls(parsed.rules, str(path))

    def rule(self, name: str | None) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def route(self, ds: Dataset) -> Decision:
        skipped: list[str] = []
        for rule in self.rules:
            why_not = rule.match.mismatch(ds)
            if why_not is None:
                return Decision(rule, tuple(skipped))
            skipped.append(f"{rule.name}: {why_not}")
        raise AssertionError("RuleFile guarantees a catch-all last rule")
