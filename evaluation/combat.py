"""ComBat on radiomic features: the feature-level harmonization baseline of radiomics studies.

ComBat (Johnson, Li & Rabinovic, Biostatistics 2007) removes additive and multiplicative batch
effects per feature with empirical-Bayes location/scale estimates; Fortin et al. (NeuroImage
2017/2018) brought it to imaging, and Orlhac et al. (J Nucl Med 2019) to radiomics. This wraps
the maintained package ``neuroCombat`` (Fortin; pip ``neuroCombat``) with the reference
scanner as ``ref_batch``, so the reference series are left as they are and every other batch
is moved into the reference scanner's feature units (the M-ComBat variant, Stein et al. 2015).

ComBat estimates a per-batch variance for each feature and divides by it, so features that
are not finite, or constant within a batch, cannot be harmonized: they are dropped and named
in the result.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

PACKAGE = "neuroCombat"
_BATCH = "batch"


def package_version() -> str:
    """The installed neuroCombat's version, for the report."""
    return version(PACKAGE)


@dataclass(frozen=True)
class CombatModel:
    """ComBat estimates fitted on a training set, to harmonize new series of the same batches.

    ``harmonized`` is the package's own output for the training set (kept features only).
    The other arrays are the package's estimates: per feature the reference batch's mean and
    the pooled standard deviation, per batch and feature the empirical-Bayes location
    (``gamma``) and scale (``delta``) of the batch effect in standardized units.
    """

    names: tuple[str, ...]
    kept: np.ndarray  # bool per name
    reference: str
    batches: tuple[str, ...]  # sorted: row i of gamma and delta
    grand_mean: np.ndarray
    pooled_sd: np.ndarray
    gamma: np.ndarray
    delta: np.ndarray
    harmonized: np.ndarray

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kept, strict=True) if not k)

    def apply(self, features: np.ndarray, batches: Sequence[str]) -> np.ndarray:
        """Harmonize (samples, all names) of new series; returns (samples, kept features).

        The adjustment of Johnson et al. 2007 with the fitted estimates, as the package's
        ``neuroCombatFromTraining`` computes it (that function fails on NumPy >= 2.3: it
        calls ``int()`` on a one-element array). Reference-batch rows are returned as they
        are, as ``ref_batch`` leaves them.
        """
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))[:, self.kept]
        out = x.copy()
        for row, batch in enumerate(batches):
            if batch == self.reference:
                continue
            if batch not in self.batches:
                raise ValueError(f"batch {batch!r} was not in ComBat's training set")
            level = self.batches.index(batch)
            z = (x[row] - self.grand_mean) / self.pooled_sd
            z = (z - self.gamma[level]) / np.sqrt(self.delta[level])
            out[row] = z * self.pooled_sd + self.grand_mean
        return out


@contextlib.contextmanager
def _numpy_int_alias() -> Iterator[None]:
    """Give NumPy back its ``np.int`` alias for one call.

    neuroCombat 0.2.12 looks up the reference batch with ``np.int(...)`` (neuroCombat.py line
    102), an alias NumPy 1.24 removed; the rest of its code runs on NumPy 2. The alias is the
    builtin ``int`` (NumPy 1.20 release notes) and is removed again afterwards.
    """
    if hasattr(np, "int"):
        yield
        return
    np.int = int  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del np.int  # type: ignore[attr-defined]


def harmonizable(features: np.ndarray, batches: Sequence[str]) -> np.ndarray:
    """Boolean per feature: finite everywhere and not constant within any batch."""
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    labels = np.asarray(batches)
    keep = np.all(np.isfinite(x), axis=0)
    for batch in np.unique(labels):
        rows = x[labels == batch]
        with np.errstate(invalid="ignore"):
            keep &= np.ptp(rows, axis=0) > 0
    return np.asarray(keep)


def fit_combat(features: np.ndarray, names: Sequence[str], batches: Sequence[str],
               reference: str) -> CombatModel:
    """Fit ComBat on (samples, features) with ``reference`` as the reference batch.

    Parametric empirical Bayes, location and scale (the package defaults), no biological
    covariates: the cohort's patients are drawn from one population for every scanner.
    """
    import pandas as pd
    from neuroCombat import neuroCombat

    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    labels = [str(b) for b in batches]
    if len(labels) != len(x) or len(names) != x.shape[1]:
        raise ValueError(f"{len(x)} samples x {x.shape[1]} features, but {len(labels)} batch "
                         f"labels and {len(names)} names")
    if reference not in labels:
        raise ValueError(f"the reference batch {reference!r} has no samples")
    counts = {b: labels.count(b) for b in set(labels)}
    if min(counts.values()) < 2:
        raise ValueError(f"ComBat needs >= 2 samples per batch, got {counts}")
    keep = harmonizable(x, labels)
    if not keep.any():
        raise ValueError("every feature is constant within some batch; nothing to harmonize")
    covariates = pd.DataFrame({_BATCH: labels})
    # The package reports its progress with print(); the benchmark has its own. Its
    # empirical-Bayes loop divides by the reference batch's location, which ref_batch makes 0
    # (a harmless inf in a convergence test).
    with (_numpy_int_alias(), contextlib.redirect_stdout(io.StringIO()),
          np.errstate(divide="ignore", invalid="ignore")):
        result = neuroCombat(dat=x[:, keep].T, covars=covariates, batch_col=_BATCH,
                             ref_batch=reference)
    estimates = result["estimates"]
    return CombatModel(
        names=tuple(names), kept=keep, reference=reference,
        # The package codes batches as indices into the sorted batch names.
        batches=tuple(sorted(counts)),
        grand_mean=np.asarray(estimates["stand.mean"], dtype=np.float64)[:, 0],
        pooled_sd=np.sqrt(np.asarray(estimates["var.pooled"], dtype=np.float64)[:, 0]),
        gamma=np.asarray(estimates["gamma.star"], dtype=np.float64),
        delta=np.asarray(estimates["delta.star"], dtype=np.float64),
        harmonized=np.asarray(result["data"], dtype=np.float64).T,
    )
