"""The data path: one client connection spliced to one daemon connection.

Rules:
- Bytes pass through untouched in both directions. Heads are parsed only to
  frame bodies (``http1``) and to decide whether a request is one the proxy
  must look at; what is forwarded is always the original bytes.
- Each client connection gets its own upstream connection, opened on its
  first request and kept for its life, so there is no pool to starve: 110
  event streams hold 110 daemon connections and the 111th request still goes
  straight through. A client that goes away takes its upstream with it.
- One exchange at a time per connection. Bytes of a pipelined next request
  are held until the current response is complete; that keeps the daemon's
  answers in order and lets an intercepted request be replayed safely.
- Flow control is end to end and per side: a side whose outgoing buffer is
  full pauses reading on the other side, and the reasons a side is paused
  outlive the transport, so a replacement daemon connection starts paused
  when the client is not reading. Bytes held for later (pipelined requests,
  requests written while the daemon connection is still being opened) pause
  the client at a high water mark and resume it only below a low one, so
  reading does not flap around a single threshold.
- Every change of state is a row of the tables in ``states``. An event with
  no row is a bug in the proxy: it is logged and that one connection is
  aborted (``Hub.strict``, set by the tests, raises instead). Nothing is
  dropped silently.
- A connection that opens with the HTTP/2 preface, a 101 answer, or a
  response with no length that runs until close (dockerd's 200 raw-stream
  hijack) becomes a raw ``Splice``. From then on each half-close is passed on
  with ``write_eof`` and the connection ends when both directions have.
- A client that closes its socket (not just its sending half) is noticed as
  soon as its EOF is read: nobody will read an answer, so the connection is
  aborted, its handler cancelled (a heal it waits for goes on: the healer
  shields it), and nothing is replayed for it. While reading is paused the EOF
  waits behind the unread bytes; in a splice it is a half-close, passed on.
- The proxy answers ``100 Continue`` itself to a claimed HTTP/1.1 request
  that asks for it, on the handler's first read of the body as Go's server
  does, since the daemon sees nothing before that; the daemon's own interim
  answers to that request are then dropped, and a captured answer never
  holds one. A claimed body the client was never invited to send is not
  waited for: the connection closes after the answer. Interim answers are
  never an exchange's status.
- A handler may read a claimed body as a stream instead of whole: bytes it
  has not read yet are held up to ``STREAM_LIMIT``, then reading pauses
  ("stream" in the client side's ``Flow``). Once a handler has started the
  request upstream (``send``) the whole body goes upstream, whatever the
  daemon answers meanwhile: the rest of it is forwarded as on a plain
  request (``forward_rest``, or by the connection when the handler returns),
  so the daemon connection stays in step.

Theory of operation:
``Connection`` is the asyncio protocol of the client side; ``Upstream`` is a
thin protocol for the daemon side that calls back into it. A connection has
two machines, because a request and its answer overlap (a daemon may answer
before a body ends): the *request* side follows what the client sends, the
*response* side follows what the client is owed. A request head either
starts a *plain* exchange (head and body written upstream as they arrive, the
answer written back as it arrives) or, when the ``Hub``'s interceptor claims
it, a *local* exchange run by a coroutine through an ``Exchange`` handle: it
may read the body (whole and bounded, or as a stream), make round trips to
the daemon whose answers a ``Capture`` holds instead of forwarding them, and
write its own answer. The exchange is over when both sides are DONE (and no
handler runs); ``next`` takes both back to IDLE and held bytes are read. The
plain path is plain callbacks without tasks or futures, because that is what
keeps a keep-alive ``GET /_ping`` within a few microseconds of the daemon's
own time.

Two short paths take the commonest exchange through the same tables with
less work: a read that is exactly a head parsed before (``http1`` remembers
heads by their bytes), arriving while both sides are IDLE and nothing is
held, starts its exchange without a search, a parse or a copy; and an answer
that is final, whole in one read and not captured (``_whole_answer``) is
written to the client before it is counted, so on two cores the client reads
while the proxy counts it. Anything else, or anything in doubt, takes the
general path.

The four machines (request, response, splice, life) and their tables are in
``states``; which callback fires which event is here.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from . import errors
from .http1 import (
    MAX_HEAD,
    Body,
    ProtocolError,
    RequestHead,
    ResponseHead,
    UntilCloseBody,
    find_head_end,
    known_request_head,
    parse_request_head,
    parse_response_head,
    partial_head_fault,
    request_body,
    response_body,
    response_length,
)
from .states import (
    AWAIT_HEAD,
    BODY,
    CAPTURE_BODY,
    CAPTURE_HEAD,
    CLOSED,
    COLLECT_BODY,
    DONE,
    IDLE,
    LOCAL,
    MACHINES,
    OPEN,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    SHUT,
    SPLICED,
    STREAM_BODY,
    InvalidTransition,
)

log = logging.getLogger(__name__)

HOLD_HIGH = 1 << 18
"""Client bytes held (pipelined, or waiting for a daemon connection) before reading pauses."""
HOLD_LOW = HOLD_HIGH // 2
"""Held bytes below which a client paused for holding reads again."""

CAPTURE_LIMIT = 1 << 22
"""A captured daemon answer larger than this is streamed to the client instead."""

STREAM_LIMIT = 1 << 20
"""Request body bytes a handler reading a stream may fall behind before reading pauses."""

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Handler = Callable[["Exchange"], Awaitable[None]]


class Interceptor(Protocol):
    def claim(self, head: RequestHead) -> Handler | None:
        """The coroutine that takes this request over, or None to forward it."""


class Observer(Protocol):
    """Where the data path reports what it saw; the metrics module implements it."""

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None: ...
    def upstream_error(self, kind: str) -> None: ...
    def hijacked(self, delta: int) -> None: ...
    def h2_spliced(self) -> None: ...


class Hub:
    """What every connection of one listener shares."""

    def __init__(
        self,
        upstream_path: str,
        interceptor: Interceptor | None = None,
        observer: Observer | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.upstream_path = upstream_path
        self.interceptor = interceptor
        self.observer = observer
        self.strict = strict
        """Raise on an impossible event instead of logging it (tests)."""
        self.connections: set[Connection] = set()
        self.closing = False
        self.idle = asyncio.Event()
        self.idle.set()

    def register(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.idle.clear()

    def unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.idle.set()

    def shut_down(self) -> None:
        """Stop new exchanges: idle and hijacked connections close now, busy ones after."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_when_idle()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class Upstream(asyncio.Protocol):
    """The daemon side of one client connection; every event goes to its owner."""

    __slots__ = ("conn", "transport")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.upstream_data(data, self)
        except InvalidTransition:
            if self.conn.hub.strict:
                raise

    def eof_received(self) -> bool:
        try:
            return self.conn.upstream_eof(self)
        except InvalidTransition:
            if self.conn.hub.strict:
                raise
            return False

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.conn.upstream_lost(self)
        except InvalidTransition:
            if self.conn.hub.strict:
                raise

    def pause_writing(self) -> None:
        if self is self.conn.up:  # a replaced one draining must not touch the client
            self.conn.reading.pause("daemon-full")

    def resume_writing(self) -> None:
        if self is self.conn.up:  # a replaced one draining must not touch the client
            self.conn.daemon_room()


