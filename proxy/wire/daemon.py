"""The daemon side of a client connection: opening it, bytes waiting for it, its going.

Rules:
- Each client connection gets its own daemon connection, opened on its
  first request and kept for its life, so there is no pool to starve: 110
  event streams hold 110 daemon connections and the 111th request still
  goes straight through. A client that goes away takes its daemon
  connection with it.
- Bytes written before the daemon connection is open are held (``Held``,
  "connecting"), and so is a half-close; both go out once it opens. One
  that cannot be opened is a 502 to the client (a splice just closes).
- A daemon connection that closes, resets or talks nonsense outside a
  splice costs the client what ``rules.daemon_gone`` says; one replaced by
  a newer one moves nothing any more (its late callbacks are ignored).
- A daemon that sends bytes after a complete answer can no longer be
  trusted to frame the next one: its connection goes, and the client's
  closes after the exchange in progress.

Theory of operation:
``Upstream`` is the thin asyncio protocol of one daemon connection; every
event goes to its client ``Connection`` (answer bytes, on the plain path,
straight to ``Connection.upstream_data``) or to that connection's
``Daemon``, which owns everything about the daemon side that outlives one
transport. The connection keeps the open one as ``Connection.up``, because
the plain path writes to it on every request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from .flow import HOLD_HIGH, HOLD_LOW, Flow, Held
from .rules import CLOSE, FAIL, SAY_EOF, daemon_gone
from .states import OPEN, SEND_BODY, guarded

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class Upstream(asyncio.Protocol):
    """One daemon connection; every event goes to its owner."""

    __slots__ = ("conn", "hub", "transport")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.hub = conn.hub
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed

    @guarded
    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(data, self)

    @guarded
    def eof_received(self) -> bool:
        return self.conn.daemon.eof(self)

    @guarded
    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.daemon.lost(self)

    def pause_writing(self) -> None:
        if self is self.conn.up:  # a replaced one draining must not touch the client
            self.conn.reading.pause("daemon-full")

    def resume_writing(self) -> None:
        if self is self.conn.up:  # a replaced one draining must not touch the client
            self.conn.daemon.room()


class Daemon:
    """What one client connection knows of its daemon side, across daemon connections."""

    __slots__ = ("conn", "connecting", "held", "hub", "pending", "pending_eof", "pending_size",
                 "reading")  # fmt: skip

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.hub = conn.hub
        self.reading = Flow()
        """Why the daemon side is not read."""
        self.connecting: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []
        """Bytes written while the daemon connection is being opened."""
        self.pending_size = 0
        self.pending_eof = False
        self.held = Held(conn.reading, "connecting", HOLD_HIGH, HOLD_LOW)

    def write_when_open(self, data: bytes) -> None:
        """No daemon connection to write to: keep ``data`` for the one being opened
        (opening one if none is), as ``write_eof`` keeps a half-close."""
        self.pending.append(data)
        self.pending_size += len(data)
        self.held.update(self.pending_size)
        if self.connecting is None:
            # Held, or the loop could collect the task mid-connect.
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        path = self.hub.upstream_path
        try:
            _, up = await loop.create_unix_connection(lambda: Upstream(conn), path)
        except OSError as exc:
            # Before answering: the 502 may let a pipelined request start, and
            # that one must open a connection of its own, not wait for this one.
            self.connecting = None
            reason = exc.strerror or str(exc)
            self._failed(f"cannot reach the Docker daemon at {path}: {reason}")
            return
        self.connecting = None
        assert up.transport is not None
        if conn.life is not OPEN:
            up.transport.close()
            return
        conn.up = up
        self.reading.attach(up.transport)
        pending, self.pending, self.pending_size = self.pending, [], 0
        up.transport.writelines(pending)
        self.held.update(0)
        if self.pending_eof:
            self.write_eof()

    @guarded
    def _failed(self, message: str) -> None:
        conn = self.conn
        self.pending.clear()
        self.pending_size = 0
        self.pending_eof = False
        self.held.update(0)
        conn._observe_upstream_error("connect")
        log.warning("%s", message)
        if conn.splice is not None:
            conn._close()  # a raw stream has no 502 to give: only a close says it failed
            return
        conn._fail_answer(502, message)

    def write_eof(self) -> None:
        """Pass a half-close on, now or once the connection being opened is."""
        up = self.conn.up
        if up is None:
            self.pending_eof = self.connecting is not None
        elif up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()

    def close(self) -> None:
        conn = self.conn
        up, conn.up = conn.up, None
        self.reading.attach(None)
        if up is not None and up.transport is not None:
            up.transport.close()
        self.room()

    def room(self) -> None:
        """The daemon side can take bytes again, or is gone: whoever waited may go on."""
        self.conn.reading.resume("daemon-full")
        self.conn._wake()

    # -- the daemon going, or going wrong ---------------------------------------

    def eof(self, up: Upstream) -> bool:
        conn = self.conn
        if up is not conn.up:
            return False
        if conn.splice is not None:
            return conn.splice.daemon_eof()
        self._gone()
        return False

    def lost(self, up: Upstream) -> None:
        conn = self.conn
        if up is not conn.up:
            return
        if conn.splice is not None:
            conn.up = None
            conn._close()
        else:
            self._gone()

    def _gone(self) -> None:
        """The daemon closed or reset our connection outside a splice."""
        conn = self.conn
        conn.up = None
        self.reading.attach(None)
        self.room()
        drop, action = daemon_gone(conn.req, conn.resp, bool(conn.resp_buf))
        if drop:
            conn._drop_body()
            conn.close_after = True
        if action is SAY_EOF:
            transport = conn.transport
            if transport is not None and transport.can_write_eof():
                transport.write_eof()
        elif action is CLOSE or action is FAIL:
            conn._observe_upstream_error("closed")
            if action is CLOSE:
                conn._close()
            else:
                conn._fail_answer(502, "the Docker daemon closed the connection before answering")

    def broken(self, reason: str) -> None:
        """The daemon's answer went bad after its head was passed on: cut both sides."""
        conn = self.conn
        conn._observe_upstream_error("protocol")
        log.warning("the daemon sent an unreadable response body: %s", reason)
        if conn.local is not None and conn.local.capture is not None:
            self.close()
            conn._fail_answer(502, reason)
            return
        conn.abort()

    def garbage(self, reason: str) -> None:
        """Nothing of the answer reached the client yet, so it gets a 502 instead."""
        conn = self.conn
        conn._observe_upstream_error("protocol")
        message = f"the Docker daemon sent an unreadable response: {reason}"
        log.warning("%s", message)
        self.close()
        conn.close_after = True
        conn._fail_answer(502, message)

    def surplus(self, size: int) -> None:
        """Bytes after a complete answer: the daemon's framing can no longer be trusted.

        What was answered stands; the daemon connection goes, so the next
        request cannot be answered with these bytes, and the client's
        connection ends after the exchange in progress.
        """
        conn = self.conn
        conn._observe_upstream_error("protocol")
        log.warning("the Docker daemon sent %d bytes after a complete answer", size)
        self.close()
        conn.close_after = True
        if conn.req is SEND_BODY:
            conn._req("drop")  # the rest must not reach a new daemon connection
