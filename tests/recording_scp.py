"""A storage SCP on loopback that records what it is sent: a destination for the pipeline."""

import threading

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts


class RecordingSCP:
    """A storage SCP on loopback that records every SOPInstanceUID it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stored: list[str] = []
        self.first = threading.Event()
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts[:100]:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Event) -> int:
        self.stored.append(str(event.dataset.SOPInstanceUID))
        self.first.set()
        return 0x0000

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
