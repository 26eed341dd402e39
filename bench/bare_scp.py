"""A bare pynetdicom C-STORE SCP that answers Success at once: pynetdicom's own ceiling.

    python -m bench.bare_scp PORT

Max PDU 128 KiB, TCP_NODELAY and every storage SOP class, as the node, but the handler
neither writes nor parses nor records anything. The node served its associations with
pynetdicom until it got its own SCP (dicomnode/store_scp.py); the ingest benchmark still
sends the same series here, so the node's rate can be read against what pynetdicom allows.
"""

from __future__ import annotations

import socket
import sys

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def _nodelay(event: Event) -> None:
    """Nagle off, as the node has it: otherwise each C-STORE waits ~45 ms."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _success(_event: Event) -> int:
    return 0x0000


def main(port: int) -> None:
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 131072
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[
        (evt.EVT_C_STORE, _success), (evt.EVT_CONN_OPEN, _nodelay)])


if __name__ == "__main__":
    main(int(sys.argv[1]))
