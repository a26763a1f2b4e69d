"""The splice: a connection that stopped being HTTP, raw bytes both ways.

Rules:
- A connection that opens with the HTTP/2 preface, a 101 answer, or a
  response with no length that runs until close (dockerd's 200 raw-stream
  hijack) becomes a ``Splice`` for the rest of its life.
- Bytes pass untouched; each half-close is passed on with ``write_eof``
  (the splice machine in ``states``) and the connection ends when both
  directions have.
- A client that half-closed before the splice began starts it half-closed;
  bytes the client sent past the head that started it go upstream first.

Theory of operation:
``enter`` turns the connection's request side into SPLICED and hangs a
``Splice`` on it; from then on ``Connection`` hands every read and EOF of
either side straight to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .states import CLOSED, OPEN, SHUT

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class Splice:
    """A connection that stopped being HTTP: raw bytes both ways, half-closes passed on."""

    __slots__ = ("conn", "state")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = OPEN

    def enter(self) -> None:
        """The response side is SPLICED already; the request side follows."""
        conn = self.conn
        client_shut = conn.req is CLOSED or conn.eof_held
        conn._req("splice")
        conn.eof_held = False
        conn.req_body = None
        conn.splice = self
        conn._observe_hijacked(1)
        if conn.inbuf:
            held = bytes(conn.inbuf)
            conn.inbuf.clear()
            self.from_client(held)
        conn.hold.update(0)
        if client_shut:
            self.client_eof()

    @classmethod
    def h2(cls, conn: Connection) -> None:
        """HTTP/2 with prior knowledge: the whole connection goes to the daemon as it is."""
        log.debug("HTTP/2 preface: splicing the connection to the daemon")
        conn.used = True
        conn._resp("splice")
        if conn.hub.observer is not None:
            conn.hub.observer.h2_spliced()
        cls(conn).enter()

    def from_client(self, data: bytes) -> None:
        self.conn._to_upstream(data)

    def from_daemon(self, data: bytes) -> None:
        transport = self.conn.transport
        if transport is not None:
            transport.write(data)

    def lost(self) -> None:
        """The connection is gone: a plain splice has nothing of its own to stop."""

    def client_eof(self) -> bool:
        self.state = self.conn._fire("splice", self.state, "client_eof")
        self.conn.daemon.write_eof()
        return self._still_open()

    def daemon_eof(self) -> bool:
        self.state = self.conn._fire("splice", self.state, "daemon_eof")
        transport = self.conn.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        return self._still_open()

    def _still_open(self) -> bool:
        if self.state is SHUT:
            self.conn._close()
            return False
        return True
