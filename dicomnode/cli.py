"""The ``dicomnode`` command: serve, and let an admin see and steer jobs."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from dicomnode.config import ConfigError, NodeConfig, load_config
from dicomnode.ledger import JOB_STATES, Ledger
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

    jobs = commands.add_parser("jobs", help="list, show or retry jobs").add_subparsers(
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
    commands.add_parser("rules", help="check the rules file").add_subparsers(
        dest="rules_command", required=True
    ).add_parser("check", help="validate rules.yaml against node.yaml and load every model")
    return parser


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _jobs(config: NodeConfig, args: argparse.Namespace) -> int:
    if not config.ledger_path.exists():
        print(f"no ledger at {config.ledger_path}: the node has received nothing yet")
        return 0
    ledger = Ledger(config.ledger_path)
    if args.jobs_command == "list":
        print(f"{'job':>6}  {'state':<12} {'updated':<19}  {'rule':<16} reason")
        for job in ledger.jobs(args.state):
            print(f"{job.id:>6}  {job.state:<12} {_when(job.updated_at):<19}  "
                  f"{job.rule or '-':<16} {job.reason or ''}")
        return 0
    found = ledger.job(args.job_id)
    if found is None:
        print(f"no job {args.job_id}", file=sys.stderr)
        return 2
    job = found
    if args.jobs_command == "retry":
        try:
            ledger.retry(job.id)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"job {job.id} will be routed again")
        return 0
    print(f"job {job.id}: {job.state}  study {job.study_uid}")
    print(f"  rule {job.rule}  method {job.method}  model {job.model}")
    print(f"  reason: {job.reason or '-'}\n  output: {job.output_dir or '-'}")
    instances = ledger.instances(job.id)
    senders = sorted({i.calling_ae for i in instances})
    print(f"  {len(instances)} instances from {', '.join(senders)}")
    for delivery in ledger.deliveries(job.id):
        print(f"  delivery {delivery.destination}: {delivery.state}, {delivery.attempts} attempts"
              f"{', last error: ' + delivery.last_error if delivery.last_error else ''}")
    for at, state, message in ledger.events(job.id):
        print(f"  {_when(at)}  {state:<12} {message}")
    return 0


def _rules_check(config: NodeConfig) -> int:
    from dicomnode.node import check_models
    from dicomnode.routing import RuleSet

    rules = RuleSet.load(config.rules, set(config.destinations))
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
            from dicomnode.node import serve

            serve(config)
            return 0
        if args.command == "jobs":
            return _jobs(config, args)
        return _rules_check(config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