class Flow:
    """Why one side's reading is paused; outlives the transport it applies to."""

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.reasons: set[str] = set()
        self.transport: asyncio.Transport | None = None

    def attach(self, transport: asyncio.Transport | None) -> None:
        """A new transport (or none) for this side; it starts paused if reasons remain."""
        self.transport = transport
        if transport is not None and self.reasons:
            transport.pause_reading()

    def pause(self, reason: str) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None:
            self.transport.resume_reading()


def _hung_up(transport: asyncio.Transport | None) -> bool:
    """Whether the peer closed its socket, as opposed to half-closing it.

    A Unix socket shows POLLHUP only once both directions are shut.
    """
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _wants_continue(head: RequestHead) -> bool:
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


class Splice:
    """A connection that stopped being HTTP: raw bytes both ways, half-closes passed on."""

    __slots__ = ("conn", "state")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = OPEN

    def from_client(self, data: bytes) -> None:
        self.conn._to_upstream(data)

    def from_daemon(self, data: bytes) -> None:
        transport = self.conn.transport
        if transport is not None:
            transport.write(data)

    def client_eof(self) -> bool:
        self.state = self.conn._fire("splice", self.state, "client_eof")
        self.conn._up_write_eof()
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


class Connection(asyncio.Protocol):
    """The client side of one connection, and the owner of its daemon side.

    All state of the exchange in progress lives here, so that the plain
    path runs as callbacks without a task per request.
    """

    __slots__ = (
        "capture", "close_after", "collected", "connect_task", "continued", "eof_pending",
        "expects", "head", "hub", "inbuf", "life", "pending_eof", "pending_size", "pending_up",
        "reading", "req", "req_body", "resp", "resp_body", "resp_buf", "scanned", "splice",
        "started", "status", "task", "transport", "up", "up_reading", "used", "waiter",
    )  # fmt: skip

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.life = OPEN
        self.req = IDLE
        self.resp = IDLE
        self.used = False
        self.inbuf = bytearray()
        self.scanned = 0
        """Where in ``inbuf`` the search for the end of a head goes on: a line start."""
        self.eof_pending = False
        """The client half-closed; the EOF is read once the held bytes are."""
        self.reading = Flow()
        """Why the client side is not read."""
        self.up_reading = Flow()
        """Why the daemon side is not read."""
        self.up: Upstream | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.pending_up: list[bytes] = []
        self.pending_size = 0
        self.pending_eof = False
        self.splice: Splice | None = None
        # The current exchange.
        self.head: RequestHead | None = None
        self.started = 0.0
        self.close_after = False
        self.expects = False
        """A claimed request's client waits for 100 Continue before its body."""
        self.continued = False
        """The proxy answered 100 Continue itself, so the daemon's interim answers go."""
        self.req_body: Body | None = None
        self.collected = bytearray()
        """A claimed body: whole (COLLECT_BODY), or what the handler has not read yet."""
        self.waiter: asyncio.Future[None] | None = None
        """A handler waiting for body bytes, or for room on the daemon side."""
        self.task: asyncio.Task[None] | None = None
        # The answer in progress.
        self.status = 0
        self.resp_buf = bytearray()
        self.resp_body: Body | None = None
        self.capture: Capture | None = None

    # -- the table ---------------------------------------------------------

    def _fire(self, machine: str, state: str, event: str) -> str:
        """The state after ``event``; an event with no row aborts this connection."""
        try:
            return MACHINES[machine][state][event]
        except KeyError:
            pass
        error = InvalidTransition(f"{machine} side: no {event!r} in state {state}")
        log.error("%s; aborting the connection", error)
        self.abort()
        raise error

    def _req(self, event: str) -> None:
        try:
            self.req = REQUEST[self.req][event]
        except KeyError:
            self._fire("request", self.req, event)

    def _resp(self, event: str) -> None:
        try:
            self.resp = RESPONSE[self.resp][event]
        except KeyError:
            self._fire("response", self.resp, event)

    # -- client side -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed
        self.reading.attach(self.transport)
        self.hub.register(self)

    def data_received(self, data: bytes) -> None:
        try:
            if self.req is IDLE and not self.inbuf and self.used and self.life is OPEN:
                # The usual request, kept short: a head seen before, whole in
                # this read, with nothing held. No search, no parse, no copy.
                head = known_request_head(data)
                if head is not None:
                    self._start(head)
                    return
            if self.splice is not None:
                self.splice.from_client(data)
                return
            body = self.req_body
            if body is not None and not self.inbuf and not self.eof_pending:
                # Mid-body (an upload, a build context): the bytes go on as they
                # came, not copied through ``inbuf``. Two fresh copies of every
                # read tripled the proxy's CPU per uploaded byte.
                try:
                    n = body.feed(data)
                except ProtocolError as exc:
                    self._bad_framing(exc)
                    return
                self._body_bytes(data if n == len(data) else data[:n])
                if not body.done:
                    return
                self._body_done()
                data = data[n:]
                if not data or self.life is not OPEN:
                    return
            self.inbuf += data
            self._pump()
        except InvalidTransition:
            if self.hub.strict:
                raise

    def eof_received(self) -> bool:
        try:
            if self.splice is not None:
                return self.splice.client_eof()
            if _hung_up(self.transport):
                # Closed, not half-closed: nobody will read an answer. Free the
                # daemon connection now, or an endless stream (events, logs -f)
                # would hold it for as long as the daemon stays quiet; a handler
                # waiting for a heal is cancelled (the heal goes on) and does
                # not replay a create nobody would start.
                self.abort()
                return False
            self.eof_pending = True
            self._pump()
        except InvalidTransition:
            if self.hub.strict:
                raise
            return False
        return self.life is OPEN

    def connection_lost(self, exc: Exception | None) -> None:
        self.life = self._fire("life", self.life, "lost")
        if self.splice is not None:
            self._observe_hijacked(-1)
        if self.task is not None:
            self.task.cancel()
        self.reading.attach(None)
        self._close_upstream()
        self.hub.unregister(self)

    def pause_writing(self) -> None:
        self.up_reading.pause("client-full")

    def resume_writing(self) -> None:
        self.up_reading.resume("client-full")

    def close_when_idle(self) -> None:
        """Shutdown: hijacks end now, busy or brand-new connections after one exchange.

        A connection accepted but not yet read from has a client about to send
        its first request, and clients do not retry a request on a fresh
        connection that closes unanswered; it gets its answer, bounded by the
        shutdown timeout. An idle kept-alive connection is closed at once,
        which clients do expect and retry.
        """
        if self.splice is not None:
            self.abort()
        elif self.req is not IDLE or self.resp is not IDLE or not self.used:
            self.close_after = True
        else:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close_upstream()

    def _close(self) -> None:
        if self.life is not OPEN:
            return
        self.life = self._fire("life", self.life, "close")
        if self.transport is not None:
            self.transport.close()
        self._close_upstream()

    # -- requests ----------------------------------------------------------

    def _pump(self) -> None:
        """Consume buffered client bytes: the current body, then the next head."""
        try:
            self._consume()
        except ProtocolError as exc:
            self._bad_framing(exc)

    def _bad_framing(self, exc: ProtocolError) -> None:
        """A body whose framing makes no sense."""
        if self.status or self.resp is SPLICED:
            self.abort()  # an answer is under way; a 400 would corrupt it
        else:
            self._reject(400, f"bad request: {exc}")

    def _consume(self) -> None:
        buf = self.inbuf
        while buf and self.life is OPEN:
            state = self.req
            if state is IDLE:
                if not self.used and buf[:24] == H2_PREFACE[: len(buf)]:
                    if len(buf) < len(H2_PREFACE):
                        break  # maybe the preface: wait for the rest of it
                    self._splice_h2()
                    return
                end = find_head_end(buf, self.scanned)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._reject(431, "request header fields too large")
                        return
                    # A head ends at an empty line, so the next search can
                    # start at the last line start: a head arriving in many
                    # reads is searched once, not once per read from 0. The
                    # lines passed are whole, and judged now, as Go would.
                    scanned = max(self.scanned, buf.rfind(b"\n", self.scanned) + 1)
                    fault = partial_head_fault(buf, self.scanned, scanned)
                    if fault is not None:
                        self._reject(400, f"bad request: {fault}")
                        return
                    self.scanned = scanned
                    break
                self.scanned = 0
                raw = bytes(buf[:end])
                del buf[:end]
                try:
                    head = parse_request_head(raw)
                except ProtocolError as exc:
                    self._reject(400, f"bad request: {exc}")
                    return
                self._start(head)
                continue
            body = self.req_body
            if body is None:
                break  # DONE: held until the exchange is over
            n = body.feed(buf)
            if n:
                data = bytes(buf[:n])
                del buf[:n]
                self._body_bytes(data)
            if not body.done:
                break
            self._body_done()
        if self.life is not OPEN:
            return
        # Bytes are held only while an exchange is in progress. A head still
        # arriving is bounded by MAX_HEAD (431), not held: pausing it would
        # wait forever for the rest of a head over HOLD_HIGH.
        if len(buf) > HOLD_HIGH and self.req is not IDLE:
            self.reading.pause("hold")
        elif self.reading.reasons and (len(buf) < HOLD_LOW or self.req is IDLE):
            self.reading.resume("hold")
        if self.eof_pending and (not buf or self.req is IDLE):
            self.eof_pending = False
            self._client_eof()

    def _client_eof(self) -> None:
        """The client will send nothing more; what that means depends on where it stopped."""
        state = self.req
        self._req("eof")
        if state is IDLE:
            self._close()  # between requests, or in a head that will never end
        elif state is COLLECT_BODY or (state is STREAM_BODY and self.resp is not LOCAL):
            # A claimed request whose body will never be whole: nothing of it
            # went upstream and no answer can come, or the request the handler
            # started upstream can only end broken.
            self.abort()
        elif state is STREAM_BODY:
            # The handler's next read fails and says so; its answer ends the connection.
            self.close_after = True
            self._wake()
        elif self.resp is DONE:
            self._maybe_finish()
        elif state is SEND_BODY or self.resp in (AWAIT_HEAD, BODY):
            # Pass the half-close on, as a direct client's would reach dockerd:
            # it ends a stream this client will never close fully in a way we
            # could see, having stopped reading it. Not during a local exchange:
            # a heal's replay must still reach the daemon.
            self._up_write_eof()

    def _reject(self, status: int, message: str) -> None:
        if self.transport is not None and self.life is OPEN:
            self.transport.write(errors.error(status, message, close=True))
        self.inbuf.clear()
        self._close()

    def _start(self, head: RequestHead) -> None:
        self.used = True
        self.head = head
        self.started = time.perf_counter()
        self.close_after = self.close_after or head.close or self.hub.closing
        self.status = 0
        self.expects = self.continued = False
        body = request_body(head) if head.chunked or head.content_length else None
        interceptor = self.hub.interceptor
        handler = None if interceptor is None else interceptor.claim(head)
        if handler is None:
            # The head and as much of the body as has arrived go in one write:
            # each write wakes the daemon, and a create's body comes with its head.
            data = head.raw
            if body is not None:
                self._req("head")
                self.req_body = body
                if self.inbuf:
                    n = body.feed(self.inbuf)
                    data += bytes(self.inbuf[:n])
                    del self.inbuf[:n]
            else:
                self._req("complete")
            self._send(data)
            if body is not None and body.done:
                self._body_done()
            return
        self._resp("claim")
        self.collected.clear()
        if body is not None:
            self._req("claim")
            self.req_body = body
            self.expects = _wants_continue(head)
        else:
            self._req("complete")
        self.task = asyncio.get_running_loop().create_task(self._run_local(handler))

    def _body_bytes(self, data: bytes) -> None:
        state = self.req
        if state is SEND_BODY:
            self._to_upstream(data)
        elif state is COLLECT_BODY:
            self.collected += data
            if len(self.collected) > Exchange.BODY_LIMIT:
                self._overflow()
        elif state is STREAM_BODY:
            self.collected += data
            self._wake()
            if len(self.collected) > STREAM_LIMIT:
                self.reading.pause("stream")

    def _body_done(self) -> None:
        state = self.req
        self._req("body_end")
        self.req_body = None
        if state is COLLECT_BODY or state is STREAM_BODY:
            self._wake()
        # A handler that forwarded or failed before reading the body has
        # left, and only this can end the exchange.
        self._maybe_finish()

    def _drop_body(self) -> None:
        """The rest of this request's body is read and thrown away."""
        self._req("drop")
        self.collected.clear()
        self.reading.resume("stream")

    def _wake(self) -> None:
        """A streaming handler waiting in ``_wait`` looks again."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _overflow(self) -> None:
        """A claimed request's body outgrew the limit: forward it after all."""
        assert self.head is not None
        self._req("overflow")
        self._send(self.head.raw + bytes(self.collected))
        self.collected.clear()
        self._wake()

    def _send(self, raw: bytes) -> None:
        """Write a request upstream and expect its answer on the client."""
        self._resp("send")
        self.resp_buf.clear()
        self.resp_body = None
        self._to_upstream(raw)

    # -- upstream ----------------------------------------------------------

    def _to_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
            return
        self.pending_up.append(data)
        self.pending_size += len(data)
        if self.pending_size > HOLD_HIGH:
            self.reading.pause("connecting")
        if self.connect_task is None:
            # Held, or the loop could collect the task mid-connect.
            self.connect_task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.hub.upstream_path
        try:
            _, up = await loop.create_unix_connection(lambda: Upstream(self), path)
        except OSError as exc:
            # Before answering: the 502 may let a pipelined request start, and
            # that one must open a connection of its own, not wait for this one.
            self.connect_task = None
            reason = exc.strerror or str(exc)
            try:
                self._upstream_failed(f"cannot reach the Docker daemon at {path}: {reason}")
            except InvalidTransition:
                if self.hub.strict:
                    raise
            return
        self.connect_task = None
        assert up.transport is not None
        if self.life is not OPEN:
            up.transport.close()
            return
        self.up = up
        self.up_reading.attach(up.transport)
        pending, self.pending_up, self.pending_size = self.pending_up, [], 0
        up.transport.writelines(pending)
        self.reading.resume("connecting")
        if self.pending_eof:
            self._up_write_eof()

    def _upstream_failed(self, message: str) -> None:
        self.pending_up.clear()
        self.pending_size = 0
        self.pending_eof = False
        self.reading.resume("connecting")
        self._observe_upstream_error("connect")
        log.warning("%s", message)
        if self.splice is not None:
            self._close()  # a raw stream has no 502 to give: only a close says it failed
            return
        self._fail_answer(502, message)

    def _fail_answer(self, status: int, message: str) -> None:
        """The daemon will not answer: a round trip fails, or the client gets ``status``."""
        state = self.resp
        if state is CAPTURE_HEAD or state is CAPTURE_BODY:
            capture, self.capture = self.capture, None
            self._resp("fail")
            if capture is not None:
                capture.fail(message)
            return
        if state is not AWAIT_HEAD:
            return  # nothing owed by the daemon (a splice ends by itself)
        if self.req is SEND_BODY or self.req is STREAM_BODY:
            self._drop_body()
        self._resp("fail")
        self._write_answer(self.local_error(status, message))
        self.status = status
        self._observe_exchange()
        self._maybe_finish()

    def _head_only(self) -> bool:
        return self.head is not None and self.head.method == "HEAD"

    def _write_answer(self, raw: bytes) -> None:
        if self.transport is not None and self.life is OPEN:
            self.transport.write(raw)

    def upstream_data(self, data: bytes, up: Upstream) -> None:
        if up is not self.up:
            return
        if self.splice is not None:
            self.splice.from_daemon(data)
            return
        state = self.resp
        if state is BODY or state is CAPTURE_BODY:
            body = self.resp_body
            assert body is not None
            try:
                n = body.feed(data)
            except ProtocolError as exc:
                self._upstream_broken(str(exc))
                return
            self._to_client(data[:n] if n < len(data) else data)
            if body.done:
                if n < len(data):
                    self._upstream_surplus(len(data) - n)
                self._response_done()
        elif state is AWAIT_HEAD or state is CAPTURE_HEAD:
            if self.resp_buf:
                self.resp_buf += data
                self._response_head(self.resp_buf)
            else:
                self._response_head(data)  # the usual case: no copy
        else:
            self._upstream_surplus(len(data))
            self.close_when_idle()

    def _whole_answer(self, head: ResponseHead, data: bytes, end: int) -> bool:
        """The usual answer, kept short: final, whole in this one read, and not captured.

        Anything else (an interim answer, a stream, a body still to come,
        bytes past its end) goes on through ``_response_head``.
        """
        assert self.head is not None
        if self.capture is not None or head.status < 200:
            return False
        if response_length(head, self.head.method) != len(data) - end:
            return False
        self.status = head.status
        if head.close:
            self.close_after = True
        self._resp("complete")
        # The client first, the counting after: on two cores the client reads
        # its answer while this finishes.
        self._write_answer(data)
        self._observe_exchange()
        self._maybe_finish()
        return True

    def _response_head(self, buf: bytes | bytearray) -> None:
        """Parse the answer's head from ``buf``: ``resp_buf``, or a fresh chunk.

        A fresh chunk that holds a whole head is parsed and passed on without
        being copied into ``resp_buf`` first.
        """
        start = 0
        while True:
            end = find_head_end(buf, start)
            if end < 0:
                if len(buf) - start > MAX_HEAD:
                    self._upstream_garbage("response head too large")
                elif buf is self.resp_buf:
                    del self.resp_buf[:start]
                else:
                    self.resp_buf += buf[start:]
                return
            try:
                head = parse_response_head(bytes(buf[start:end]))
            except ProtocolError as exc:
                self._upstream_garbage(str(exc))
                return
            if start == 0 and isinstance(buf, bytes) and self._whole_answer(head, buf, end):
                return
            if head.status == 101:
                if self.capture is not None:
                    self._upstream_garbage("101 Switching Protocols to a request under check")
                    return
                self.status = 101
                self._observe_exchange()
                rest = bytes(buf[start:])
                self.resp_buf.clear()
                self._resp("splice")
                self._write_answer(rest)
                self._enter_splice()
                return
            if head.status >= 200:
                break
            # 100 Continue and friends: the final answer follows. The client
            # already had the proxy's own 100, or its answer is being captured.
            self._resp("interim")
            if self.capture is None and not self.continued:
                self._write_answer(bytes(buf[start:end]))
            start = end
        assert self.head is not None
        capture = self.capture
        body = response_body(head, self.head.method)
        raw_stream = isinstance(body, UntilCloseBody) and capture is None
        try:
            n = 0 if raw_stream else body.feed(buf, end)
        except ProtocolError as exc:
            self._upstream_garbage(str(exc))
            return
        self.status = head.status
        if head.close:
            self.close_after = True
        stop = len(buf) if raw_stream else end + n
        whole = start == 0 and stop == len(buf) and type(buf) is bytes  # a fresh chunk: no copy
        out = cast(bytes, buf) if whole else bytes(buf[start:stop])
        self.resp_buf.clear()  # after the slice: ``buf`` may be this very buffer
        if capture is None:
            self._observe_exchange()
        else:
            capture.head = head  # the handler's answer is what gets counted
        if raw_stream:
            self._resp("splice")
            self._write_answer(out)
            self._enter_splice()
            return
        if body.done:
            self._resp("complete")
            if stop < len(buf):
                self._upstream_surplus(len(buf) - stop)
            if capture is None:
                self._write_answer(out)
            else:
                capture.buf += out  # a whole answer in one read: never over the limit
            self._answer_complete()
        else:
            self._resp("head")
            self.resp_body = body
            self._to_client(out)

    def _upstream_broken(self, reason: str) -> None:
        """The daemon's answer went bad after its head was passed on: cut both sides."""
        self._observe_upstream_error("protocol")
        log.warning("the daemon sent an unreadable response body: %s", reason)
        if self.capture is not None:
            self._close_upstream()
            self._fail_answer(502, reason)
            return
        self.abort()

    def _upstream_garbage(self, reason: str) -> None:
        """Nothing of the answer reached the client yet, so it gets a 502 instead."""
        self._observe_upstream_error("protocol")
        message = f"the Docker daemon sent an unreadable response: {reason}"
        log.warning("%s", message)
        self._close_upstream()
        self.close_after = True
        self._fail_answer(502, message)

    def _upstream_surplus(self, size: int) -> None:
        """Bytes after a complete answer: the daemon's framing can no longer be trusted.

        What was answered stands; the daemon connection goes, so the next
        request cannot be answered with these bytes, and the client's
        connection ends after the exchange in progress.
        """
        self._observe_upstream_error("protocol")
        log.warning("the Docker daemon sent %d bytes after a complete answer", size)
        self._close_upstream()
        self.close_after = True
        if self.req is SEND_BODY:
            self._req("drop")  # the rest must not reach a new daemon connection

    def _to_client(self, data: bytes) -> None:
        capture = self.capture
        if capture is None:
            if self.transport is not None:
                self.transport.write(data)
            return
        capture.buf += data
        if len(capture.buf) > CAPTURE_LIMIT:
            self._overflow_capture(capture)

    def _overflow_capture(self, capture: Capture) -> None:
        """Too large to hold: the client gets the answer as it comes, and it is counted."""
        self.capture = None
        self._resp("overflow")
        self._write_answer(bytes(capture.buf))
        if capture.head is not None:
            self.status = capture.head.status
            self._observe_exchange()
        capture.settle(None)

    def _response_done(self) -> None:
        self._resp("body_end")
        self._answer_complete()

    def _answer_complete(self) -> None:
        self.resp_body = None
        capture = self.capture
        if capture is not None:
            self.capture = None
            assert capture.head is not None
            capture.settle((capture.head, bytes(capture.buf)))
            return
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """On to the next request once both sides are done and no handler runs."""
        if self.resp is not DONE or self.task is not None or self.life is not OPEN:
            return
        req = self.req
        if req is CLOSED:
            self._close()
        elif req is DONE:
            self._req("next")
            self._resp("next")
            self.head = None
            if self.close_after:
                self._close()
            elif self.inbuf or self.eof_pending:
                self._pump()

    def upstream_eof(self, up: Upstream) -> bool:
        if up is not self.up:
            return False
        if self.splice is not None:
            return self.splice.daemon_eof()
        self._upstream_gone()
        return False

    def upstream_lost(self, up: Upstream) -> None:
        if up is not self.up:
            return
        if self.splice is not None:
            self.up = None
            self._close()
        else:
            self._upstream_gone()

    def _upstream_gone(self) -> None:
        """The daemon closed or reset our connection outside a splice."""
        self.up = None
        self.up_reading.attach(None)
        self.daemon_room()
        if self.req is SEND_BODY or (self.req is STREAM_BODY and self.resp is not LOCAL):
            # The rest of this body must not reach a new daemon connection,
            # where it would be read as a request of its own.
            self._drop_body()
            self.close_after = True
            if self.resp is DONE and self.transport is not None:
                # Answered already. Say so with EOF, as Go's server does, and
                # drain the rest: a close with unread bytes would reset the
                # socket and could cost the client the answer.
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                return
        state = self.resp
        if state is IDLE or state is LOCAL or state is DONE:
            return  # nothing owed; the next request reconnects
        self._observe_upstream_error("closed")
        message = "the Docker daemon closed the connection before answering"
        if (state is AWAIT_HEAD and self.resp_buf) or state is BODY:
            self._close()  # part of the answer is out: only a close says it broke
        else:
            self._fail_answer(502, message)

    def _close_upstream(self) -> None:
        up, self.up = self.up, None
        self.up_reading.attach(None)
        if up is not None and up.transport is not None:
            up.transport.close()
        self.daemon_room()

    def daemon_room(self) -> None:
        """The daemon side can take bytes again, or is gone: whoever waited may go on."""
        self.reading.resume("daemon-full")
        self._wake()

    def _up_write_eof(self) -> None:
        up = self.up
        if up is None:
            self.pending_eof = self.connect_task is not None
        elif up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()

    # -- splice ------------------------------------------------------------

    def _splice_h2(self) -> None:
        """HTTP/2 with prior knowledge: the whole connection goes to the daemon as it is."""
        log.debug("HTTP/2 preface: splicing the connection to the daemon")
        self.used = True
        self._resp("splice")
        if self.hub.observer is not None:
            self.hub.observer.h2_spliced()
        self._enter_splice()

    def _enter_splice(self) -> None:
        client_shut = self.req is CLOSED or self.eof_pending
        self._req("splice")
        self.eof_pending = False
        self.req_body = None
        self.splice = Splice(self)
        self._observe_hijacked(1)
        if self.inbuf:
            held = bytes(self.inbuf)
            self.inbuf.clear()
            self._to_upstream(held)
        self.reading.resume("hold")
        if client_shut:
            self.splice.client_eof()

    # -- local exchanges ---------------------------------------------------

    async def _run_local(self, handler: Handler) -> None:
        assert self.head is not None
        exchange = Exchange(self, self.head)
        try:
            await handler(exchange)
        except asyncio.CancelledError:
            if self.life is OPEN and self.resp is LOCAL:
                # Not cancelled by the client going: nobody else will answer it.
                self.task = None
                self.abort()
            raise
        except Exception:
            log.exception("error handling %s %s", self.head.method, self.head.path)
            if exchange.answered or self.resp is not LOCAL:
                self.task = None
                self.abort()
                return
            exchange.fail(500, "docker-heal-proxy: internal error, see its log")
        finally:
            self.task = None
        if self.life is not OPEN:
            return
        try:
            self._local_done(exchange.answered)
        except InvalidTransition:
            if self.hub.strict:
                raise

    def _local_done(self, answered: bool) -> None:
        if self.resp is LOCAL:
            if not answered:  # it found the client gone
                self.abort()
                return
            self._resp("answer")
            if self.req is COLLECT_BODY or self.req is STREAM_BODY:
                uninvited = self.expects and not self.continued
                self._drop_body()  # answered without reading it all
                if uninvited:
                    # The client waits for a 100 that will not come, and may
                    # never send the body: end the connection, as Go does.
                    self._close()
                    return
        elif self.req is STREAM_BODY or self.collected:
            # The handler started the request upstream: all of its body goes
            # there, even when the daemon has answered already.
            self.local_forward_rest()
        self._maybe_finish()

    # -- what a handler may do (through ``Exchange``) --------------------------

    def _continue(self) -> None:
        """The first read of a body whose client waits for leave to send it."""
        if self.expects and not self.continued:
            # The daemon sees nothing until the body is read, so its own
            # 100 would never come; a waiting client would stall.
            self.continued = True
            self._write_answer(CONTINUE)

    async def local_body(self) -> bytes | None:
        if self.resp is not LOCAL:
            return None  # too large: forwarded as it came
        self._continue()
        while self.req is COLLECT_BODY:
            await self._wait()
        if self.resp is not LOCAL:
            return None  # outgrew the limit meanwhile: forwarded as it came
        # The handler owns the body now: what stays in ``collected`` is only
        # ever bytes no one has read.
        body = bytes(self.collected)
        self.collected.clear()
        return body

    async def local_roundtrip(self, raw: bytes) -> tuple[ResponseHead, bytes] | None:
        capture = Capture(asyncio.get_running_loop().create_future())
        self._resp("roundtrip")
        self.capture = capture
        self.resp_buf.clear()
        self.resp_body = None
        self._to_upstream(raw)
        try:
            return await capture.waiter
        finally:
            if self.capture is capture:
                self.capture = None

    def local_forward(self, raw: bytes) -> None:
        # A whole request of the handler's own: what is left unread of this
        # request's body is no part of it, and must not follow it upstream.
        if self.req is COLLECT_BODY:
            self._drop_body()
        else:
            self.collected.clear()
        self._send(raw)

    async def local_read(self) -> bytes | None:
        if self.resp is not LOCAL:
            return None  # too large before the first read, or sent: forwarded
        self._continue()
        if self.req is COLLECT_BODY:
            self._req("stream")
        while not self.collected and self.req is STREAM_BODY:
            await self._wait()
        if self.req is CLOSED and self.req_body is not None:
            self.req_body = None
            raise ConnectionError("the client closed the connection during its request body")
        data = bytes(self.collected)
        self.collected.clear()
        self.reading.resume("stream")
        return data

    async def local_send(self, data: bytes) -> bool:
        if self.resp is LOCAL:
            if self.req is COLLECT_BODY:
                self._req("stream")  # held for forward_rest, bounded, not collected
            self._send(data)
        elif self.up is not None and self.life is OPEN:
            self._to_upstream(data)
        connect = self.connect_task
        if connect is not None and not connect.done():
            await asyncio.shield(connect)
        while "daemon-full" in self.reading.reasons and self.up is not None and self.life is OPEN:
            await self._wait()
        return self.up is not None and self.life is OPEN

    def local_forward_rest(self) -> None:
        held = bytes(self.collected)
        self.collected.clear()
        self.reading.resume("stream")
        if self.up is None or self.life is not OPEN:  # never into a new daemon connection
            if self.req is STREAM_BODY:
                self._drop_body()
            self.close_after = True
            return
        if held:
            self._to_upstream(held)
        if self.req is STREAM_BODY:
            self._req("forward")

    def local_write(self, data: bytes, first: bool) -> None:
        if first:
            self.status = int(data[9:12])
            self._observe_exchange()
        self._write_answer(data)

    def local_reply(self, status: int, body: bytes) -> bytes:
        """The proxy's own answer, shaped for this request (HEAD, closing or not)."""
        return errors.response(status, body, head_only=self._head_only(), close=self.close_after)

    def local_error(self, status: int, message: str) -> bytes:
        return errors.error(status, message, head_only=self._head_only(), close=self.close_after)

    def local_gone(self) -> bool:
        # Not only after EOF: a client paused for falling behind is not read,
        # so its EOF never comes, yet its closed socket shows.
        return self.life is not OPEN or _hung_up(self.transport)

    # -- observations ------------------------------------------------------

    def _observe_exchange(self) -> None:
        obs = self.hub.observer
        if obs is not None and self.head is not None:
            obs.exchange(
                self.head.method, self.head.path, self.status, time.perf_counter() - self.started
            )

    def _observe_upstream_error(self, kind: str) -> None:
        if self.hub.observer is not None:
            self.hub.observer.upstream_error(kind)

    def _observe_hijacked(self, delta: int) -> None:
        if self.hub.observer is not None:
            self.hub.observer.hijacked(delta)


