"""The reference domain as the sidecar sees it: intensities and a scanner classifier.

    python -m evaluation.domain_reference --out evaluation/reference/siemens-3t.json

Held-out virtual patients (seeds from 5000, disjoint from training 1000-1007/2000-2007, the
model cards' 3000-3002 and the quality tables' 4000-4011) are rendered on all six scanner
profiles at a modest grid. Masks come from the images (:mod:`evaluation.masks`), not from the
simulator's truth, so the reference is built the way the sidecar measures a series. From them:

- the reference domain's breast pre-contrast intensity quantiles: the mean of the patients'
  quantile functions, which is the 1-Wasserstein barycentre of their distributions (Agueh &
  Carlier, SIAM J Math Anal 2011), the form :func:`evaluation.metrics.intensity_distance`
  compares against;
- a multinomial L2 logistic regression (scikit-learn) on standardized radiomic features
  (:func:`evaluation.features.series_features`) that tells the six scanner domains apart;
  its probability of the source domain is the sidecar's identifiability score (the same model
  family as :func:`evaluation.metrics.identifiability`).

The file is JSON, small, and records how it was made (command, seeds, date, feature set).

Texture features depend on the voxel grid, and the classifier knows one grid per profile
(``--matrix``, ``--slices``). A GE 1.5 T series at the profile's own 320 x 320 x 96 grid was
given p(ge-1.5t) = 0.01 by the shipped file, and smoothing it down to the fitted grid did not
help (it made every profile look like GE 1.5 T). The score is therefore a trend within one
site's grid, not a calibrated probability, and the sidecar leaves it out of the verdict
unless configured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import MetricError, quantiles

FORMAT = 1
REFERENCE_DOMAIN = "siemens-3t"
DOMAINS = ("ge-1.5t", "ge-3t", "philips-1.5t", "philips-3t", "siemens-1.5t", "siemens-3t")
FIRST_SEED = 5000
_REGULARIZATION_C = 1.0  # as evaluation.metrics.identifiability
_CV_FOLDS = 5


class DomainReferenceError(ValueError):
    """A reference file is missing, malformed, or made with another feature set."""


def default_reference_path() -> Path:
    """The shipped reference of the Siemens 3 T domain."""
    return Path(__file__).resolve().parent / "reference" / f"{REFERENCE_DOMAIN}.json"


@dataclass(frozen=True)
class DomainReference:
    """The reference domain's intensity quantiles and a scanner-domain classifier.

    ``coef`` is (classes, features) and ``intercept`` (classes,), on features standardized
    with ``feature_mean`` and ``feature_std``.
    """

    domain: str
    quantiles: np.ndarray
    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    classes: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    def predict_domain_proba(self, features: Mapping[str, float]) -> dict[str, float]:
        """Probability of each scanner domain for one series' features (softmax of logits)."""
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise MetricError(
                f"{len(missing)} features the reference needs are missing, e.g. {missing[0]!r}"
            )
        x = np.asarray([features[name] for name in self.feature_names], dtype=np.float64)
        if not np.all(np.isfinite(x)):
            bad = self.feature_names[int(np.flatnonzero(~np.isfinite(x))[0])]
            raise MetricError(f"feature {bad!r} is not finite")
        logits = self.coef @ ((x - self.feature_mean) / self.feature_std) + self.intercept
        weights = np.exp(logits - logits.max())
        probabilities = weights / weights.sum()
        return {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "domain": self.domain,
            "quantiles": self.quantiles.tolist(),
            "features": {
                "names": list(self.feature_names),
                "mean": self.feature_mean.tolist(),
                "std": self.feature_std.tolist(),
            },
            "classifier": {
                "classes": list(self.classes),
                "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(),
            },
            "provenance": self.provenance,
        }


