"""A bare pynetdicom C-STORE SCP that answers Success at once: the transport's own ceiling.

    python -m bench.bare_scp PORT

Same AE settings as the node (max PDU 128 KiB, TCP_NODELAY, every storage SOP class), but
the handler neither writes nor parses nor records anything. The ingest benchmark sends the
same series to it, so the node's rate can be read against what pynetdicom itself allows.
"""

from __future__ import annotations

import sys

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.network import set_nodelay


def _success(_event: Event) -> int:
    return 0x0000


def main(port: int) -> None:
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 131072
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[
        (evt.EVT_C_STORE, _success), (evt.EVT_CONN_OPEN, set_nodelay)])


if __name__ == "__main__":
    main(int(sys.argv[1]))
