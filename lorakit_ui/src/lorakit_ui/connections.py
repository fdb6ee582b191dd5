"""The HTTP connections of ``lorakit ui``: bounded in time, size and number.

uvicorn (0.54) bounds an idle keep-alive connection (``timeout_keep_alive``), the size of a
request's head (``h11_max_incomplete_event_size``) and the requests it serves at once
(``limit_concurrency``, 503 past it), but not the time a client may take to send a
request's head: a client that sends half a header and waits holds its connection for
ever. ``HeaderTimeoutProtocol`` is uvicorn's h11 protocol with that bound: from the moment a
connection opens (or a response completes) the whole head of the next request must arrive
within ``HEADER_TIMEOUT`` seconds, or the connection is closed.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a client has to send a request's whole head.
HEADER_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE = 5
#: Bytes of a request's head (request line and headers).
MAX_HEAD = 64 * 1024
#: Connections and requests served at once (past it: 503).
MAX_CONNECTIONS = 64


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late."""

    _head_timer: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the route's turn
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEADER_TIMEOUT, self._late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """The bounds above as ``uvicorn.run`` keyword arguments."""
    return {
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": KEEP_ALIVE,
        "h11_max_incomplete_event_size": MAX_HEAD,
        "limit_concurrency": MAX_CONNECTIONS,
    }
