"""Who may send: the calling-AE allowlist (PS3.8 A-ASSOCIATE-RJ) and DICOM TLS (PS3.15 B.9).

The TLS cases use DCMTK's echoscu and storescu, as a modality would connect, with
certificates made here by the openssl command.
"""

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dicomnode.config import AllowedCaller, TlsSettings
from dicomnode.network import REJECT_CALLING_AE
from dicomnode.security import CallerPolicy, server_context
from tests.peers import (
    PEER_ENV,
    InProcessNode,
    have,
    in_process_node,
    mr_instance,
    rejection,
    request_association,
    store_one,
    wait_for,
)

# --- the calling-AE allowlist -------------------------------------------------------------


def _rejected(node: InProcessNode, reason: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "dicomnode_associations_rejected_total", {"reason": reason})
    return value or 0.0


def test_an_unknown_calling_ae_is_refused(tmp_path: Path) -> None:
    callers = [{"ae_title": "SCANNER"}]
    with in_process_node(tmp_path, security={"allowed_callers": callers}) as node, \
            capture_logs() as logs:
        assert rejection(request_association(node.port, calling="INTRUDER")) == REJECT_CALLING_AE
        assert store_one(node.port, mr_instance(), calling="SCANNER") == 0x0000
        assert _rejected(node, "calling_ae_unknown") == 1
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert event["calling_ae"] == "INTRUDER"
    assert event["peer"].startswith("127.0.0.1:")


def test_an_empty_allowlist_refuses_everyone(tmp_path: Path) -> None:
    """Unlike pynetdicom's require_calling_aet, where an empty list lets anyone in."""
    with in_process_node(tmp_path, security={"allowed_callers": []}) as node:
        assert rejection(request_association(node.port)) == REJECT_CALLING_AE


def test_a_known_ae_from_another_host_is_refused(tmp_path: Path) -> None:
    callers = [{"ae_title": "SCANNER", "hosts": ["127.0.0.1"]}]
    with in_process_node(tmp_path, security={"allowed_callers": callers}) as node, \
            capture_logs() as logs:
        # All of 127/8 is loopback on Linux: 127.0.0.2 is another source address.
        elsewhere = request_association(node.port, source="127.0.0.2")
        assert rejection(elsewhere) == REJECT_CALLING_AE
        assert store_one(node.port, mr_instance()) == 0x0000
        assert _rejected(node, "calling_ae_wrong_host") == 1
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert (event["calling_ae"], event["reason"]) == ("SCANNER", "calling_ae_wrong_host")
    assert event["peer"].startswith("127.0.0.2:")


def test_accepting_any_caller_is_warned_about(tmp_path: Path) -> None:
    with capture_logs() as logs, in_process_node(tmp_path) as node:
        assert store_one(node.port, mr_instance(), calling="ANYONE") == 0x0000
    assert any(e["event"] == "any_calling_ae_accepted" and e["log_level"] == "warning"
               for e in logs)


def test_caller_policy_merges_entries_and_reads_networks() -> None:
    policy = CallerPolicy([
        AllowedCaller(ae_title="CT", hosts=["10.0.0.5"]),
        AllowedCaller(ae_title="CT", hosts=["10.1.0.0/16"]),
        AllowedCaller(ae_title="MR"),
    ])
    assert sorted(policy.titles) == ["CT", "MR"]
    assert policy.host_allowed("CT", "10.0.0.5")
    assert policy.host_allowed("CT", "10.1.200.3")
    assert policy.host_allowed("CT", "::ffff:10.0.0.5")  # IPv4 seen by a dual-stack socket
    assert not policy.host_allowed("CT", "10.0.0.6")
    assert policy.host_allowed("MR", "192.0.2.1")
    assert not policy.knows("PET")


# --- TLS ------------------------------------------------------------------------------------

def _dcmtk_has_tls() -> bool:
    if not have("echoscu", "storescu", "openssl"):
        return False
    result = subprocess.run(["storescu", "--help"], capture_output=True, text=True, timeout=10)
    return "--enable-tls" in result.stdout


needs_tls = pytest.mark.skipif(not _dcmtk_has_tls(), reason="DCMTK without TLS, or no openssl")

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", *_EC_KEY, "-keyout", folder / f"{name}.key",
             "-out", folder / f"{name}.crt", "-days", "2", "-subj", f"/CN={name}")


