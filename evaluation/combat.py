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
class CombatResult:
    """Harmonized features (samples, kept features) and the names kept and dropped."""

    features: np.ndarray
    kept: tuple[str, ...]
    dropped: tuple[str, ...]


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


def combat(features: np.ndarray, names: Sequence[str], batches: Sequence[str],
           reference: str) -> CombatResult:
    """ComBat-harmonize (samples, features) to the ``reference`` batch.

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
    # The package reports its progress with print(); the benchmark has its own.
    with _numpy_int_alias(), contextlib.redirect_stdout(io.StringIO()):
        result = neuroCombat(dat=x[:, keep].T, covars=covariates, batch_col=_BATCH,
                             ref_batch=reference)
    return CombatResult(
        features=np.asarray(result["data"], dtype=np.float64).T,
        kept=tuple(n for n, k in zip(names, keep, strict=True) if k),
        dropped=tuple(n for n, k in zip(names, keep, strict=True) if not k),
    )
