"""``python -m evaluation.audit SOURCE --out DIR``: the audit without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from evaluation.audit import command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomnode-eval")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return command.run(parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
