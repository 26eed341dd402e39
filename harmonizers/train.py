"""``dicomnode-train``: fit a harmonization model from two folders of DICOM and save it.

    dicomnode-train histogram --source DIR --target DIR --out harmonizers/models/NAME

The folders are unpaired: any breast DCE series from the source scanner and any from the
target scanner. Each side must come from one scanner domain, which becomes the model's
source or target domain. The model folder gets the weights and a card with their SHA-256,
the exact command line and the date.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from dicomnode.assembly import AssemblyError, acquisitions_from_paths
from harmonizers.acquisition import Acquisition
from harmonizers.base import ModelError, common_domain
from harmonizers.model_store import save_model
from harmonizers.registry import available_methods, harmonizer_class


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode-train", description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=available_methods())
    parser.add_argument("--source", type=Path, required=True, help="DICOM folder, source scanner")
    parser.add_argument("--target", type=Path, required=True, help="DICOM folder, target scanner")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    return parser


def _read_side(folder: Path, side: str) -> list[Acquisition]:
    if not folder.is_dir():
        raise ModelError(f"--{side} {folder} is not a folder")
    acquisitions = acquisitions_from_paths([folder])
    if not acquisitions:
        raise ModelError(f"--{side} {folder} holds no harmonizable DCE acquisition")
    domain = common_domain(acquisitions, side)
    if domain is None:
        raise ModelError(f"--{side} {folder}: the scanner (Manufacturer, field) is unknown")
    return acquisitions


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(args_list)
    # One pass each: reading dominates; the fit itself is quick for the histogram method.
    with tqdm(total=4, desc="train", unit="step") as bar:
        try:
            bar.set_postfix_str("reading source")
            source = _read_side(args.source, "source")
            bar.update()
            bar.set_postfix_str("reading target")
            target = _read_side(args.target, "target")
            bar.update()
            bar.set_postfix_str("fitting")
            harmonizer = harmonizer_class(args.method).fit(source, target)
            bar.update()
            bar.set_postfix_str("saving")
            card = save_model(
                harmonizer,
                args.out,
                training_data=(
                    f"source: {args.source} ({len(source)} acquisitions); "
                    f"target: {args.target} ({len(target)} acquisitions)"
                ),
                training_command=shlex.join(["dicomnode-train", *args_list]),
            )
            bar.update()
        except (AssemblyError, ValueError) as exc:  # ModelError is a ValueError
            bar.close()
            print(f"dicomnode-train: error: {exc}", file=sys.stderr)
            return 1
    print(f"wrote {args.out} ({card.source_domain} -> {card.target_domain}, sha256 {card.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
