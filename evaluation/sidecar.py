"""The sidecar assessment: what can be known about one harmonized series without paired truth.

After each harmonized acquisition the node runs :func:`assess` beside delivery (never before
it) and reports the result as a DICOM SR (:mod:`evaluation.quality_report`). No reference
rendering of the same patient exists at the site, so every measure compares the harmonized
series with its own original, or with the reference domain's population
(:class:`~evaluation.domain_reference.DomainReference`):

- intensity distribution: :func:`evaluation.metrics.intensity_distance` of the breast
  pre-contrast intensities to the reference domain's quantiles, before and after;
- structure: :func:`~evaluation.metrics.gradient_similarity` of the pre-contrast and of the
  first post-contrast phase, and :func:`~evaluation.metrics.fgt_density` before and after;
- kinetics: percent enhancement (PE) curves of the FGT and of the most enhancing voxels
  (a lesion proxy), before and after, and the BI-RADS curve type of each;
- identifiability: the probability that the reference's scanner classifier assigns the series
  to its source scanner, before and after.

Masks come from the *original* pre-contrast and serve both series: harmonization keeps the
geometry, so the same voxels are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np

from evaluation.domain_reference import DomainReference
from evaluation.metrics import (
    MetricError,
    curve_type,
    fgt_density,
    gradient_similarity,
    intensity_distance,
    percent_enhancement,
    roi_curve,
)
from harmonizers.acquisition import Acquisition

Verdict = Literal["pass", "warn", "fail"]
_SEVERITY: dict[Verdict, int] = {"pass": 0, "warn": 1, "fail": 2}

# UCUM codes (unitsofmeasure.org): "1" for ratios and probabilities; "%" for percent and, as
# UCUM has no percentage point, for differences of percentages too.
RATIO = "1"
PERCENT = "%"

# The lesion proxy: this share of breast voxels with the largest early enhancement.
_LESION_PROXY_FRACTION = 0.01
# Kinetic curve types need pre-contrast, early and late post-contrast phases.
_CURVE_TYPE_PHASES = 3


@dataclass(frozen=True)
class Thresholds:
    """Pass and warn limits of each measure that enters the verdict.

    A measure beyond its warn limit fails the series, one beyond its pass limit warns. Upper
    limits (``*_pass`` <= ``*_warn``): intensity distance after harmonization (in reference
    IQRs), |FGT density change| and the largest |PE change| (percentage points). Lower limits
    (``*_pass`` >= ``*_warn``): gradient similarity (a correlation). A change of curve type
    (persistent / plateau / washout) of the FGT or the lesion proxy gives
    ``curve_type_mismatch``.

    The source-domain probability is reported but enters the verdict only when both its
    limits are set: a single series' probability from a classifier fitted on simulated
    patients is a trend to watch, not a calibrated test.

    Defaults, from ``python -m evaluation.sidecar_calibration`` (held-out seeds 6000-6003 on
    every profile, every shipped model, grid 96 x 96 x 24; min / median / max):

    - intensity distance: the reference scanner's own exams score 0.11 / 0.17 / 0.21 against
      the reference (their random receive gain alone); the shipped models bring series to
      0.07-0.31; series left as acquired score up to 3.6 (median 1.04). Pass 0.5, warn 1.0.
    - gradient similarity: physics, a smooth map, scores 0.99-1.0; the histogram model goes
      down to 0.82 where it moves FGT density by up to 9 pp, a known weakness
      (docs/harmonizers.md), and the deep models, whose sharpening filter changes gradients
      by design, to 0.849 (cyclegan) and 0.892 (stylemapper). Pass 0.9, warn 0.8.
    - FGT density change: physics stays within 2.5 pp; cyclegan, histogram and stylemapper
      move it by up to 6.3, 9.0 and 10.8 pp. Pass 5, warn 10.
    - PE change: harmonizing across field strength *should* change enhancement (the 1.5 T and
      3 T renderings of one patient differ by up to 38 pp of lesion PE, docs/harmonizers.md),
      and the physics model, the most accurate on kinetics, changes it by up to 43 pp. Without
      paired truth that cannot be told from damage, so the limits only catch kinetics that
      are destroyed: pass 25, warn 50. The deep models, whose enhancement is the physics
      re-synthesis sharpened as their images are, change it by up to 48 pp, histogram by
      up to 43.
    - curve type: "any harmonization that changes the curve type is harmful"
      (breast-dce-physics.md, "Kinetics"): a change fails. The physics model changed 2 of its
      40 regions' types, no other model any.
    """

    intensity_distance_pass: float = 0.5
    intensity_distance_warn: float = 1.0
    gradient_similarity_pass: float = 0.9
    gradient_similarity_warn: float = 0.8
    fgt_density_change_pass_pp: float = 5.0
    fgt_density_change_warn_pp: float = 10.0
    pe_change_pass_pp: float = 25.0
    pe_change_warn_pp: float = 50.0
    curve_type_mismatch: Verdict = "fail"
    source_probability_pass: float | None = None
    source_probability_warn: float | None = None

    def __post_init__(self) -> None:
        for name in ("intensity_distance", "fgt_density_change", "pe_change",
                     "source_probability"):
            suffix = "_pp" if name in ("fgt_density_change", "pe_change") else ""
            low = getattr(self, f"{name}_pass{suffix}")
            high = getattr(self, f"{name}_warn{suffix}")
            if (low is None) != (high is None):
                raise ValueError(f"{name}: set both the pass and the warn limit, or neither")
            if low is not None and not 0 <= low <= high:
                raise ValueError(
                    f"{name}: need 0 <= pass limit ({low}) <= warn limit ({high})"
                )
        if not self.gradient_similarity_warn <= self.gradient_similarity_pass <= 1:
            raise ValueError(
                f"gradient_similarity: need warn limit ({self.gradient_similarity_warn}) <= "
                f"pass limit ({self.gradient_similarity_pass}) <= 1"
            )
        if self.curve_type_mismatch not in _SEVERITY:
            raise ValueError(
                f"curve_type_mismatch must be pass, warn or fail, not {self.curve_type_mismatch!r}"
            )


@dataclass(frozen=True)
class Measurement:
    """A value and its UCUM unit code."""

    value: float
    unit: str


@dataclass(frozen=True)
class Reason:
    """Why the verdict is not pass: the measure, what it gives, and the limit it crossed."""

    measure: str
    verdict: Verdict
    text: str


@dataclass(frozen=True)
class Assessment:
    """The sidecar's measurements of one harmonized acquisition and the verdict.

    ``*_before`` describe the original series and ``*_after`` the harmonized one. PE changes
    are the largest absolute difference over the phases of the PE curves, in percentage
    points. Curve types are None for acquisitions with fewer than three phases.
    """

    source_domain: str
    reference_domain: str
    intensity_distance_before: Measurement
    intensity_distance_after: Measurement
    gradient_similarity_pre: Measurement
    gradient_similarity_post: Measurement
    fgt_density_before: Measurement
    fgt_density_after: Measurement
    fgt_density_change: Measurement
    fgt_pe_change: Measurement
    lesion_pe_change: Measurement
    source_probability_before: Measurement
    source_probability_after: Measurement
    reference_probability_after: Measurement
    fgt_curve_type_before: str | None
    fgt_curve_type_after: str | None
    lesion_curve_type_before: str | None
    lesion_curve_type_after: str | None
    verdict: Verdict
    reasons: tuple[Reason, ...]

    def measurements(self) -> dict[str, Measurement]:
        """Every numeric measurement by field name, in field order."""
        return {f.name: value for f in fields(self)
                if isinstance(value := getattr(self, f.name), Measurement)}

    def curve_types(self) -> dict[str, tuple[str | None, str | None]]:
        """(before, after) curve type of each region, ``fgt`` and ``lesion``."""
        return {
            "fgt": (self.fgt_curve_type_before, self.fgt_curve_type_after),
            "lesion": (self.lesion_curve_type_before, self.lesion_curve_type_after),
        }


def most_enhancing(pixels: np.ndarray, breast: np.ndarray,
                   fraction: float = _LESION_PROXY_FRACTION) -> np.ndarray:
    """The ``fraction`` of breast voxels with the largest early enhancement S(1) - S(0).

    A lesion proxy without segmentation: malignant lesions enhance earliest and most
    (breast-dce-physics.md, "Kinetics": Ktrans 0.04-0.39 against the gland's 0.010-0.035 per
    minute, 3 s delay against 15 s). Voxels are ranked by the early subtraction, as read on
    a subtraction MIP, not by voxel-wise PE, which divides by the fat-suppressed pre-contrast
    signal: near zero in fat, so PE there is noise.
    """
    if pixels.shape[0] < 2:
        raise MetricError("a lesion proxy needs a post-contrast phase")
    enhancement = (pixels[1] - pixels[0])[breast]
    if enhancement.size == 0:
        raise MetricError("the breast region is empty")
    count = max(1, int(np.ceil(fraction * enhancement.size)))
    top = np.argpartition(enhancement, enhancement.size - count)[enhancement.size - count:]
    chosen = np.zeros(enhancement.size, dtype=bool)
    chosen[top] = True
    region = np.zeros(breast.shape, dtype=bool)
    region[breast] = chosen
    return region


def _pe_change(original: np.ndarray, harmonized: np.ndarray,
               region: np.ndarray) -> tuple[float, str | None, str | None]:
    """Largest |PE difference| (pp) of the region's mean curves, and both curve types."""
    before = roi_curve(original, region)
    after = roi_curve(harmonized, region)
    change = float(np.max(np.abs(percent_enhancement(after) - percent_enhancement(before))))
    if before.size < _CURVE_TYPE_PHASES:
        return change, None, None
    return change, curve_type(before), curve_type(after)


