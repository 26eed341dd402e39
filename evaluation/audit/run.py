"""Run an audit end to end: source -> inventory -> measure (cached, in parallel) -> report.

The outputs are written into a temporary folder beside ``out`` and renamed into place at the
end, so a failed or interrupted audit never leaves a half-written report (a previous report
stays as it was). The measurement cache is the exception on purpose: each entry is written
as soon as it is measured, so the next run over a large archive resumes where this one
stopped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evaluation.audit.analysis import analyse, feature_table
from evaluation.audit.cache import FeatureCache
from evaluation.audit.errors import AuditError
from evaluation.audit.inventory import Entry, build_inventory
from evaluation.audit.measure import MEASURE_VERSION, measure
from evaluation.audit.report import write_outputs
from evaluation.audit.sources import PacsAddress, folder_files, retrieve_from_pacs

OUTPUT_NAMES = frozenset({"report.html", "metrics.json", "features.csv", "cache"})


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass(frozen=True)
class AuditOptions:
    out: Path
    source: Path | None = None
    pacs: PacsAddress | None = None
    calling_ae: str = "DICOMNODE-EVAL"
    cache: Path | None = None  # default out/cache
    jobs: int = 1
    reference_domain: str | None = None
    skip_bad: bool = False
    drop_constant_features: bool = False
    progress: bool = True


def run_audit(options: AuditOptions) -> dict[str, Any]:
    """Audit ``options.source`` (or the PACS) into ``options.out``; the run summary.

    Raises AuditError, with a message meant for the user, for anything that stops it.
    """
    if (options.source is None) == (options.pacs is None):
        raise AuditError("give either a source folder or --pacs AET@host:port")
    out = options.out
    _check_out(out)
    if options.pacs is not None:
        with _scratch(out, "pacs") as download:
            retrieve_from_pacs(options.pacs, options.calling_ae, download, options.progress)
            return _audit(download, str(options.pacs), options)
    assert options.source is not None
    return _audit(options.source, str(options.source), options)


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier audit's output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise AuditError(f"output {out} exists and is not a folder")
    strangers = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
    if strangers:
        raise AuditError(f"output folder {out} holds other files than an audit's "
                         f"({', '.join(strangers[:5])}); give a new or earlier audit folder")


@contextmanager
def _scratch(out: Path, what: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` (same file system, so a rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / f".{out.name}.{what}.{uuid.uuid4().hex[:12]}.tmp"
    folder.mkdir()  # not mkdtemp: its 0700 would become the published folder's mode
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _audit(root: Path, source: str, options: AuditOptions) -> dict[str, Any]:
    inventory = build_inventory(folder_files(root))
    if not inventory.entries:
        ignored = "; ".join(f"{n} x {why}" for why, n in sorted(inventory.ignored.items()))
        raise AuditError(f"no MR image series to audit in {source} (ignored: {ignored})")
    cache = FeatureCache(options.cache or options.out / "cache", MEASURE_VERSION)
    records: dict[str, dict[str, Any]] = {}
    for entry in inventory.entries:
        cached = cache.get(entry)
        if cached is not None:
            records[entry.uid] = cached
    todo = [e for e in inventory.entries if e.uid not in records]
    failures = _measure_all(todo, cache, records, options)
    if failures and not options.skip_bad:
        lines = "\n".join(f"  series {e.uid} in {e.folder}: {why}" for e, why in failures)
        done = len(todo) - len(failures)
        raise AuditError(
            f"{len(failures)} of {len(inventory.entries)} acquisitions could not be measured:\n"
            f"{lines}\ngive --skip-bad to audit without them"
            + (f" ({done} measured now are kept in the cache {cache.folder})" if done else "")
        )
    measured = [e for e in inventory.entries if e.uid in records]
    if not measured:
        raise AuditError(f"no acquisition in {source} could be measured")
    table = feature_table(measured, records, options.drop_constant_features)
    analysis = analyse(table, options.reference_domain)
    summary = {
        "source": source,
        "series": len(measured),
        "computed": len(todo) - len(failures),
        "cached": len(inventory.entries) - len(todo),
        "skipped": [{"uid": e.uid, "folder": str(e.folder), "reason": why}
                    for e, why in failures],
        "ignored_instances": inventory.ignored,
        "feature_set_version": MEASURE_VERSION,
    }
    with _scratch(options.out, "report") as staging:
        write_outputs(staging, analysis, summary)
        _publish(staging, options.out)
    return {**summary, "out": str(options.out), "reference_domain": analysis.reference}


def _measure_all(todo: list[Entry], cache: FeatureCache, records: dict[str, dict[str, Any]],
                 options: AuditOptions) -> list[tuple[Entry, str]]:
    """Measure ``todo`` (in a process pool when jobs > 1), caching each result as it lands."""
    failures: list[tuple[Entry, str]] = []

    def keep(entry: Entry, record: dict[str, Any]) -> None:
        if "error" in record:
            failures.append((entry, str(record["error"])))
            return
        cache.put(entry, record)
        records[entry.uid] = record

    bar = tqdm(total=len(todo), desc="audit", unit="series", disable=not options.progress)
    with bar:
        if options.jobs <= 1 or len(todo) <= 1:
            for entry in todo:
                keep(entry, measure([str(f) for f in entry.files]))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=options.jobs) as pool:
                futures: dict[Future[dict[str, Any]], Entry] = {
                    pool.submit(measure, [str(f) for f in e.files]): e for e in todo
                }
                for future in as_completed(futures):
                    keep(futures[future], future.result())
                    bar.update()
    return sorted(failures, key=lambda f: f[0].uid)


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished outputs in for ``out``, keeping a cache that lives inside it."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old.{uuid.uuid4().hex[:12]}.tmp"
    os.replace(out, old)
    os.replace(staging, out)
    if (old / "cache").is_dir():
        os.replace(old / "cache", out / "cache")
    shutil.rmtree(old, ignore_errors=True)