def _leaf(folder: Path, name: str, ca: str) -> None:
    extensions = folder / "leaf.ext"
    extensions.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n"
                          "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", *_EC_KEY, "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr",
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / f"{ca}.crt",
             "-CAkey", folder / f"{ca}.key", "-CAcreateserial", "-days", "2",
             "-out", folder / f"{name}.crt", "-extfile", extensions)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site CA with the node's and a scanner's certificates, and a stranger's CA and client."""
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "site-ca")
    _leaf(folder, "node", "site-ca")
    _leaf(folder, "scanner", "site-ca")
    _ca(folder, "other-ca")
    _leaf(folder, "stranger", "other-ca")
    return folder


@pytest.fixture
def tls_node(pki: Path, tmp_path: Path) -> Iterator[InProcessNode]:
    tls = {"certificate": str(pki / "node.crt"), "private_key": str(pki / "node.key"),
           "ca_certificates": str(pki / "site-ca.crt"), "require_client_certificate": True}
    with in_process_node(tmp_path / "node", security={"tls": tls}) as node:
        yield node


def _client_tls(pki: Path, client: str | None) -> list[str]:
    """DCMTK's TLS options: a client certificate (or none) and the site CA to check the node."""
    identity = ["+tls", str(pki / f"{client}.key"), str(pki / f"{client}.crt"), "-pw"] \
        if client else ["+tla"]
    return [*identity, "+cf", str(pki / "site-ca.crt")]


def _dcmtk(program: str, node: InProcessNode, *options: str, files: tuple[Path, ...] = ()
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, "-aet", "SCANNER", "-aec", "NODE", "-to", "5", *options,
         "127.0.0.1", str(node.port), *map(str, files)],
        env=PEER_ENV, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )


@needs_tls
def test_a_client_with_a_trusted_certificate_stores_over_tls(
    pki: Path, tls_node: InProcessNode, tmp_path: Path
) -> None:
    instance = tmp_path / "mr.dcm"
    mr_instance().save_as(instance, enforce_file_format=True)
    with capture_logs() as logs:
        result = _dcmtk("storescu", tls_node, *_client_tls(pki, "scanner"), files=(instance,))
        assert result.returncode == 0, result.stdout + result.stderr
    assert len(tls_node.ledger.unclaimed("1.2.3.4")) == 1
    established = [e for e in logs if e["event"] == "association_established"]
    assert established[0]["tls_subject"] == "scanner"
    assert established[0]["tls"] in ("TLSv1.2", "TLSv1.3")


@needs_tls
@pytest.mark.parametrize(
    "client", ["stranger", None, "plain"],
    ids=["untrusted-certificate", "no-certificate", "plain-tcp"],
)
def test_a_client_without_a_trusted_certificate_is_refused(
    pki: Path, tls_node: InProcessNode, client: str | None
) -> None:
    options = [] if client == "plain" else _client_tls(pki, client)
    result = _dcmtk("echoscu", tls_node, *options)
    assert result.returncode != 0
    assert tls_node.ledger.counts()["unclaimed_instances"] == 0
    # The node's side of a failed handshake may finish after the client has exited.
    wait_for(lambda: _rejected(tls_node, "tls_handshake_failed") == 1, 5, "the refusal")


@needs_tls
def test_a_silent_connection_does_not_hold_up_other_senders(
    pki: Path, tls_node: InProcessNode
) -> None:
    """pynetdicom would do the handshake in its accept loop, where a mute client blocks it."""
    with socket.create_connection(("127.0.0.1", tls_node.port)):
        result = _dcmtk("echoscu", tls_node, *_client_tls(pki, "scanner"))
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_tls_context_requires_tls_1_2_and_a_client_certificate(pki: Path) -> None:
    settings: dict[str, Any] = {"certificate": pki / "node.crt", "private_key": pki / "node.key"}
    required = server_context(TlsSettings(
        **settings, ca_certificates=pki / "site-ca.crt", require_client_certificate=True))
    assert required.minimum_version == ssl.TLSVersion.TLSv1_2
    assert required.verify_mode == ssl.CERT_REQUIRED
    assert server_context(TlsSettings(**settings)).verify_mode == ssl.CERT_NONE