def _upper(name: str, value: float, limits: tuple[float | None, float | None],
           unit: str) -> Reason | None:
    passing, warning = limits
    if passing is None or warning is None:
        return None
    if value > warning:
        return Reason(name, "fail", f"{name} {value:.3g}{unit} above the warn limit {warning:g}")
    if value > passing:
        return Reason(name, "warn", f"{name} {value:.3g}{unit} above the pass limit {passing:g}")
    return None


def _lower(name: str, value: float, passing: float, warning: float) -> Reason | None:
    if value < warning:
        return Reason(name, "fail", f"{name} {value:.3g} below the warn limit {warning:g}")
    if value < passing:
        return Reason(name, "warn", f"{name} {value:.3g} below the pass limit {passing:g}")
    return None


def judge(assessment: Assessment, thresholds: Thresholds) -> tuple[Verdict, tuple[Reason, ...]]:
    """The verdict of ``assessment``'s measurements under ``thresholds``, and its reasons.

    Fail if any measure is beyond its warn limit, warn if any is beyond its pass limit, else
    pass. Reasons list every measure beyond a limit, worst first.
    """
    t = thresholds
    a = assessment
    found = [
        _upper("intensity_distance_after", a.intensity_distance_after.value,
               (t.intensity_distance_pass, t.intensity_distance_warn), ""),
        _lower("gradient_similarity_pre", a.gradient_similarity_pre.value,
               t.gradient_similarity_pass, t.gradient_similarity_warn),
        _lower("gradient_similarity_post", a.gradient_similarity_post.value,
               t.gradient_similarity_pass, t.gradient_similarity_warn),
        _upper("fgt_density_change", abs(a.fgt_density_change.value),
               (t.fgt_density_change_pass_pp, t.fgt_density_change_warn_pp), " pp"),
        _upper("fgt_pe_change", a.fgt_pe_change.value,
               (t.pe_change_pass_pp, t.pe_change_warn_pp), " pp"),
        _upper("lesion_pe_change", a.lesion_pe_change.value,
               (t.pe_change_pass_pp, t.pe_change_warn_pp), " pp"),
        _upper("source_probability_after", a.source_probability_after.value,
               (t.source_probability_pass, t.source_probability_warn), ""),
    ]
    for region, (before, after) in a.curve_types().items():
        if before is not None and before != after and t.curve_type_mismatch != "pass":
            found.append(Reason(f"{region}_curve_type", t.curve_type_mismatch,
                                f"{region} curve type changed from {before} to {after}"))
    reasons = sorted((r for r in found if r is not None),
                     key=lambda r: -_SEVERITY[r.verdict])
    verdict: Verdict = reasons[0].verdict if reasons else "pass"
    return verdict, tuple(reasons)


