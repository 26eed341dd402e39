"""Prometheus metrics and /healthz, served by a node running in this process."""

from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.config import NodeConfig
from dicomnode.ledger import Ledger
from dicomnode.metrics import NodeMetrics
from tests.peers import (
    free_port,
    in_process_node,
    mr_instance,
    rejection,
    request_association,
    store_one,
)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_what_the_node_did(tmp_path: Path) -> None:
    port = free_port()
    callers = [{"ae_title": "SCANNER"}]
    with in_process_node(tmp_path, metrics={"port": port},
                         security={"allowed_callers": callers}) as node:
        assert store_one(node.port, mr_instance()) == 0x0000
        assert store_one(node.port, mr_instance(study_uid="9.9")) == 0x0000
        assert rejection(request_association(node.port, calling="INTRUDER")) is not None
        (first,) = node.ledger.unclaimed("1.2.3.4")
        job = node.ledger.create_job("1.2.3.4", [first.id])
        node.ledger.update_job(job, "harmonized", "done")
        node.ledger.add_deliveries(job, ["pacs"])
        node.metrics.observe_harmonize(3.0)
        node.metrics.delivery_failed("pacs")
        samples = _scrape(f"http://127.0.0.1:{port}")
        stored = sum(i.size for i in node.ledger.unclaimed("9.9")) + first.size
    scanner = (("calling_ae", "SCANNER"),)
    assert samples[("dicomnode_instances_received_total", scanner)] == 2
    assert samples[("dicomnode_received_bytes_total", scanner)] == stored
    assert samples[("dicomnode_associations_rejected_total",
                    (("reason", "calling_ae_unknown"),))] == 1
    assert samples[("dicomnode_jobs", (("state", "harmonized"),))] == 1
    assert samples[("dicomnode_jobs", (("state", "failed"),))] == 0
    # One unclaimed instance (study 9.9), one harmonized job, one pending delivery.
    assert samples[("dicomnode_queue_depth", ())] == 3
    assert samples[("dicomnode_harmonize_seconds_count", ())] == 1
    assert samples[("dicomnode_harmonize_seconds_bucket", (("le", "5.0"),))] == 1
    assert samples[("dicomnode_delivery_failures_total", (("destination", "pacs"),))] == 1
    assert samples[("dicomnode_ledger_up", ())] == 1


def test_healthz_is_ok_while_the_node_can_take_work(tmp_path: Path) -> None:
    port = free_port()
    with in_process_node(tmp_path, metrics={"port": port}):
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.status_code == 200
        report = response.json()
        assert (report["status"], report["problems"], report["scp"]) == ("ok", [], True)
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404


def test_healthz_names_each_problem(tmp_path: Path) -> None:
    config = NodeConfig.model_validate({
        "var_dir": str(tmp_path), "metrics": {"port": free_port()},
        "admission": {"min_free_disk_mb": 1e9},  # more than any disk has
    })
    ledger = Ledger(config.ledger_path)
    metrics = NodeMetrics(config, ledger)
    metrics.start(scp_alive=lambda: False)
    try:
        ledger.close()
        response = requests.get(f"http://127.0.0.1:{config.metrics.port}/healthz", timeout=5)
        samples = _scrape(f"http://127.0.0.1:{config.metrics.port}")
    finally:
        metrics.stop()
    assert response.status_code == 503
    problems = response.json()["problems"]
    assert len(problems) == 3
    assert "ledger" in problems[0]
    assert "free disk" in problems[1]
    assert "SCP" in problems[2]
    assert samples[("dicomnode_ledger_up", ())] == 0


def test_each_node_counts_for_itself(tmp_path: Path) -> None:
    """Two nodes in one process: their registries are separate."""
    with in_process_node(tmp_path / "a") as a, in_process_node(tmp_path / "b") as b:
        assert store_one(a.port, mr_instance()) == 0x0000
        received = "dicomnode_instances_received_total"
        assert a.metrics.registry.get_sample_value(received, {"calling_ae": "SCANNER"}) == 1
        assert b.metrics.registry.get_sample_value(received, {"calling_ae": "SCANNER"}) is None
