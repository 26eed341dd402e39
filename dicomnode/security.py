"""Who may send to the node: the calling-AE allowlist and DICOM TLS.

The allowlist is checked when an association is requested; a refused sender hears
A-ASSOCIATE-RJ, rejected-permanent, "calling-AE-title-not-recognized" (PS3.8 9.3.4,
Table 9-21). TLS follows the Secure Transport Connection Profiles of PS3.15 Annex B: TLS 1.2
or later (the BCP 195 profiles, B.9 and B.10), the node's certificate, and when required, a
client certificate signed by a trusted CA.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence

from dicomnode.config import AllowedCaller, ConfigError, TlsSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(host: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError as exc:
        raise ConfigError(f"security.allowed_callers: {host!r} is not an IP address") from exc


def _address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 senders as ::ffff:a.b.c.d; the admin writes a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CallerPolicy:
    """The senders the node accepts, by calling AE title and, optionally, source address.

    ``None`` accepts every calling AE. A title listed more than once accepts the union of
    its hosts; an entry without hosts accepts that title from anywhere. A host may be an
    address or a network (``10.1.2.0/24``).
    """

    def __init__(self, allowed: Sequence[AllowedCaller] | None) -> None:
        self.accepts_any = allowed is None
        self._hosts: dict[str, list[IpNetwork] | None] = {}
        for caller in allowed or ():
            title = caller.ae_title.strip()
            previous = self._hosts.get(title, [])  # None: already accepted from any host
            if caller.hosts is None or previous is None:
                self._hosts[title] = None
            else:
                self._hosts[title] = [*previous, *map(_network, caller.hosts)]

    @property
    def titles(self) -> list[str]:
        return list(self._hosts)

    def knows(self, calling_ae: str) -> bool:
        return self.accepts_any or calling_ae.strip() in self._hosts

    def host_allowed(self, calling_ae: str, peer: str) -> bool:
        """Whether a known calling AE may send from this address."""
        if self.accepts_any:
            return True
        networks = self._hosts.get(calling_ae.strip(), [])
        if networks is None:
            return True
        address = _address(peer)
        return address is not None and any(address in network for network in networks)


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context the SCP wraps every connection in (PS3.15 B.9, BCP 195).

    TLS 1.2 is the floor; Python's default cipher list (forward-secret AEAD suites first) is
    what BCP 195 asks for. With ``ca_certificates`` a client certificate is verified when one
    is sent, and with ``require_client_certificate`` a client without one is refused.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"security.tls: cannot load certificate {tls.certificate} with key"
            f" {tls.private_key}: {exc}"
        ) from exc
    if tls.ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"security.tls.ca_certificates: cannot load {tls.ca_certificates}: {exc}"
            ) from exc
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context
