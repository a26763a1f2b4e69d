"""The local exchange: a request the interceptor claimed, and what its handler may do.

Rules:
- A handler reads the claimed body whole and bounded (``body``, up to
  ``BODY_LIMIT``, then forwarded as it came) or as a stream (``read``: bytes
  it has not read are held up to ``STREAM_LIMIT``, then reading pauses). A
  body a policy judges (``judged``) is never forwarded unread: past
  ``BODY_LIMIT`` before its handler's first read, it is held as a stream.
- It may make round trips to the daemon whose answers a ``Capture`` holds
  instead of forwarding them (up to ``CAPTURE_LIMIT``; a larger one goes
  to the client as it comes and counts as the answer), forward a request
  whose answer streams to the client, start one upstream and send its body
  as it reads it (``send``), and write its own answer.
- Once a handler has started the request upstream (``send``) the whole body
  goes upstream, whatever the daemon answers meanwhile: the rest of it is
  forwarded as on a plain request (``forward_rest``, or when the handler
  returns), so the daemon connection stays in step.
- The proxy answers ``100 Continue`` itself to a claimed HTTP/1.1 request
  that asks for it, on the handler's first read of the body as Go's server
  does, since the daemon sees nothing before that; the daemon's own interim
  answers to that request are then dropped, and a captured answer never
  holds one. A claimed body the client was never invited to send is not
  waited for: the connection closes after the answer.
- "Answered" has one source: the response machine has left LOCAL (the
  daemon's answer goes to the client), or the handler wrote (``wrote``).
- A handler that returns having answered nothing, with the client still
  there, found it gone: the connection is aborted. One that raises gets a
  500 if nothing was answered yet, and an abort otherwise.

Theory of operation:
``Connection`` makes an ``Exchange`` when its interceptor claims a head, and
runs the handler on it as a task (``run``). The exchange owns everything of
the local exchange (the body bytes the handler has not read, the waiter it
sleeps on, the capture, the 100-continue), and each operation a handler may
do is one method here that moves the connection's machines itself. The
connection calls back the few things its callbacks cause: body bytes
(``collect``), a body over the limit (``overflow``), a captured answer
complete or too large, and ``wake``. When the handler returns, the rule
``rules.local_done`` says what ends the exchange.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .flow import STREAM_LIMIT, Held
from .http1 import RequestHead, ResponseHead
from .rules import ABORT, ANSWER, ANSWER_CLOSE, FINISH, FORWARD_REST, local_done
from .states import CLOSED, COLLECT_BODY, LOCAL, OPEN, STREAM_BODY, guarded

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

CAPTURE_LIMIT = 1 << 22
"""A captured daemon answer larger than this is streamed to the client instead."""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Handler = Callable[["Exchange"], Awaitable[None]]


def hung_up(transport: asyncio.Transport | None) -> bool:
    """Whether the peer closed its socket, as opposed to half-closing it.

    A Unix socket shows POLLHUP only once both directions are shut.
    """
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def wants_continue(head: RequestHead) -> bool:
    """An HTTP/1.1 request with ``Expect: 100-continue`` (never answered 100 on 1.0)."""
    raw = head.raw
    line_end = raw.find(b"\n")
    if raw[:line_end].rstrip(b"\r").endswith(b"HTTP/1.0"):
        return False
    lower = raw.lower()
    i = lower.find(b"\nexpect:")
    return i >= 0 and lower[i + 8 : lower.find(b"\n", i + 8)].strip() == b"100-continue"


class Capture:
    """A daemon answer a handler holds instead of the client receiving it."""

    __slots__ = ("buf", "head", "waiter")

    def __init__(self, waiter: asyncio.Future[tuple[ResponseHead, bytes] | None]) -> None:
        self.buf = bytearray()
        self.head: ResponseHead | None = None
        self.waiter = waiter

    def settle(self, result: tuple[ResponseHead, bytes] | None) -> None:
        if not self.waiter.done():
            self.waiter.set_result(result)

    def fail(self, message: str) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(ConnectionError(message))


class Exchange:
    """One request a handler took over, and what the handler may do with it."""

    BODY_LIMIT = 1 << 20

    __slots__ = ("_conn", "capture", "collected", "continued", "expects", "head", "hub",
                 "judged", "stream", "task", "waiter", "wrote")  # fmt: skip

    def __init__(
        self, conn: Connection, head: RequestHead, expects: bool, judged: bool = False
    ) -> None:
        self._conn = conn
        self.judged = judged
        """A policy judges the body: past ``BODY_LIMIT`` it is held back, never
        forwarded unread (the handler reads it as a stream and answers 413)."""
        self.hub = conn.hub
        self.head = head
        self.task: asyncio.Task[None] | None = None
        """The handler, while it runs."""
        self.collected = bytearray()
        """The claimed body: whole (COLLECT_BODY), or what the handler has not read yet."""
        self.stream = Held(conn.reading, "stream", STREAM_LIMIT, STREAM_LIMIT // 2)
        self.waiter: asyncio.Future[None] | None = None
        """The handler waiting for body bytes, or for room on the daemon side."""
        self.expects = expects
        """The client waits for 100 Continue before its body."""
        self.continued = False
        """The proxy answered 100 Continue itself, so the daemon's interim answers go."""
        self.capture: Capture | None = None
        self.wrote = False
        """The handler wrote (part of) its own answer."""

    @property
    def answered(self) -> bool:
        """Whether the client has, or is getting, an answer that is not the handler's to write."""
        return self.wrote or self._conn.resp is not LOCAL

    # -- the handler's task -------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        conn = self._conn
        try:
            await handler(self)
        except asyncio.CancelledError:
            if conn.life is OPEN and conn.resp is LOCAL:
                # Not cancelled by the client going: nobody else will answer it.
                self.task = None
                conn.abort()
            raise
        except Exception:
            log.exception("error handling %s %s", self.head.method, self.head.path)
            if self.answered:
                self.task = None
                conn.abort()
                return
            self.fail(500, "docker-heal-proxy: internal error, see its log")
        finally:
            self.task = None
        if conn.life is OPEN:
            self._done()

    @guarded
    def _done(self) -> None:
        conn = self._conn
        action = local_done(
            conn.req, conn.resp, self.wrote, self.expects, self.continued, bool(self.collected)
        )
        if action is ABORT:
            conn.abort()
            return
        if action is FORWARD_REST:
            self.forward_rest()
        elif action is not FINISH:
            conn._resp("answer")
            if action is not ANSWER:
                conn._drop_body()  # answered without reading it all
                if action is ANSWER_CLOSE:
                    conn._close()
                    return
        conn._maybe_finish()

    # -- what the handler may do --------------------------------------------------

    async def body(self) -> bytes | None:
        """The raw request body, or None when it exceeded ``BODY_LIMIT``.

        After None the request has already been forwarded as it came and its
        answer streams to the client: the handler has nothing left to do.
        """
        conn = self._conn
        if conn.resp is not LOCAL:
            return None  # too large: forwarded as it came
        self._continue()
        while conn.req is COLLECT_BODY:
            await self._wait()
        if conn.resp is not LOCAL:
            return None  # outgrew the limit meanwhile: forwarded as it came
        # The handler owns the body now: what stays in ``collected`` is only
        # ever bytes no one has read.
        body = bytes(self.collected)
        self.collected.clear()
        return body

    async def roundtrip(self, raw: bytes) -> tuple[ResponseHead, bytes] | None:
        """Send a request to the daemon and capture its whole answer.

        None means the exchange is already answered: the daemon's answer was
        too large to hold and went to the client as it came, or the daemon
        could not be reached and the client got a 502.
        """
        conn = self._conn
        capture = Capture(asyncio.get_running_loop().create_future())
        conn._resp("roundtrip")
        self.capture = capture
        conn.resp_buf.clear()
        conn.resp_body = None
        conn._to_upstream(raw)
        try:
            return await capture.waiter
        except ConnectionError as exc:
            self.fail(502, str(exc))
            return None
        finally:
            if self.capture is capture:
                self.capture = None

    def forward(self, raw: bytes) -> None:
        """Send a request and let the daemon's answer stream to the client.

        The handler may return at once: the connection finishes the exchange
        when the answer is complete.
        """
        # A whole request of the handler's own: what is left unread of this
        # request's body is no part of it, and must not follow it upstream.
        conn = self._conn
        if conn.req is COLLECT_BODY:
            conn._drop_body()
        else:
            self.collected.clear()
        conn._send(raw)

    async def read(self) -> bytes | None:
        """The request body's next raw bytes as they arrive; b"" once it is complete.

        Unlike ``body`` nothing is held but what the handler has not read yet,
        and reading pauses while that exceeds ``STREAM_LIMIT``, so a body of
        any size streams through flat memory. The first read answers a
        waiting client's ``Expect: 100-continue``. None: the body outgrew
        ``BODY_LIMIT`` before the first read and was forwarded as it came.
        Raises ConnectionError when the client ended the body early; the
        connection then closes after the handler's answer.
        """
        conn = self._conn
        if conn.resp is not LOCAL:
            return None  # too large before the first read, or sent: forwarded
        self._continue()
        if conn.req is COLLECT_BODY:
            conn._req("stream")
        while not self.collected and conn.req is STREAM_BODY:
            await self._wait()
        if conn.req is CLOSED and conn.req_body is not None:
            conn.req_body = None
            raise ConnectionError("the client closed the connection during its request body")
        data = bytes(self.collected)
        self.discard()
        return data

    async def send(self, data: bytes) -> bool:
        """Send part of a request upstream, waiting while the daemon's side is full.

        The first call starts the request (so ``data`` begins with its head)
        and makes the daemon's answer stream to the client; from then on the
        whole body goes upstream (see ``forward_rest``). False: sending is
        over, because the daemon connection is gone (the client got a 502 if
        nothing was answered yet); the rest of the body is then discarded.
        """
        conn = self._conn
        if conn.resp is LOCAL:
            if conn.req is COLLECT_BODY:
                conn._req("stream")  # held for forward_rest, bounded, not collected
            conn._send(data)
        elif conn.up is not None and conn.life is OPEN:
            conn._to_upstream(data)
        connect = conn.daemon.connecting
        if connect is not None and not connect.done():
            await asyncio.shield(connect)
        while "daemon-full" in conn.reading.reasons and conn.up is not None and conn.life is OPEN:
            await self._wait()
        return conn.up is not None and conn.life is OPEN

    def forward_rest(self) -> None:
        """After ``send``: the body bytes not read yet, and all still to come,
        go upstream as they arrive, as on a request the proxy never claimed.

        A handler that returns without calling it gets the same.
        """
        conn = self._conn
        held = bytes(self.collected)
        self.discard()
        if conn.up is None or conn.life is not OPEN:  # never into a new daemon connection
            if conn.req is STREAM_BODY:
                conn._drop_body()
            conn.close_after = True
            return
        if held:
            conn._to_upstream(held)
        if conn.req is STREAM_BODY:
            conn._req("forward")

    def keep(self, body: bytes) -> None:
        """A body read whole (``read``) is left for the next handler's ``body``: the one a
        judging handler hands the exchange on to (the heal interceptor's)."""
        self.collected[:] = body

    def respond(self, raw: bytes) -> None:
        """Write a complete answer: a captured daemon answer, or one of ``reply``'s."""
        conn = self._conn
        if not self.answered:
            conn.status = int(raw[9:12])
            conn._observe_exchange()
        self.wrote = True
        conn._write_answer(raw)

    def reply(self, status: int, body: bytes) -> None:
        """Answer with a JSON body of the proxy's own."""
        self.respond(self._conn._reply(status, body))

    def fail(self, status: int, message: str) -> None:
        """Answer with a Docker-shaped error."""
        self.respond(self._conn._error(status, message))

    def write(self, data: bytes) -> None:
        """Write part of a streamed answer (the head first)."""
        self.respond(data)

    def refusal(self, method: str, target: str) -> str | None:
        """Why this connection's policy refuses ``method target`` outright, or None.

        For an action a handler would take on the caller's behalf (a heal):
        it must not do through the proxy what the caller could not ask for.
        """
        gate = self._conn.gate
        return None if gate is None else gate.refuses(method, target)

    @property
    def client_gone(self) -> bool:
        """Whether the client can no longer read an answer.

        EOF alone does not say so: a client may half-close and still read.
        A peer that closed its socket (or died) shows as POLLHUP on it; and a
        client paused for falling behind is not read, so its EOF never comes.
        """
        conn = self._conn
        return conn.life is not OPEN or hung_up(conn.transport)

    # -- what the connection's callbacks cause ------------------------------------

    def collect(self, data: bytes, state: str) -> None:
        """Claimed body bytes arrived, in COLLECT_BODY or STREAM_BODY."""
        self.collected += data
        if state is COLLECT_BODY:
            if len(self.collected) > self.BODY_LIMIT:
                if self.judged:
                    self._conn._req("stream")  # held, reading paused; the handler decides
                    self.wake()
                    self.stream.update(len(self.collected))
                else:
                    self._overflow()
        else:
            self.wake()
            self.stream.update(len(self.collected))

    def _overflow(self) -> None:
        """The claimed body outgrew the limit: forward it after all."""
        conn = self._conn
        conn._req("overflow")
        conn._send(self.head.raw + bytes(self.collected))
        self.collected.clear()
        self.wake()

    def discard(self) -> None:
        """Nothing of the body is held any more (read, dropped or sent on)."""
        self.collected.clear()
        self.stream.update(0)

    def captured(self, capture: Capture) -> None:
        """The round trip's answer is whole: the handler has it."""
        self.capture = None
        assert capture.head is not None
        capture.settle((capture.head, bytes(capture.buf)))

    def overflow_capture(self, capture: Capture) -> None:
        """Too large to hold: the client gets the answer as it comes, and it is counted."""
        conn = self._conn
        self.capture = None
        conn._resp("overflow")
        conn._write_answer(bytes(capture.buf))
        if capture.head is not None:
            conn.status = capture.head.status
            conn._observe_exchange()
        capture.settle(None)

    def wake(self) -> None:
        """A handler waiting in ``_wait`` looks again."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _continue(self) -> None:
        """The first read of a body whose client waits for leave to send it."""
        if self.expects and not self.continued:
            # The daemon sees nothing until the body is read, so its own
            # 100 would never come; a waiting client would stall.
            self.continued = True
            self._conn._write_answer(CONTINUE)
