"""Fixtures shared by several test modules."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.assembly import assemble
from harmonizers.histogram import HistogramHarmonizer
from harmonizers.model_store import save_model
from tests.peers import free_port
from tests.pipeline_harness import MODEL
from tests.recording_scp import RecordingSCP
from tests.samples import read_sample


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A histogram model GE 3 T -> Siemens 3 T, fitted on the real sample series."""
    root = tmp_path_factory.mktemp("models")
    source = assemble(read_sample("ge-signa-architect-3t-multiphase")).acquisition
    target = assemble(read_sample("siemens-prisma-3t-prone")).acquisition
    save_model(HistogramHarmonizer.fit([source], [target]), root / MODEL,
               training_data="tests/data samples", training_command="pytest fixture")
    return root


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    """A DICOM destination on a free loopback port that records each SOPInstanceUID."""
    server = RecordingSCP(free_port())
    yield server
    server.stop()