class Exchange:
    """One request a handler took over, and what the handler may do with it."""

    BODY_LIMIT = 1 << 20

    def __init__(self, conn: Connection, head: RequestHead) -> None:
        self._conn = conn
        self.head = head
        self.answered = False

    async def body(self) -> bytes | None:
        """The raw request body, or None when it exceeded ``BODY_LIMIT``.

        After None the request has already been forwarded as it came and its
        answer streams to the client: the handler has nothing left to do.
        """
        body = await self._conn.local_body()
        if body is None:
            self.answered = True
        return body

    async def roundtrip(self, raw: bytes) -> tuple[ResponseHead, bytes] | None:
        """Send a request to the daemon and capture its whole answer.

        None means the exchange is already answered: the daemon's answer was
        too large to hold and went to the client as it came, or the daemon
        could not be reached and the client got a 502.
        """
        try:
            result = await self._conn.local_roundtrip(raw)
        except ConnectionError as exc:
            self.fail(502, str(exc))
            return None
        if result is None:
            self.answered = True
        return result

    def forward(self, raw: bytes) -> None:
        """Send a request and let the daemon's answer stream to the client.

        The handler may return at once: the connection finishes the exchange
        when the answer is complete.
        """
        self.answered = True
        self._conn.local_forward(raw)

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
        data = await self._conn.local_read()
        if data is None:
            self.answered = True
        return data

    async def send(self, data: bytes) -> bool:
        """Send part of a request upstream, waiting while the daemon's side is full.

        The first call starts the request (so ``data`` begins with its head)
        and makes the daemon's answer stream to the client; from then on the
        whole body goes upstream (see ``forward_rest``). False: sending is
        over, because the daemon connection is gone (the client got a 502 if
        nothing was answered yet); the rest of the body is then discarded.
        """
        self.answered = True
        return await self._conn.local_send(data)

    def forward_rest(self) -> None:
        """After ``send``: the body bytes not read yet, and all still to come,
        go upstream as they arrive, as on a request the proxy never claimed.

        A handler that returns without calling it gets the same.
        """
        self._conn.local_forward_rest()

    def respond(self, raw: bytes) -> None:
        """Write a complete answer: a captured daemon answer, or one of ``reply``'s."""
        self._conn.local_write(raw, first=not self.answered)
        self.answered = True

    def reply(self, status: int, body: bytes) -> None:
        """Answer with a JSON body of the proxy's own."""
        self.respond(self._conn.local_reply(status, body))

    def fail(self, status: int, message: str) -> None:
        """Answer with a Docker-shaped error."""
        self.respond(self._conn.local_error(status, message))

    def write(self, data: bytes) -> None:
        """Write part of a streamed answer (the head first)."""
        self.respond(data)

    @property
    def client_gone(self) -> bool:
        """Whether the client can no longer read an answer.

        EOF alone does not say so: a client may half-close and still read.
        A peer that closed its socket (or died) shows as POLLHUP on it.
        """
        return self._conn.local_gone()
