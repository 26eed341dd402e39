"""``dicomnode-train``: fit a harmonization model from two folders of DICOM and save it.

    dicomnode-train histogram --source DIR --target DIR --out harmonizers/models/NAME
    dicomnode-train cyclegan --source DIR --target DIR --out harmonizers/models/NAME [--steps N]
    dicomnode-train stylemapper --source DIR --target DIR [--other DIR ...] --out ...
    dicomnode-train stylemapper --restyle-from FOLDER --source DIR --target DIR --out ...

The folders are unpaired: any breast DCE series from the source scanner and any from the
target scanner. Each side must come from one scanner domain, which becomes the model's
source or target domain. The model folder gets the weights and a card with their SHA-256,
the exact command line and the date.

The deep methods (cyclegan, stylemapper) train on the GPU when torch sees one, else on the
CPU, with a progress bar. They checkpoint into ``OUT/checkpoint.pt`` every 100 steps and on
Ctrl-C; running the same command again resumes from it (``--restart`` discards it). The
checkpoint is deleted once the model is saved. ``--restyle-from`` does not train: it reads
the style reference of a trained stylemapper model from the ``--target`` series, so a
model maps to a scanner it was not trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from dicomnode.assembly import AssemblyError, acquisitions_from_paths
from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer, ModelError, common_domain
from harmonizers.cyclegan import CycleGANConfig, CycleGANHarmonizer
from harmonizers.model_store import load_model_folder, save_model
from harmonizers.registry import available_methods, harmonizer_class
from harmonizers.stylemapper import StyleMapperConfig, StyleMapperHarmonizer

CHECKPOINT = "checkpoint.pt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode-train", description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=available_methods())
    parser.add_argument("--source", type=Path, required=True, help="DICOM folder, source scanner")
    parser.add_argument("--target", type=Path, required=True, help="DICOM folder, target scanner")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    deep = parser.add_argument_group("cyclegan and stylemapper")
    deep.add_argument("--steps", type=int, help="training iterations (default: the method's)")
    deep.add_argument("--seed", type=int, help="random seed (default 0)")
    deep.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    deep.add_argument("--restart", action="store_true",
                      help="discard OUT/checkpoint.pt instead of resuming from it")
    style = parser.add_argument_group("stylemapper")
    style.add_argument("--other", type=Path, action="append", default=[],
                       help="DICOM folder of a further scanner to learn styles from (repeat)")
    style.add_argument("--restyle-from", type=Path,
                       help="a trained stylemapper model folder: no training, only a new "
                            "style reference read from --target")
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


def _check_options(args: argparse.Namespace) -> None:
    deep = args.method in ("cyclegan", "stylemapper")
    used = [name for name in ("steps", "seed", "threads") if getattr(args, name) is not None]
    if args.restart:
        used.append("restart")
    if used and not deep:
        raise ModelError(f"--{used[0]} is for cyclegan and stylemapper, not {args.method}")
    if (args.other or args.restyle_from) and args.method != "stylemapper":
        raise ModelError("--other and --restyle-from are for stylemapper only")
    if args.steps is not None and args.steps < 1:
        raise ModelError("--steps must be at least 1")


def _fit(args: argparse.Namespace, source: list[Acquisition], target: list[Acquisition],
         others: Sequence[list[Acquisition]]) -> Harmonizer:
    """Fit the method; deep methods with a checkpoint in --out and a progress bar."""
    if args.method not in ("cyclegan", "stylemapper"):
        return harmonizer_class(args.method).fit(source, target)
    checkpoint = args.out / CHECKPOINT
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    elif checkpoint.is_file():
        print(f"resuming from {checkpoint}", file=sys.stderr)
    overrides = {k: getattr(args, k) for k in ("steps", "seed") if getattr(args, k) is not None}
    harmonizer: Harmonizer
    if args.method == "cyclegan":
        harmonizer = CycleGANHarmonizer.fit(
            source, target, config=dataclasses.replace(CycleGANConfig(), **overrides),
            checkpoint=checkpoint, progress=True)
    else:
        harmonizer = StyleMapperHarmonizer.fit(
            source, target, config=dataclasses.replace(StyleMapperConfig(), **overrides),
            others=others, checkpoint=checkpoint, progress=True)
    return harmonizer


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(args_list)
    try:
        _check_options(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        sides = [(args.source, "source"), (args.target, "target"),
                 *((folder, f"other {folder}") for folder in args.other)]
        read: list[list[Acquisition]] = []
        for folder, side in tqdm(sides, desc="reading", unit="folder"):
            read.append(_read_side(folder, side))
        source, target, *others = read
        if args.restyle_from is not None:
            folder = args.restyle_from.resolve()
            base = load_model_folder(StyleMapperHarmonizer, folder.name, root=folder.parent)
            assert isinstance(base.harmonizer, StyleMapperHarmonizer)
            harmonizer: Harmonizer = base.harmonizer.restyled(
                target, source_domain=source[0].domain, source=source)
        else:
            harmonizer = _fit(args, source, target, others)
        extra = "".join(f"; other: {f} ({len(o)} acquisitions)"
                        for f, o in zip(args.other, others, strict=True))
        card = save_model(
            harmonizer,
            args.out,
            training_data=(
                f"source: {args.source} ({len(source)} acquisitions); "
                f"target: {args.target} ({len(target)} acquisitions){extra}"
                + (f"; network from {args.restyle_from}" if args.restyle_from else "")
            ),
            training_command=shlex.join(["dicomnode-train", *args_list]),
        )
        (args.out / CHECKPOINT).unlink(missing_ok=True)
    except (AssemblyError, ValueError) as exc:  # ModelError is a ValueError
        print(f"dicomnode-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dicomnode-train: interrupted; run the same command again to resume from "
              f"{args.out / CHECKPOINT}", file=sys.stderr)
        return 130
    print(f"wrote {args.out} ({card.source_domain} -> {card.target_domain}, sha256 {card.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