def _source_name(acquisition: Acquisition, reference: DomainReference) -> str:
    if acquisition.domain is None:
        raise MetricError("the series' scanner domain is unknown: no identifiability score")
    name = acquisition.domain.name
    if name not in reference.classes:
        raise MetricError(
            f"the reference classifier knows {', '.join(reference.classes)}, not {name}"
        )
    return name


def assess(original: Acquisition, harmonized: Acquisition, reference: DomainReference,
           thresholds: Thresholds | None = None) -> Assessment:
    """Measure ``harmonized`` against its ``original`` and the ``reference`` domain.

    Raises :class:`~evaluation.masks.NoBreastMaskError` when the original shows no breast and
    :class:`~evaluation.metrics.MetricError` when a measure cannot be taken (one phase only,
    an empty region, an unknown scanner); the images are not touched either way.
    """
    # Imported here: the node's config validation imports this module for Thresholds alone,
    # and should not load pyradiomics to do so.
    from evaluation.features import series_features
    from evaluation.masks import breast_mask, fgt_mask

    if original.pixels.shape != harmonized.pixels.shape:
        raise MetricError(
            f"original {original.pixels.shape} and harmonized {harmonized.pixels.shape} differ"
        )
    if original.n_phases < 2:
        raise MetricError("kinetics need a pre-contrast and at least one post-contrast phase")
    source = _source_name(original, reference)
    before, after = original.pixels, harmonized.pixels
    breast = breast_mask(before[0], original.spacing_mm)
    fgt = fgt_mask(before[0], breast)
    density_before = fgt_density(before[0], breast)
    density_after = fgt_density(after[0], breast)
    fgt_change, fgt_type_before, fgt_type_after = _pe_change(before, after, fgt)
    lesion = most_enhancing(before, breast)
    lesion_change, lesion_type_before, lesion_type_after = _pe_change(before, after, lesion)
    proba_before = reference.predict_domain_proba(
        series_features(before, original.spacing_mm, breast, fgt))
    proba_after = reference.predict_domain_proba(
        series_features(after, original.spacing_mm, breast, fgt))
    provisional = Assessment(
        source_domain=source,
        reference_domain=reference.domain,
        intensity_distance_before=Measurement(
            intensity_distance(before[0][breast], reference.quantiles), RATIO),
        intensity_distance_after=Measurement(
            intensity_distance(after[0][breast], reference.quantiles), RATIO),
        gradient_similarity_pre=Measurement(
            gradient_similarity(before[0], after[0], breast), RATIO),
        gradient_similarity_post=Measurement(
            gradient_similarity(before[1], after[1], breast), RATIO),
        fgt_density_before=Measurement(density_before, PERCENT),
        fgt_density_after=Measurement(density_after, PERCENT),
        fgt_density_change=Measurement(density_after - density_before, PERCENT),
        fgt_pe_change=Measurement(fgt_change, PERCENT),
        lesion_pe_change=Measurement(lesion_change, PERCENT),
        source_probability_before=Measurement(proba_before[source], RATIO),
        source_probability_after=Measurement(proba_after[source], RATIO),
        reference_probability_after=Measurement(proba_after[reference.domain], RATIO),
        fgt_curve_type_before=fgt_type_before,
        fgt_curve_type_after=fgt_type_after,
        lesion_curve_type_before=lesion_type_before,
        lesion_curve_type_after=lesion_type_after,
        verdict="pass",
        reasons=(),
    )
    verdict, reasons = judge(provisional, thresholds or Thresholds())
    return replace(provisional, verdict=verdict, reasons=reasons)
