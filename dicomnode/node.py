"""``dicomnode serve``: the SCP and the pipeline in one process until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from dicomnode.config import NodeConfig
from dicomnode.intake import recover_spool
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.network import start_server
from dicomnode.pipeline import Pipeline
from dicomnode.routing import RuleSet
from dicomnode.spool import Spool
from harmonizers.base import ModelError
from harmonizers.registry import load_model


def check_models(rules: RuleSet) -> list[str]:
    """Load every model the rules name; return one problem line per model that fails.

    A bad model does not stop the node: its jobs are quarantined with the same message, and
    every other rule keeps working.
    """
    problems = []
    for rule in rules.rules:
        if rule.method and rule.model:
            try:
                load_model(rule.method, rule.model)
            except ModelError as exc:
                problems.append(f"{rules.source}: rule {rule.name!r}: {exc}")
    return problems


def serve(config: NodeConfig, stop: threading.Event | None = None) -> None:
    """Run the node until ``stop`` is set or the process gets SIGTERM/SIGINT."""
    stop = stop or threading.Event()
    log = get_logger()
    rules = RuleSet.load(config.rules, set(config.destinations))
    for problem in check_models(rules):
        log.error("model_unusable", problem=problem)
    ledger = Ledger(config.ledger_path)
    recovered = recover_spool(config.spool_dir, ledger)
    if recovered:
        log.warning("spool_recovered", instances=recovered)
    pipeline = Pipeline(config, ledger, rules)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("node_stopping", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    server = start_server(
        config.ae_title, config.host, config.port, config.max_pdu, Spool(config.spool_dir), ledger
    )
    log.info(
        "node_started", ae_title=config.ae_title, host=config.host, port=config.port,
        rules=str(config.rules), var_dir=str(config.var_dir),
        settle_seconds=config.settle_seconds,
    )
    poll = min(0.5, max(0.05, config.settle_seconds / 4))
    try:
        while not stop.is_set():
            pipeline.run_once()
            stop.wait(poll)
    finally:
        server.shutdown()
        ledger.close()
        log.info("node_stopped")
