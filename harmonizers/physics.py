"""Header-driven physics re-synthesis of a DCE series at the target scanner's protocol.

No training beyond the target's protocol and two intensity landmarks. Each series is mapped
with the spoiled-gradient-echo (SPGR) signal equation and literature relaxation priors, in
the spirit of van der Velden et al., "Harmonization of quantitative parenchymal enhancement in
T1-weighted breast MRI", J Magn Reson Imaging 2020;52:1374-1382 (PMID 32491246), who
converted enhancement between flip angles and repetition times with the SPGR model.

Physics (shared/reference/breast-dce-physics.md, "Signal model")::

    S = PD sin(a) (1 - E1) / (1 - cos(a) E1),  E1 = exp(-TR R1),  R1(t) = 1/T1_0 + r1 C(t)

Model of a voxel (fat-suppressed breast DCE, as every protocol in the reference's "Typical
vendor protocols" table is):

1. Two parts. A three-class Otsu split of the body foreground of the pre-contrast gives a
   middle level ``M`` (suppressed fat, chest wall) and a bright level ``G`` (FGT water, muscle,
   blood); see :func:`tissue_levels`. A voxel of pre-contrast ``S0`` is read as FGT water of
   fraction ``w = clip((S0 - M) / (G - M), 0, 1)`` plus a static part, times a local gain
   ``b`` (coil sensitivity x proton density) that makes the sum equal ``S0``.
2. The static part takes up no agent (fat), and its level depends on the fat-suppression
   pulse, which headers do not describe, so it is carried over by the landmark ratio. The
   pre-contrast therefore maps piecewise-linearly through (0, 0), (M_s, M_t) and (G_s, G_t),
   continued with slope G_t / G_s.
3. The water part follows the SPGR equation with the FGT T1 prior at the source field
   (Rakow-Penner JMRI 2006; Edden JMRI 2010). Its PD x gain is solved from the pre-contrast
   water signal ``W0``; each post phase's water signal ``W0 + (S(t) - S0)`` is inverted to
   R1(t) at the source TR and flip angle, giving C(t) = (R1(t) - R1_0) / r1_source
   (Szomolanyi, Invest Radiol 2019). It is re-synthesized with the target's TR, flip angle,
   T1 prior and r1, in target units (pure FGT lands on the target's ``G``).

Because the T1 prior is one value per field, the PD cancels in ratios and step 3 reduces to
one monotone curve ``Phi`` per (source protocol, target protocol) applied to the water signal
ratio ``q = 1 + (S(t) - S0) / W0``: ``q_t = Phi(q)``, ``out(t) = out_0 + W0_t (q_t - 1)``.
``Phi`` is tabulated once per series and interpolated, which keeps a 6 x 48 x 256^2 series well
under a second. Since ``Phi`` is increasing, every voxel's curve keeps its direction phase by
phase; unlike a linear rescaling it changes the *size* of enhancement the way T1_0, TR, flip
angle and r1 change it between scanners, which is this method's point.

Robustness: ``W0`` is at least ``WATER_FLOOR`` x ``G`` (noise and all-static voxels (w = 0)
must not divide by ~0); the inversion's argument is clipped to R1 between ``R1_MIN_FRACTION``
x R1_0 and R1_0 + r1 ``C_MAX_MM`` (no NaN, no infinite R1 from noise above the SPGR ceiling);
the output is clipped at 0.

A voxel's level alone cannot tell a darker tissue from a mix of tissue and fat: a lesion
whose pre-contrast lies near the suppressed-fat level ``M`` is read as a small water part,
which would then have to enhance beyond what any tissue concentration gives; held at the
inversion's ceiling phase after phase, its washout flattened (a Siemens 1.5 T lesion in
docs/harmonizers.md went from -14.6 % to -7.9 %, plateau). Fat does not enhance, so ``w`` is
raised, where needed, to the least value whose water part gives the voxel's highest rise
over its pre-contrast within ``C_PLAUSIBLE_MM`` (:meth:`Resynthesis.water_fraction`).

Not corrected: B1+ (the header flip angle is nominal; the reference's 10-20 % left-right
errors bias R1), noise, resolution and texture, a T1_0 that differs from the prior (lesions,
muscle and blood get the FGT value), the agent's T2* effect. TE is not used: T2* decay is the
same factor in every phase of a voxel and cancels in ``q``; the pre-contrast level difference
it makes is inside the landmarks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer, ModelError, common_domain
from harmonizers.domain import ScannerDomain
from harmonizers.foreground import breast_foreground
from harmonizers.json_weights import load_json_weights, save_json_weights

# FGT T1 in ms per nominal field (reference "Relaxation": 1266 +/- 82 at 1.5 T, Rakow-Penner
# JMRI 2006; 1445 +/- 93 at 3 T, Edden JMRI 2010). The water compartment of every voxel gets
# this prior; lesions (~1350 / 1500-1612 ms) and muscle are within about 15 % of it.
T1_FGT_MS: dict[float, float] = {1.5: 1266.0, 3.0: 1445.0}

# r1 in plasma, L/mmol/s at 37 C, per nominal field (Szomolanyi, Invest Radiol 2019; reference
# "Contrast agent").
R1_RELAXIVITY: dict[str, dict[float, float]] = {
    "gadobutrol": {1.5: 4.78, 3.0: 4.97},
    "gadoterate": {1.5: 3.32, 3.0: 3.00},
}

# ContrastBolusAgent (0018,0010) spellings -> generic name (brand names of the two agents).
AGENT_ALIASES: dict[str, str] = {
    "gadobutrol": "gadobutrol", "gadovist": "gadobutrol", "gadavist": "gadobutrol",
    "gadoterate": "gadoterate", "dotarem": "gadoterate", "clariscan": "gadoterate",
}

# Upper bound of the concentration the inversion may return: over twice the first-pass peak
# of whole blood at 0.1 mmol/kg (about 6 mM in Parker's population AIF, MRM 2006). Signal
# above the SPGR ceiling (noise, inflow) is held there instead of giving an infinite R1.
C_MAX_MM = 15.0
# The most a tissue voxel plausibly holds: the first-pass peak of whole blood at 0.1 mmol/kg
# (Parker's population AIF). Tissue holds plasma only in its vascular and interstitial
# spaces (vp + ve, at most about 0.56 in the reference's malignant ranges), so this is
# generous; a voxel whose water part would need more is more water than its level says.
C_PLAUSIBLE_MM = 6.0
# Lower bound of R1 as a fraction of R1_0: noise can make a post phase darker than the
# pre-contrast; a T1 ten times the prior keeps that finite and still lets the noise through.
R1_MIN_FRACTION = 0.1
# With the pure-FGT SNR of 25-40 that the simulator's profiles assume (the reference gives
# none) this is about 3 sigma of the noise: air and fat voxels are not divided by noise, and
# an enhancing voxel read as static (w = 0) still enhances (its enhancement is mapped
# near-linearly with the water sensitivity).
WATER_FLOOR = 0.1
# Knots of the tabulated water-ratio map; Phi is smooth, so linear interpolation between 4096
# knots is exact to float32 precision for practical purposes.
_TABLE_SIZE = 4096
# Histogram bins of the three-class Otsu split, and the most foreground voxels it looks at
# (an even subsample estimates the histogram as well as every voxel does).
_OTSU_BINS = 128
_MAX_SAMPLE = 1 << 20
# Nominal fields must be within this fraction of a tabulated one to use its priors.
_FIELD_TOLERANCE = 0.1
# Target series must agree on TR and flip angle within this fraction to fit one protocol.
_PROTOCOL_TOLERANCE = 0.1

_FORMAT_VERSION = 1


def agent_name(text: str) -> str:
    """Generic agent name for a ContrastBolusAgent value; ModelError if not tabulated."""
    key = text.strip().lower()
    if key not in AGENT_ALIASES:
        raise ModelError(
            f"contrast agent {text!r} has no r1 in the priors; known: "
            f"{', '.join(sorted(AGENT_ALIASES))}"
        )
    return AGENT_ALIASES[key]


def _tabulated_field(field_t: float) -> float:
    nearest = min(T1_FGT_MS, key=lambda f: abs(f - field_t))
    if abs(nearest - field_t) > _FIELD_TOLERANCE * nearest:
        raise ModelError(
            f"no T1/r1 priors at {field_t:g} T (tabulated: "
            f"{', '.join(f'{f:g} T' for f in T1_FGT_MS)})"
        )
    return nearest


@dataclass(frozen=True)
class Protocol:
    """What the physics needs of one scanner setup: sequence, field and agent.

    Raises ModelError when a value is missing, impossible, or has no prior.
    """

    repetition_time_ms: float
    flip_angle_deg: float
    field_t: float
    agent: str

    def __post_init__(self) -> None:
        values = (self.repetition_time_ms, self.flip_angle_deg, self.field_t)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ModelError(f"protocol values must be finite numbers, got {self}")
        if self.repetition_time_ms <= 0 or not 0 < self.flip_angle_deg <= 90:
            raise ModelError(
                f"need TR > 0 ms and 0 < flip angle <= 90 deg, got TR "
                f"{self.repetition_time_ms:g} ms, flip angle {self.flip_angle_deg:g} deg"
            )
        _tabulated_field(self.field_t)
        object.__setattr__(self, "agent", agent_name(self.agent))

    @property
    def r1_0_per_ms(self) -> float:
        """R1_0 of FGT water at this field, 1/ms."""
        return 1.0 / T1_FGT_MS[_tabulated_field(self.field_t)]

    @property
    def r1_per_mM_ms(self) -> float:
        """Relaxivity of this agent at this field, 1/(mM ms)."""
        return R1_RELAXIVITY[self.agent][_tabulated_field(self.field_t)] / 1000.0

    def signal(self, r1_per_ms: np.ndarray) -> np.ndarray:
        """SPGR signal per unit PD, without T2* (cancels in ratios), float64."""
        alpha = math.radians(self.flip_angle_deg)
        e1 = np.exp(-self.repetition_time_ms * np.asarray(r1_per_ms, dtype=np.float64))
        return np.asarray(math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1))

    def water_ratio(self, concentration_mm: float) -> float:
        """FGT water's signal at ``concentration_mm`` relative to its pre-contrast, ``q``."""
        r1_0 = self.r1_0_per_ms
        return float(self.signal(np.array(r1_0 + self.r1_per_mM_ms * concentration_mm))
                     / self.signal(np.array(r1_0)))

    def r1_from_signal(self, signal: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`signal`: E1 = (1 - y) / (1 - y cos a), y = signal / sin a.

        The caller keeps ``signal`` inside (0, sin a), where the inverse exists.
        """
        alpha = math.radians(self.flip_angle_deg)
        y = np.asarray(signal, dtype=np.float64) / math.sin(alpha)
        e1 = (1 - y) / (1 - y * math.cos(alpha))
        return np.asarray(-np.log(e1) / self.repetition_time_ms)


@dataclass(frozen=True)
class TissueLevels:
    """Pre-contrast levels of the middle and the bright intensity class of the body.

    In a fat-suppressed pre-contrast, ``bright`` is FGT water (with muscle and blood, whose
    T1 and PD are close to FGT's) and ``middle`` suppressed fat, chest wall and partial
    volumes; the dark class (air, lung) is not used.
    """

    middle: float
    bright: float

    def __post_init__(self) -> None:
        finite = math.isfinite(self.middle) and math.isfinite(self.bright)
        if not (finite and 0 < self.middle < self.bright):
            raise ModelError(f"tissue levels must satisfy 0 < middle < bright, got {self}")


def tissue_levels(pre_contrast: np.ndarray) -> TissueLevels:
    """Medians of the middle and the bright class of a three-class Otsu split of the body.

    Why three classes: the body foreground holds lung and air as well as fat, and a two-class
    split lands between air and tissue when fat is weakly suppressed (GE 3 T on the virtual
    scanner), or between fat and chest wall when it is strongly suppressed. On held-out
    virtual patients of all six profiles, the bright-class median stayed within 1.01-1.04 x
    the FGT-and-muscle median (SD <= 0.05), the two-class one 0.84-0.96 (SD up to 0.10).
    Raises ModelError when the foreground has no three intensity classes.
    """
    values = pre_contrast[breast_foreground(pre_contrast)]
    values = values[:: max(1, values.size // _MAX_SAMPLE)].astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 0.0)
    if not high > low:
        raise ModelError("the pre-contrast foreground is flat; no tissue classes")
    first, second = _three_class_otsu(np.clip(values, low, high), float(low), float(high))
    middle, bright = values[(values > first) & (values <= second)], values[values > second]
    if middle.size == 0 or bright.size == 0:
        raise ModelError("the pre-contrast foreground has fewer than three intensity classes")
    return TissueLevels(middle=float(np.median(middle)), bright=float(np.median(bright)))


def _three_class_otsu(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Two thresholds maximizing the between-class variance (Otsu, IEEE SMC 1979).

    Exhaustive over pairs of histogram bin edges: ``_OTSU_BINS``^2 / 2 pairs, vectorized.
    """
    counts, edges = np.histogram(values, bins=_OTSU_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.concatenate([[0.0], np.cumsum(counts / counts.sum())])
    moment = np.concatenate([[0.0], np.cumsum(counts / counts.sum() * centres)])
    # Class k of thresholds (i, j) holds bins [0, i), [i, j), [j, end).
    i, j = np.meshgrid(np.arange(1, _OTSU_BINS), np.arange(1, _OTSU_BINS), indexing="ij")
    w = np.stack([weight[i], weight[j] - weight[i], 1 - weight[j]])
    m = np.stack([moment[i], moment[j] - moment[i], moment[-1] - moment[j]])
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((w > 0).all(axis=0) & (j > i), (m**2 / w).sum(axis=0), -np.inf)
    best_i, best_j = np.unravel_index(int(np.argmax(between)), between.shape)
    return float(edges[best_i + 1]), float(edges[best_j + 1])


def water_ratio_map(source: Protocol, target: Protocol) -> tuple[float, float, np.ndarray]:
    """``Phi`` tabulated on a uniform grid of the source water ratio ``q = W(t) / W0``.

    Returns ``(q_first, q_step, q_target)``. The grid spans the ratios between R1 =
    ``R1_MIN_FRACTION`` R1_0 and R1_0 + r1 ``C_MAX_MM``; outside it ``Phi`` is held constant
    (the clipping of the inverse's argument).
    """
    r1_0 = source.r1_0_per_ms
    s0 = source.signal(np.array(r1_0))
    q_low = float(source.signal(np.array(R1_MIN_FRACTION * r1_0)) / s0)
    q = np.linspace(q_low, source.water_ratio(C_MAX_MM), _TABLE_SIZE)
    concentration = (source.r1_from_signal(q * s0) - r1_0) / source.r1_per_mM_ms
    r1_target = target.r1_0_per_ms + target.r1_per_mM_ms * concentration
    q_target = target.signal(r1_target) / target.signal(np.array(target.r1_0_per_ms))
    return q_low, float(q[1] - q[0]), q_target.astype(np.float32)


def _interp_uniform(values: np.ndarray, first: float, step: float, table: np.ndarray) -> np.ndarray:
    """Linear interpolation on a uniform grid, ends held; float32 and in place on ``values``.

    np.interp would convert to float64 and binary-search every value, about 5x slower on a
    full-size series.
    """
    values -= np.float32(first)
    values *= np.float32(1.0 / step)
    np.clip(values, 0, table.size - 1, out=values)
    index = np.minimum(values.astype(np.int32), table.size - 2)
    values -= index.astype(np.float32)
    slope = np.diff(table)
    return table[index] + values * slope[index]


def _require(value: float | None, what: str, tag: str) -> float:
    if value is None:
        raise ModelError(f"the signal equation needs the {what} ({tag}); this series has none")
    return float(value)


@dataclass(frozen=True)
class Resynthesis:
    """Steps 1-3 of the module doc for one series: its own tissue levels ``own``, the
    target's, and ``Phi`` for its protocol (:func:`water_ratio_map`). Applied to blocks of
    the series' voxels, ``(phase, ...)`` with phase 0 the pre-contrast, so a caller may go
    slice by slice."""

    own: TissueLevels
    target: TissueLevels
    phi: tuple[float, float, np.ndarray]
    # The source water ratio q at C_PLAUSIBLE_MM (see water_fraction).
    q_plausible: float

    def water_fraction(self, block: np.ndarray) -> np.ndarray:
        """Each voxel's water fraction ``w``: from its pre-contrast level (step 1 of the module
        doc), raised where its highest rise needs more water than that within
        ``C_PLAUSIBLE_MM``.

        With ``gain = S0 / (M + w (G - M))`` the water signal ``W0 = gain w G`` grows with
        ``w``; the rise ``R`` needs ``W0 >= R / (q_plausible - 1)``, which holds from
        ``w = n M / (S0 G - n (G - M))`` on (``n`` that bound), and for no ``w`` <= 1 when
        the denominator is not positive (then ``w = 1``).
        """
        middle, bright = np.float32(self.own.middle), np.float32(self.own.bright)
        pre = block[0]
        w = np.clip((pre - middle) / (bright - middle), 0, 1)
        if block.shape[0] < 2:
            return w
        needed = np.maximum(block[1:].max(axis=0) - pre, 0)
        needed /= np.float32(self.q_plausible - 1.0)
        denominator = pre * bright - needed * (bright - middle)
        enough = np.where(denominator > 0,
                          needed * middle / np.maximum(denominator, np.float32(1e-12)),
                          np.float32(1.0))
        return np.maximum(w, np.minimum(enough, np.float32(1.0)))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """The block re-synthesized in target units, float32, non-negative."""
        own, mid_t, top_t = self.own, self.target.middle, self.target.bright
        pre = block[0]
        w = self.water_fraction(block)
        gain = pre / (np.float32(own.middle) + w * np.float32(own.bright - own.middle))
        water_0 = np.maximum(gain * w * np.float32(own.bright),
                             np.float32(WATER_FLOOR * own.bright))
        out = np.empty(block.shape, dtype=np.float32)
        out[0] = np.maximum(gain * (np.float32(mid_t) + w * np.float32(top_t - mid_t)), 0)
        to_target = water_0 * np.float32(top_t / own.bright)
        inverse_water = np.float32(1.0) / water_0
        for phase in range(1, block.shape[0]):
            ratio = block[phase] - pre
            ratio *= inverse_water
            ratio += np.float32(1.0)
            mapped = _interp_uniform(ratio, *self.phi)
            mapped -= np.float32(1.0)
            mapped *= to_target
            mapped += out[0]
            np.maximum(mapped, 0, out=out[phase])
        return out

    def enhancement(self, block: np.ndarray) -> np.ndarray:
        """Each voxel's re-synthesized signal relative to its pre-contrast, ``(phase, ...)``.

        ``1 + (out[p] - out[0]) / max(out[0], WATER_FLOOR x G_t)``: phase 0 is exactly 1,
        and a voxel's percent enhancement is the re-synthesis's wherever its pre-contrast
        is above the floor (tissue and suppressed fat); below it (air) the floor keeps the
        factor finite. Non-negative, as the re-synthesis is.
        """
        out = self(block)
        base = np.maximum(out[0], np.float32(WATER_FLOOR * self.target.bright))
        out -= out[0]
        out /= base
        out += np.float32(1.0)
        return out


class PhysicsHarmonizer(Harmonizer):
    """SPGR re-synthesis from the series' own TR, flip angle and field to a target protocol.

    ``target`` is the target protocol; ``target_levels`` its mean fat and FGT pre-contrast
    levels in its own units; ``source_agent`` the agent assumed for source series whose
    ``extra["ContrastBolusAgent"]`` does not say.
    """

    method: ClassVar[str] = "physics"
    weights_file: ClassVar[str] = "model.json"

    def __init__(
        self,
        *,
        target: Protocol,
        target_levels: TissueLevels,
        source_agent: str,
        source_domain: ScannerDomain | None = None,
        target_domain: ScannerDomain | None = None,
    ) -> None:
        super().__init__(source_domain=source_domain, target_domain=target_domain)
        if target_domain is not None and not math.isclose(target_domain.field_t, target.field_t):
            raise ModelError(
                f"target protocol field {target.field_t:g} T is not the target domain's "
                f"{target_domain.name}"
            )
        self.target = target
        self.target_levels = target_levels
        self.source_agent = agent_name(source_agent)

    @classmethod
    def fit(
        cls,
        source: Sequence[Acquisition],
        target: Sequence[Acquisition],
        *,
        source_agent: str = "gadobutrol",
        target_agent: str = "gadobutrol",
    ) -> Self:
        """Target protocol from the target series' headers, target levels from their images.

        Nothing is learned from the source but its domain (its protocol is read from each
        series at harmonization). Agents come from ``extra["ContrastBolusAgent"]`` where every
        series of a side carries it, else from the arguments (gadobutrol by default, as the
        node does not read the agent yet). Raises ModelError (a ValueError) when a side is
        empty or mixed, a target series lacks TR, flip angle or field, or the target series
        disagree on the protocol.
        """
        return cls.to_target(target, source_agent=_side_agent(source, source_agent),
                             target_agent=target_agent,
                             source_domain=common_domain(source, "source"))

    @classmethod
    def to_target(
        cls,
        target: Sequence[Acquisition],
        *,
        source_agent: str,
        target_agent: str,
        source_domain: ScannerDomain | None,
    ) -> Self:
        """The target side of :meth:`fit` (the source gives only its agent and domain)."""
        target_domain = common_domain(target, "target")
        if target_domain is None:
            raise ModelError("target acquisitions have no scanner domain (field strength)")
        trs = [_require(a.repetition_time_ms, "repetition time", "RepetitionTime") for a in target]
        flips = [_require(a.flip_angle_deg, "flip angle", "FlipAngle") for a in target]
        tr, flip = statistics.median(trs), statistics.median(flips)
        if any(abs(v - tr) > _PROTOCOL_TOLERANCE * tr for v in trs) or any(
            abs(v - flip) > _PROTOCOL_TOLERANCE * flip for v in flips
        ):
            raise ModelError(
                f"target acquisitions mix protocols (TR {sorted(set(trs))} ms, flip angle "
                f"{sorted(set(flips))} deg); fit one protocol per model"
            )
        levels = [tissue_levels(a.pre_contrast) for a in target]
        return cls(
            target=Protocol(
                repetition_time_ms=tr,
                flip_angle_deg=flip,
                field_t=target_domain.field_t,
                agent=_side_agent(target, target_agent),
            ),
            target_levels=TissueLevels(
                middle=float(np.mean([lv.middle for lv in levels])),
                bright=float(np.mean([lv.bright for lv in levels])),
            ),
            source_agent=source_agent,
            source_domain=source_domain,
            target_domain=target_domain,
        )

    def source_protocol(self, acquisition: Acquisition) -> Protocol:
        """The series' protocol from its headers; ModelError names what is missing."""
        if acquisition.domain is None:
            raise ModelError(
                "the signal equation needs the field strength (MagneticFieldStrength); "
                "this series' scanner is unknown"
            )
        agent = acquisition.extra.get("ContrastBolusAgent") or self.source_agent
        return Protocol(
            repetition_time_ms=_require(acquisition.repetition_time_ms, "repetition time",
                                        "RepetitionTime"),
            flip_angle_deg=_require(acquisition.flip_angle_deg, "flip angle", "FlipAngle"),
            field_t=acquisition.domain.field_t,
            agent=agent,
        )

    def resynthesis(self, acquisition: Acquisition) -> Resynthesis:
        """The re-synthesis of this series, whose pixels the caller has checked are finite:
        its protocol from the headers, its tissue levels from its pre-contrast. ModelError
        names what is missing or unusable."""
        source = self.source_protocol(acquisition)
        return Resynthesis(own=tissue_levels(acquisition.pre_contrast),
                           target=self.target_levels,
                           phi=water_ratio_map(source, self.target),
                           q_plausible=source.water_ratio(C_PLAUSIBLE_MM))

    def _harmonize(self, acquisition: Acquisition) -> np.ndarray:
        if not np.isfinite(acquisition.pixels).all():
            raise ModelError("the series holds non-finite pixel values (NaN or infinity)")
        return self.resynthesis(acquisition)(acquisition.pixels)

    def fields(self) -> dict[str, Any]:
        """The model as plain data (what the weights file holds besides method and domains)."""
        return {
            "target": asdict(self.target),
            "target_levels": asdict(self.target_levels),
            "source_agent": self.source_agent,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any], source_domain: ScannerDomain | None,
                    target_domain: ScannerDomain | None) -> Self:
        """The inverse of :meth:`fields`; KeyError, TypeError or ValueError if malformed."""
        return cls(
            target=Protocol(**fields["target"]),
            target_levels=TissueLevels(**fields["target_levels"]),
            source_agent=fields["source_agent"],
            source_domain=source_domain,
            target_domain=target_domain,
        )

    def save(self, folder: Path) -> None:
        save_json_weights(self, folder, _FORMAT_VERSION, self.fields())

    @classmethod
    def load(cls, folder: Path) -> Self:
        weights, source_domain, target_domain = load_json_weights(cls, folder, _FORMAT_VERSION)
        try:
            return cls.from_fields(weights, source_domain, target_domain)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{folder / cls.weights_file}: invalid weights ({exc!r})") from exc


def _side_agent(acquisitions: Sequence[Acquisition], default: str) -> str:
    """The agent the acquisitions' ``extra`` names, else ``default``; mixed is an error."""
    named = {agent_name(a.extra["ContrastBolusAgent"]) for a in acquisitions
             if a.extra.get("ContrastBolusAgent")}
    if len(named) > 1:
        raise ModelError(f"acquisitions mix contrast agents: {', '.join(sorted(named))}")
    return named.pop() if named else agent_name(default)
