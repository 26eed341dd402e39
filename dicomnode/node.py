"""``dicomnode serve``: the SCP and the pipeline in one process until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import wait
from types import FrameType

from dicomnode.config import ConfigError, NodeConfig
from dicomnode.intake import recover_spool
from dicomnode.ledger import Ledger
from dicomnode.logs import get_logger
from dicomnode.metrics import NodeMetrics
from dicomnode.network import start_server
from dicomnode.pipeline import Pipeline
from dicomnode.production import Producer
from dicomnode.quality_reports import Evaluator
from dicomnode.routing import RuleSet
from dicomnode.sender import Sender
from dicomnode.spool import Spool
from harmonizers.base import ModelError
from harmonizers.registry import load_model

# While instances arrive the pipeline runs this often (the ledger query that finds complete
# series takes well under a millisecond).
_BUSY_POLL = 0.05
# How long the node waits for its children's imports (torch takes seconds on a cold disk)
# before it serves anyway.
_CHILD_START_SECONDS = 120.0


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


def load_rules(config: NodeConfig) -> RuleSet:
    """The rules file, validated against the node's destinations, with its models checked."""
    rules = RuleSet.load(config.rules, set(config.destinations))
    for problem in check_models(rules):
        get_logger().error("model_unusable", problem=problem)
    return rules


def serve(config: NodeConfig, stop: threading.Event | None = None) -> None:
    """Run the node until ``stop`` is set or the process gets SIGTERM/SIGINT.

    SIGHUP reloads the rules file; a file that does not validate leaves the running rules
    in place and the log says why.
    """
    stop = stop or threading.Event()
    reload = threading.Event()
    log = get_logger()
    rules = load_rules(config)
    ledger = Ledger(config.ledger_path)
    recovered = recover_spool(config.spool_dir, ledger)
    if recovered:
        log.warning("spool_recovered", instances=recovered)
    metrics = NodeMetrics(config, ledger)
    # Set by an arriving instance or a finished stream: the pipeline has something to do.
    wake = threading.Event()
    # Harmonizing runs in a child process, and so does sending what production makes (in
    # this process it would hold the GIL receiving needs). Both are started, and their
    # imports done, before the port opens: a study sent at once would compete with them.
    producer = Producer()
    warming = producer.start(rule.method for rule in rules.rules if rule.method)
    sender = Sender(config.ae_title, config.delivery)
    if not sender.start(_CHILD_START_SECONDS):
        log.warning("sender_slow_to_start", waited_seconds=_CHILD_START_SECONDS)
    if wait([warming], _CHILD_START_SECONDS).not_done:
        log.warning("producer_slow_to_start", waited_seconds=_CHILD_START_SECONDS)
    pipeline = Pipeline(config, ledger, rules, metrics, wake, producer, sender)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("node_stopping", signal=signal.Signals(signum).name)
        stop.set()

    def _reload(_signum: int, _frame: FrameType | None) -> None:
        reload.set()  # applied by the loop within one poll

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGHUP, _reload)

    server = start_server(config, Spool(config.spool_dir), ledger, metrics, wake)
    metrics.start(server.is_serving)
    # Quality reports are made beside the pipeline, so they never delay the images.
    evaluator = Evaluator(config, ledger)
    evaluating = threading.Thread(target=evaluator.serve, args=(stop,), name="evaluator",
                                  daemon=True)
    evaluating.start()
    log.info(
        "node_started", ae_title=config.ae_title, host=config.host, port=config.port,
        rules=str(config.rules), var_dir=str(config.var_dir),
        settle_seconds=config.settle_seconds,
    )
    poll = min(0.5, max(0.05, config.settle_seconds / 4))
    try:
        while not stop.is_set():
            if reload.is_set():
                reload.clear()
                pipeline.rules = _reloaded(config, pipeline.rules)
            pipeline.run_once()
            # An instance that arrives may complete its series (the expected count), and a
            # finished stream has a delivery to record: look again soon rather than a whole
            # poll later, at most every _BUSY_POLL seconds.
            if wake.wait(poll):
                wake.clear()
                stop.wait(_BUSY_POLL)
    finally:
        metrics.stop()
        server.shutdown()
        evaluating.join(timeout=5)
        evaluator.close()
        pipeline.close()
        ledger.close()
        log.info("node_stopped")


def _reloaded(config: NodeConfig, running: RuleSet) -> RuleSet:
    """The new rules, or the running ones when the file does not validate."""
    try:
        rules = load_rules(config)
    except ConfigError as exc:
        get_logger().error("rules_reload_refused", error=str(exc), kept=running.source)
        return running
    get_logger().info("rules_reloaded", rules=len(rules.rules), source=rules.source)
    return rules
