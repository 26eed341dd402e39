"""The ``dicomnode-eval audit`` subcommand: its options and its exit status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.audit.errors import AuditError
from evaluation.audit.run import AuditOptions, default_jobs, run_audit
from evaluation.audit.sources import PacsAddress, parse_pacs
from evaluation.metrics import MetricError

EXIT_ERROR = 2


def _pacs(text: str) -> PacsAddress:
    try:
        return parse_pacs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "audit",
        help="audit an archive's scanner differences, before and after harmonization",
        description=(
            "Group the breast DCE-MRI acquisitions of a DICOM folder or a PACS by scanner "
            "domain and by original versus harmonized (the node's provenance tags), measure "
            "each once (cached), and write report.html, metrics.json and features.csv."
        ),
    )
    parser.add_argument("source", nargs="?", type=Path, help="folder tree of DICOM files")
    parser.add_argument("--pacs", type=_pacs, metavar="AET@HOST:PORT",
                        help="audit a PACS instead (C-FIND, then C-GET per MR series)")
    parser.add_argument("--calling-ae", default="DICOMNODE-EVAL",
                        help="our AE title towards the PACS (default DICOMNODE-EVAL)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (new, or an earlier audit's to update)")
    parser.add_argument("--cache", type=Path, help="measurement cache folder (default OUT/cache)")
    parser.add_argument("--jobs", type=_positive, default=default_jobs(),
                        help=f"worker processes (default {default_jobs()})")
    parser.add_argument("--reference-domain", metavar="DOMAIN",
                        help="reference group: a domain label or a profile name such as "
                             "siemens-3t (default: the harmonizers' target, else the most "
                             "common original domain)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out acquisitions that cannot be measured (listed in "
                             "metrics.json 'skipped') instead of failing")
    parser.add_argument("--drop-constant-features", action="store_true",
                        help="drop features constant within a group instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the audit the parsed ``args`` describe; print its summary; the exit status."""
    options = AuditOptions(
        out=args.out, source=args.source, pacs=args.pacs, calling_ae=args.calling_ae,
        cache=args.cache, jobs=args.jobs, reference_domain=args.reference_domain,
        skip_bad=args.skip_bad, drop_constant_features=args.drop_constant_features,
        progress=not args.no_progress,
    )
    try:
        summary = run_audit(options)
    except (AuditError, MetricError) as exc:
        print(f"dicomnode-eval audit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    brief = {k: summary[k] for k in ("source", "series", "computed", "cached",
                                     "reference_domain", "out")}
    brief["skipped"] = len(summary["skipped"])
    print(json.dumps(brief, indent=1))
    return 0
