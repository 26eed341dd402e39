"""``dicomnode-eval``: evaluation tools.

``simulate`` writes a synthetic breast DCE-MRI cohort; ``audit`` judges a DICOM archive (a
folder or a PACS) by what harmonization did for radiomics and kinetics; ``benchmark`` compares
the harmonizers and ComBat on held-out virtual patients and writes docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation import benchmark
from evaluation.audit import command as audit_command
from evaluation.virtual_scanner.cohort import simulate_cohort
from evaluation.virtual_scanner.profiles import ProfileError, available_profiles, profiles_dir


def _scanner_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one scanner profile name")
    return names


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profiles = available_profiles()
    parser = sub.add_parser(
        "simulate",
        help="write a synthetic breast DCE-MRI cohort (DICOM plus ground truth)",
        description=(
            "Render N virtual patients on each scanner profile and write one DICOM study per "
            "patient per scanner, with ground truth beside it. "
            f"Profiles in {profiles_dir()}: {', '.join(profiles) or '(none)'}."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--patients", type=int, default=1, help="number of patients (default 1)")
    parser.add_argument(
        "--scanners", type=_scanner_list, default=profiles,
        help=f"comma-separated profile names (default: all): {', '.join(profiles)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--matrix", type=int, help="in-plane matrix override (FOV kept)")
    parser.add_argument("--slices", type=int, help="slice count override (coverage kept)")
    parser.add_argument(
        "--reference", metavar="PROFILE",
        help="also render each study with this profile's physics into truth.npz 'reference'",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dicomnode-eval``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="dicomnode-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    audit_command.add_parser(sub)
    benchmark.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "audit":
        return audit_command.run(args)
    if args.command == "benchmark":
        return benchmark.run(args)
    if args.command == "simulate":
        try:
            summary = simulate_cohort(
                args.out, args.patients, args.scanners, seed=args.seed, matrix=args.matrix,
                slices=args.slices, reference=args.reference, progress=not args.no_progress,
            )
        except (ProfileError, ValueError, FileExistsError) as exc:
            print(f"dicomnode-eval simulate: error: {exc}", file=sys.stderr)
            return 2
        brief = {k: summary[k] for k in ("seed", "patients", "scanners", "matrix", "slices",
                                         "reference", "files")}
        brief["studies"] = len(summary["studies"])
        brief["summary"] = str(Path(args.out) / "summary.json")
        print(json.dumps(brief, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
