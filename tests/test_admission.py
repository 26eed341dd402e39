"""Admission control: the node refuses work it cannot keep, and says why (PS3.8, PS3.4)."""

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dicomnode import network
from dicomnode.network import REJECT_LOCAL_LIMIT, STATUS_OUT_OF_RESOURCES
from tests.peers import in_process_node, mr_instance, rejection, request_association, store_one


def test_low_disk_refuses_new_associations_as_transient(tmp_path: Path) -> None:
    # No disk has a petabyte free: the floor is always above what is there.
    with in_process_node(tmp_path, admission={"min_free_disk_mb": 1e9}) as node, \
            capture_logs() as logs:
        assoc = request_association(node.port)
        assert rejection(assoc) == REJECT_LOCAL_LIMIT
        assert node.metrics.registry.get_sample_value(
            "dicomnode_associations_rejected_total", {"reason": "low_disk"}) == 1
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert (event["reason"], event["calling_ae"]) == ("low_disk", "SCANNER")
    assert event["peer"].startswith("127.0.0.1:")


def test_disk_filling_mid_association_answers_out_of_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_node(tmp_path, admission={"min_free_disk_mb": 1}) as node:
        assoc = request_association(node.port)
        assert assoc.is_established
        monkeypatch.setattr(network, "free_disk_mb", lambda _path: 0.5)
        status = assoc.send_c_store(mr_instance())
        assoc.release()
        assert int(status.Status) == STATUS_OUT_OF_RESOURCES
        assert node.ledger.unclaimed("1.2.3.4") == []
        assert not list(node.config.spool_dir.rglob("*.dcm"))
        assert node.metrics.registry.get_sample_value(
            "dicomnode_instances_refused_total", {"reason": "low_disk"}) == 1


def test_at_most_max_associations_at_once(tmp_path: Path) -> None:
    with in_process_node(tmp_path, admission={"max_associations": 1}) as node:
        first = request_association(node.port)
        assert first.is_established
        second = request_association(node.port)
        assert rejection(second) == REJECT_LOCAL_LIMIT
        first.release()
        assert store_one(node.port, mr_instance()) == 0x0000
        assert node.metrics.registry.get_sample_value(
            "dicomnode_associations_rejected_total", {"reason": "too_many_associations"}) == 1


def test_an_instance_above_the_size_limit_is_refused_and_not_stored(tmp_path: Path) -> None:
    with in_process_node(tmp_path, admission={"max_instance_mb": 0.05}) as node, \
            capture_logs() as logs:
        big = mr_instance(pixels=60_000)  # 0.05 MiB is 52 429 bytes
        assert store_one(node.port, big) == STATUS_OUT_OF_RESOURCES
        assert store_one(node.port, mr_instance(pixels=40_000)) == 0x0000
        (stored,) = node.ledger.unclaimed("1.2.3.4")
        assert stored.size < 52_429
        assert len(list(node.config.spool_dir.rglob("*.dcm"))) == 1
    (event,) = [e for e in logs if e["event"] == "instance_too_large"]
    assert event["sop_instance_uid"] == big.SOPInstanceUID
    assert event["calling_ae"] == "SCANNER"
    assert event["size"] > 52_429
