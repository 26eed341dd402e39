"""The SCP in-process: Success only once the instance is on disk and in the ledger."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE

from dicomnode.intake import recover_spool
from dicomnode.ledger import Ledger
from dicomnode.network import STATUS_OUT_OF_RESOURCES
from dicomnode.validation import STATUS_DOES_NOT_MATCH_SOP_CLASS
from tests.peers import in_process_node, mr_instance, store_one


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path, Ledger]]:
    with in_process_node(tmp_path) as node:
        yield node.port, node.config.spool_dir, node.ledger


def test_success_means_on_disk_and_in_the_ledger(server: tuple[int, Path, Ledger]) -> None:
    port, spool_root, ledger = server
    assert store_one(port, mr_instance()) == 0x0000
    (instance,) = ledger.unclaimed("1.2.3.4")
    assert Path(instance.path).is_file()
    assert Path(instance.path).is_relative_to(spool_root)
    assert instance.calling_ae == "SCANNER"
    assert instance.parse_error is None


def test_unwritable_spool_answers_out_of_resources(server: tuple[int, Path, Ledger]) -> None:
    port, spool_root, ledger = server
    spool_root.write_text("a file where the spool folder should be")
    assert store_one(port, mr_instance()) == STATUS_OUT_OF_RESOURCES
    assert ledger.unclaimed("1.2.3.4") == []


def test_an_instance_without_study_is_kept_and_flagged(server: tuple[int, Path, Ledger]) -> None:
    port, _, ledger = server
    assert store_one(port, mr_instance(study_uid=None)) == STATUS_DOES_NOT_MATCH_SOP_CLASS
    (instance,) = ledger.unclaimed(None)
    assert instance.parse_error == "StudyInstanceUID is missing"
    assert Path(instance.path).is_file()


def test_the_called_ae_title_must_be_ours(server: tuple[int, Path, Ledger]) -> None:
    port, _, _ = server
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SOMEONE-ELSE")
    assert assoc.is_rejected


def test_a_spool_file_without_ledger_row_is_recovered(
    server: tuple[int, Path, Ledger], tmp_path: Path
) -> None:
    """The node stopped between the spool write and the ledger row: the file is the record."""
    port, spool_root, _ = server
    assert store_one(port, mr_instance()) == 0x0000
    (stored,) = spool_root.rglob("*.dcm")
    meta = dcmread(stored).file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle) == (
        "SCANNER", "NODE")
    (stored.parent / ".abc.dcm.partial").write_bytes(b"never acknowledged")
    fresh = Ledger(tmp_path / "fresh.sqlite")
    assert recover_spool(spool_root, fresh) == 1
    (instance,) = fresh.unclaimed("1.2.3.4")
    assert (instance.path, instance.calling_ae) == (str(stored), "SCANNER")
    assert not list(spool_root.rglob("*.partial"))
    assert recover_spool(spool_root, fresh) == 0
