"""Observability: Prometheus metrics and a health check on one small HTTP server.

``/metrics`` is the Prometheus text format; ``/healthz`` answers 200 with a JSON summary when
the ledger can be read, the spool's filesystem has more free space than admission control
needs, and the SCP is accepting; otherwise 503 with the problems named. Each node has its own
registry, so several nodes (as in the tests) can run in one process.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dicomnode.config import NodeConfig
from dicomnode.ledger import ACTIVE_STATES, JOB_STATES, Ledger

MIB = 1024 * 1024  # the "mb" of the admission settings

# Harmonizing one DCE acquisition takes seconds (histogram models) to minutes (networks on CPU).
HARMONIZE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


def free_disk_mb(path: Path) -> float:
    """Free space in MiB of the filesystem that holds ``path``, or will once it is made."""
    existing = next(folder for folder in (path, *path.absolute().parents) if folder.exists())
    return shutil.disk_usage(existing).free / MIB


class _LedgerCollector(Collector):
    """Jobs by state and the queue depth, counted in the ledger at scrape time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("dicomnode_ledger_up", "Whether the ledger could be read.")
        try:
            counts = self.ledger.counts()
        except sqlite3.Error:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("dicomnode_jobs", "Jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts[state])
        yield jobs
        yield GaugeMetricFamily(
            "dicomnode_queue_depth",
            "Work not yet done: unclaimed instances, unfinished jobs, pending deliveries.",
            value=counts["unclaimed_instances"] + sum(counts[s] for s in ACTIVE_STATES)
            + counts["pending_deliveries"],
        )
        reports = GaugeMetricFamily("dicomnode_quality_reports",
                                    "Quality reports (DICOM-SR) by state.", labels=["state"])
        for state in ("pending", "written", "failed"):
            reports.add_metric([state], counts[f"reports_{state}"])
        yield reports


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing: a scrape every few seconds would bury the node's JSON log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class NodeMetrics:
    """The node's metrics, the calls that update them, and the HTTP server that shows them."""

    def __init__(self, config: NodeConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "dicomnode_instances_received", "Instances stored and acknowledged, by calling AE.",
            ["calling_ae"], registry=self.registry,
        )
        self.bytes_received = Counter(
            "dicomnode_received_bytes", "Bytes of stored instances, by calling AE.",
            ["calling_ae"], registry=self.registry,
        )
        self.instances_refused = Counter(
            "dicomnode_instances_refused", "C-STORE requests answered 0xA700, by reason.",
            ["reason"], registry=self.registry,
        )
        self.associations_rejected = Counter(
            "dicomnode_associations_rejected",
            "Associations refused (A-ASSOCIATE-RJ or failed TLS handshake), by reason.",
            ["reason"], registry=self.registry,
        )
        self.harmonize_seconds = Histogram(
            "dicomnode_harmonize_seconds", "Time to harmonize one job.",
            buckets=HARMONIZE_BUCKETS, registry=self.registry,
        )
        self.delivery_failures = Counter(
            "dicomnode_delivery_failures", "Failed delivery attempts, by destination.",
            ["destination"], registry=self.registry,
        )
        self.registry.register(_LedgerCollector(ledger))
        self._metrics_app: Callable[..., Iterable[bytes]] = make_wsgi_app(self.registry)
        self._scp_alive: Callable[[], bool] = lambda: False
        self._http: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # --- what the network and the pipeline report ---------------------------------------

    def instance_received(self, calling_ae: str, size: int) -> None:
        self.instances_received.labels(calling_ae).inc()
        self.bytes_received.labels(calling_ae).inc(size)

    def instance_refused(self, reason: str) -> None:
        self.instances_refused.labels(reason).inc()

    def association_rejected(self, reason: str) -> None:
        self.associations_rejected.labels(reason).inc()

    def observe_harmonize(self, seconds: float) -> None:
        self.harmonize_seconds.observe(seconds)

    def delivery_failed(self, destination: str) -> None:
        """One delivery attempt to ``destination`` failed (retried or not)."""
        self.delivery_failures.labels(destination).inc()

    # --- health and the HTTP server -----------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the node can take and keep work, and the facts that say so."""
        problems = []
        try:
            self.ledger.counts()
        except sqlite3.Error as exc:
            problems.append(f"ledger {self.ledger.path} unreadable: {exc}")
        free = free_disk_mb(self.config.spool_dir)
        needed = self.config.admission.min_free_disk_mb
        if free < needed:
            problems.append(f"free disk {free:.0f} MiB is below the {needed:.0f} MiB minimum")
        scp = self._scp_alive()
        if not scp:
            problems.append("the DICOM SCP is not accepting associations")
        report = {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "free_disk_mb": round(free, 1),
            "min_free_disk_mb": needed,
            "scp": scp,
        }
        return not problems, report

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            healthy, report = self.health()
            body = json.dumps(report).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/metrics or /healthz\n"]

    def start(self, scp_alive: Callable[[], bool]) -> None:
        """Serve /metrics and /healthz on ``config.metrics``; nothing when its port is 0."""
        self._scp_alive = scp_alive
        if self.config.metrics.port == 0:
            return
        self._http = make_server(
            self.config.metrics.host, self.config.metrics.port, self._app,
            server_class=_ThreadingServer, handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

