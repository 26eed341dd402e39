"""The ``dicomnode`` command: serve, and let an admin see and steer the node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom import config as pydicom_config

from dicomnode import admin
from dicomnode.config import ConfigError, NodeConfig, load_config
from dicomnode.ledger import JOB_STATES, TERMINAL_STATES
from dicomnode.logs import configure


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument(
        "--config", type=Path, default=None,
        help="node.yaml (default: the embedded defaults; see conf/node.yaml for a site set-up)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="receive, harmonize and forward until stopped")
    serve.add_argument("--port", type=int, help="override the listening port")
    serve.add_argument("--settle-seconds", type=float, help="override settle_seconds")
    serve.add_argument("--log-level", default="INFO")

    commands.add_parser("status", help="where the node listens, what it holds, what waits")

    jobs = commands.add_parser("jobs", help="list, show, retry or purge jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", help="one line per job, with its state and reason")
    listing.add_argument("--state", choices=JOB_STATES, action="append")
    jobs.add_parser("show", help="a job's instances, deliveries and history").add_argument(
        "job_id", type=int
    )
    jobs.add_parser("retry", help="route a quarantined or failed job again").add_argument(
        "job_id", type=int
    )
    purge = jobs.add_parser("purge", help="delete the files of finished jobs (history stays)")
    purge.add_argument("--state", choices=TERMINAL_STATES, action="append",
                       help="default: delivered and discarded")
    purge.add_argument("--older-than-days", type=float, default=0.0)

    rules = commands.add_parser("rules", help="check or dry-run the rules").add_subparsers(
        dest="rules_command", required=True
    )
    rules.add_parser("check", help="validate rules.yaml against node.yaml and load every model")
    rules.add_parser(
        "explain", help="for each series under the paths: which rule matches, and why"
    ).add_argument("paths", type=Path, nargs="+", metavar="FILE_OR_DIR")
    return parser


def _jobs(config: NodeConfig, args: argparse.Namespace) -> int:
    ledger = admin.open_ledger(config)
    if ledger is None:
        return 0
    try:
        if args.jobs_command == "list":
            return admin.jobs_list(ledger, args.state)
        if args.jobs_command == "show":
            return admin.jobs_show(ledger, args.job_id)
        if args.jobs_command == "retry":
            return admin.jobs_retry(ledger, args.job_id)
        states = args.state or ["delivered", "discarded"]
        return admin.jobs_purge(ledger, config, states, args.older_than_days)
    finally:
        ledger.close()


def _rules(config: NodeConfig, args: argparse.Namespace) -> int:
    # Imported here: loading models pulls in the harmonizers, which `jobs` does not need.
    from dicomnode.explain import explain
    from dicomnode.node import check_models
    from dicomnode.routing import RuleSet

    rules = RuleSet.load(config.rules, set(config.destinations))
    if args.rules_command == "explain":
        return explain(rules, args.paths)
    problems = check_models(rules)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{config.rules}: {len(rules.rules)} rules, {len(problems)} unusable models")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            overrides = {"port": args.port, "settle_seconds": args.settle_seconds}
            config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
            configure(args.log_level)
            # pydicom checks each value it decodes against its VR and warns; the node acts on
            # none of those warnings (intake checks what matters itself), which only cost
            # time on every instance received.
            pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
            from dicomnode.node import serve

            serve(config)
            return 0
        if args.command == "status":
            return admin.status(config)
        if args.command == "jobs":
            return _jobs(config, args)
        return _rules(config, args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