def _get(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise DomainReferenceError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DomainReferenceError(
            f"{where}: {key!r} must be {kind.__name__}, not {type(value).__name__}"
        )
    return value


def _numbers(values: list[Any], where: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DomainReferenceError(f"{where} must hold numbers only") from None
    if array.shape != shape:
        raise DomainReferenceError(f"{where} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise DomainReferenceError(f"{where} holds non-finite numbers")
    return array


def _strings(values: list[Any], where: str) -> tuple[str, ...]:
    if not values or not all(isinstance(v, str) for v in values):
        raise DomainReferenceError(f"{where} must be a non-empty list of strings")
    if len(set(values)) != len(values):
        raise DomainReferenceError(f"{where} holds duplicates")
    return tuple(values)


def from_json(data: Any, where: str = "reference") -> DomainReference:
    """Validate the parsed JSON of a reference file and build the DomainReference."""
    if _get(data, "format", int, where) != FORMAT:
        raise DomainReferenceError(f"{where}: format {data['format']} is not {FORMAT}")
    domain = _get(data, "domain", str, where)
    features = _get(data, "features", dict, where)
    classifier = _get(data, "classifier", dict, where)
    names = _strings(_get(features, "names", list, f"{where} features"), f"{where} names")
    classes = _strings(_get(classifier, "classes", list, f"{where} classifier"),
                       f"{where} classes")
    if domain not in classes:
        raise DomainReferenceError(f"{where}: domain {domain!r} is not a classifier class")
    raw_quantiles = _get(data, "quantiles", list, where)
    q = _numbers(raw_quantiles, f"{where} quantiles", (len(raw_quantiles),))
    if q.size < 4 or np.any(np.diff(q) < 0):
        raise DomainReferenceError(f"{where}: quantiles must be >= 4 non-decreasing numbers")
    n, k = len(names), len(classes)
    std = _numbers(_get(features, "std", list, f"{where} features"), f"{where} std", (n,))
    if np.any(std <= 0):
        raise DomainReferenceError(f"{where}: feature std must be positive")
    return DomainReference(
        domain=domain,
        quantiles=q,
        feature_names=names,
        feature_mean=_numbers(_get(features, "mean", list, f"{where} features"),
                              f"{where} mean", (n,)),
        feature_std=std,
        classes=classes,
        coef=_numbers(_get(classifier, "coef", list, f"{where} classifier"),
                      f"{where} coef", (k, n)),
        intercept=_numbers(_get(classifier, "intercept", list, f"{where} classifier"),
                           f"{where} intercept", (k,)),
        provenance=_get(data, "provenance", dict, where),
    )


def load(path: Path | None = None) -> DomainReference:
    """Read and validate a reference file (default :func:`default_reference_path`).

    Raises DomainReferenceError for a missing or malformed file, and for one made with
    another feature set than :data:`evaluation.features.FEATURE_SET_VERSION`: its classifier
    would score features it was not fitted on.
    """
    from evaluation.features import FEATURE_SET_VERSION

    path = Path(path) if path is not None else default_reference_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DomainReferenceError(f"cannot read the domain reference {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise DomainReferenceError(f"{path} is not JSON: {error}") from None
    reference = from_json(data, str(path))
    made_with = reference.provenance.get("feature_set_version")
    if made_with != FEATURE_SET_VERSION:
        raise DomainReferenceError(
            f"{path} was made with feature set {made_with!r}, this code computes "
            f"{FEATURE_SET_VERSION!r}; rebuild it with python -m evaluation.domain_reference"
        )
    return reference


def _measure(seed: int, domain: str, matrix: int, slices: int
             ) -> tuple[dict[str, float], np.ndarray]:
    """One held-out series' features and its breast pre-contrast quantiles."""
    from evaluation.features import series_features
    from evaluation.masks import breast_mask, fgt_mask
    from evaluation.virtual_scanner.profiles import load_profile
    from evaluation.virtual_scanner.render import render_seed

    acquisition = render_seed(seed, load_profile(domain), matrix, slices).acquisition()
    pre = acquisition.pre_contrast
    breast = breast_mask(pre, acquisition.spacing_mm)
    fgt = fgt_mask(pre, breast)
    features = series_features(acquisition.pixels, acquisition.spacing_mm, breast, fgt)
    return features, quantiles(pre[breast])


def fit(features: Sequence[Mapping[str, float]], domains: Sequence[str],
        reference_quantiles: Sequence[np.ndarray], provenance: dict[str, Any],
        reference_domain: str = REFERENCE_DOMAIN) -> DomainReference:
    """Fit the scanner classifier on series' ``features`` labelled with their ``domains``.

    ``reference_quantiles`` are the reference domain's series' quantile functions; their mean
    is stored. Features missing from a series, constant, or not finite are left out. The
    provenance gains the cross-validated accuracy (stratified k-fold, k <= 5).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not features or len(features) != len(domains) or not reference_quantiles:
        raise MetricError("fitting needs features and a domain per series, and reference "
                          "quantiles")
    names = sorted(set.intersection(*(set(f) for f in features)))
    x = np.asarray([[f[n] for n in names] for f in features], dtype=np.float64)
    y = np.asarray(domains)
    # A constant or non-finite feature carries no domain information and breaks scaling.
    keep = np.all(np.isfinite(x), axis=0) & (x.std(axis=0) > 0)
    names = [n for n, k in zip(names, keep, strict=True) if k]
    x = x[:, keep]
    counts = np.unique(y, return_counts=True)[1]
    folds = min(_CV_FOLDS, int(counts.min()))
    if folds < 2 or len(counts) < 2:
        raise MetricError("fitting the classifier needs two domains, each with >= 2 series")
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=_REGULARIZATION_C, max_iter=5000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    accuracy = cross_val_score(model, x, y, cv=cv, scoring="accuracy")
    model.fit(x, y)
    scaler, classifier = model[0], model[1]
    classes = tuple(str(c) for c in classifier.classes_)
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)
    if len(classes) == 2:
        # scikit-learn keeps one logit row for two classes; the softmax needs both.
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return DomainReference(
        domain=reference_domain,
        quantiles=np.mean(np.asarray(reference_quantiles, dtype=np.float64), axis=0),
        feature_names=tuple(names),
        feature_mean=np.asarray(scaler.mean_, dtype=np.float64),
        feature_std=np.asarray(scaler.scale_, dtype=np.float64),
        classes=classes,
        coef=coef,
        intercept=intercept,
        provenance={**provenance, "cv_accuracy": float(accuracy.mean()),
                    "cv_accuracy_folds": [float(a) for a in accuracy], "cv_folds": folds,
                    "series": len(features), "features": len(names)},
    )


def build(patients: int, matrix: int, slices: int, command: str) -> DomainReference:
    """Render, mask and measure ``patients`` held-out patients on every domain, then fit."""
    from evaluation.features import FEATURE_SET_VERSION

    seeds = list(range(FIRST_SEED, FIRST_SEED + patients))
    features, domains, reference_quantiles = [], [], []
    for seed in seeds:
        for domain in DOMAINS:
            values, q = _measure(seed, domain, matrix, slices)
            features.append(values)
            domains.append(domain)
            if domain == REFERENCE_DOMAIN:
                reference_quantiles.append(q)
    provenance = {
        "command": command,
        "seeds": [seeds[0], seeds[-1]],
        "domains": list(DOMAINS),
        "matrix": matrix,
        "slices": slices,
        "masks": "evaluation.masks (image-derived)",
        "feature_set_version": FEATURE_SET_VERSION,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return fit(features, domains, reference_quantiles, provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.domain_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_reference_path())
    parser.add_argument("--patients", type=int, default=40,
                        help="held-out patients per domain (seeds 5000 on)")
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--slices", type=int, default=32)
    args = parser.parse_args(argv)
    if args.patients < 2:
        parser.error("--patients must be at least 2")
    command = shlex.join(["python", "-m", "evaluation.domain_reference",
                          *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    reference = build(args.patients, args.matrix, args.slices, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference.to_json(), indent=1) + "\n", encoding="utf-8")
    seconds = time.monotonic() - started
    p = reference.provenance
    print(f"{args.out}: {p['series']} series, {p['features']} features, cross-validated "
          f"accuracy {p['cv_accuracy']:.3f} ({p['cv_folds']}-fold; chance "
          f"{1 / len(DOMAINS):.3f}), {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
