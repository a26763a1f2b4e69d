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
- Flow control is end to end: a side whose outgoing buffer is full pauses
  reading on the other side, so memory stays flat however large a body is.
- A 101 answer, or a response with no length that runs until close (dockerd's
  200 raw-stream hijack), turns the connection into a raw splice. From then on
  each half-close is passed on with ``write_eof`` and the connection ends
  when both directions have.

Theory of operation:
``Connection`` is the asyncio protocol of the client side; ``Upstream`` is a
thin protocol for the daemon side that calls back into it. A request head
either starts a *plain* exchange (head and body written upstream as they
arrive, the response written back as it arrives) or, when the ``Hub``'s
interceptor claims it, a *local* exchange run by a coroutine through an
``Exchange`` handle: it may read the (bounded) body, make round trips to the
daemon whose answers are captured instead of forwarded, and write its own
answer. The plain path is plain callbacks without tasks or futures, because
that is what keeps a keep-alive ``GET /_ping`` within a few microseconds of
the daemon's own time.
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
    parse_request_head,
    parse_response_head,
    request_body,
    response_body,
)

log = logging.getLogger(__name__)

HOLD_LIMIT = 1 << 18
"""Client bytes held while an exchange is in progress before reading pauses."""

CAPTURE_LIMIT = 1 << 22
"""A captured daemon answer larger than this is streamed to the client instead."""

STREAM_LIMIT = 1 << 20
"""Request body bytes a handler reading a stream may fall behind before reading pauses."""

Handler = Callable[["Exchange"], Awaitable[None]]


class Interceptor(Protocol):
    def claim(self, head: RequestHead) -> Handler | None:
        """The coroutine that takes this request over, or None to forward it."""


class Observer(Protocol):
    """Where the data path reports what it saw; the metrics module implements it."""

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None: ...
    def upstream_error(self, kind: str) -> None: ...
    def hijacked(self, delta: int) -> None: ...


class Hub:
    """What every connection of one listener shares."""

    def __init__(
        self,
        upstream_path: str,
        interceptor: Interceptor | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.upstream_path = upstream_path
        self.interceptor = interceptor
        self.observer = observer
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
        self.conn.upstream_data(data, self)

    def eof_received(self) -> bool:
        return self.conn.upstream_eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(self)

    def pause_writing(self) -> None:
        self.conn.pause_client("upstream-full")

    def resume_writing(self) -> None:
        self.conn.resume_client("upstream-full")


# Where request body bytes go.
_UPSTREAM, _COLLECT, _DISCARD, _STREAM = range(4)


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


class Connection(asyncio.Protocol):
    """The client side of one connection, and the owner of its daemon side.

    All state of the exchange in progress lives here, so that the plain
    path runs as callbacks without a task per request.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.up: Upstream | None = None
        self.connecting = False
        self.connect_task: asyncio.Task[None] | None = None
        self.pending_up: list[bytes] = []
        self.inbuf = bytearray()
        self.paused: set[str] = set()
        self.client_eof = False
        self.eof_forwarded = False
        self.closing = False
        self.closed = False
        # The current exchange.
        self.active = False
        self.close_after = False
        self.used = False
        self.head: RequestHead | None = None
        self.started = 0.0
        self.req_body: Body | None = None
        self.sink = _UPSTREAM
        self.collected = bytearray()
        self.body_waiter: asyncio.Future[bytes | None] | None = None
        self.streamed = bytearray()
        self.stream_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        # The response in progress.
        self.awaiting = False
        self.status = 0
        self.resp_buf = bytearray()
        self.resp_body: Body | None = None
        self.capture: bytearray | None = None
        self.capture_head: ResponseHead | None = None
        self.capture_waiter: asyncio.Future[tuple[ResponseHead, bytes] | None] | None = None
        # After a 101 or a raw stream.
        self.spliced = False
        self.up_eof = False

    # -- client side -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed
        self.hub.register(self)

    def data_received(self, data: bytes) -> None:
        if self.spliced:
            self._to_upstream(data)
            return
        body = self.req_body
        if body is not None and not self.inbuf and not (self.closed or self.closing):
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
            if not data:
                return
        self.inbuf += data
        self._pump()

    def eof_received(self) -> bool:
        self.client_eof = True
        self._wake("stream_waiter")  # a body cut short ends its reader's wait
        if self.spliced:
            self._up_write_eof()
            return self._splice_maybe_done()
        # Keep the socket open to deliver an answer in progress; close otherwise.
        if self.active:
            if self.task is None and _hung_up(self.transport):
                # Closed, not half-closed: nobody will read the answer. Free the
                # daemon connection now, or an endless stream (events, logs -f)
                # would hold it for as long as the daemon stays quiet.
                self.abort()
                return False
            if self.task is None and not self.inbuf:
                # Pass the half-close on, as a direct client's would reach
                # dockerd: it ends a stream this client will never close fully
                # in a way we could see, having stopped reading it. Not with
                # requests held (the daemon must still read them), nor during
                # a local exchange (a heal's replay must still reach it).
                self.eof_forwarded = True
                self._up_write_eof()
            return True  # _finish closes once the held requests are answered
        self._close_upstream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.spliced:
            self.spliced = False
            self._observe_hijacked(-1)
        if self.task is not None:
            self.task.cancel()
        for waiter in (self.body_waiter, self.capture_waiter, self.stream_waiter):
            if waiter is not None and not waiter.done():
                waiter.cancel()
        self._wake("drain_waiter")
        self._close_upstream()
        self.hub.unregister(self)

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    def pause_client(self, reason: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume_client(self, reason: str) -> None:
        if reason == "upstream-full":
            self._wake("drain_waiter")
        self.paused.discard(reason)
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close_when_idle(self) -> None:
        """Shutdown: hijacks end now, busy or brand-new connections after one exchange.

        A connection accepted but not yet read from has a client about to send
        its first request, and clients do not retry a request on a fresh
        connection that closes unanswered; it gets its answer, bounded by the
        shutdown timeout. An idle kept-alive connection is closed at once,
        which clients do expect and retry.
        """
        if self.spliced:
            self.abort()
        elif self.active or not self.used:
            self.close_after = True
        else:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close_upstream()

    def _close(self) -> None:
        self.closing = True
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
        if self.status:
            self.abort()  # an answer is under way; a 400 would corrupt it
        else:
            self._reject(400, f"bad request: {exc}")

    def _consume(self) -> None:
        buf = self.inbuf
        while buf and not self.closed and not self.closing:
            body = self.req_body
            if body is not None:
                n = body.feed(buf)
                if n:
                    self._body_bytes(bytes(buf[:n]))
                    del buf[:n]
                if not body.done:
                    break
                self._body_done()
                continue
            if self.active or self.spliced:
                break
            end = find_head_end(buf)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._reject(431, "request header fields too large")
                break
            raw = bytes(buf[:end])
            del buf[:end]
            try:
                head = parse_request_head(raw)
            except ProtocolError as exc:
                self._reject(400, f"bad request: {exc}")
                return
            self._start(head)
        if len(buf) > HOLD_LIMIT:
            self.pause_client("hold")
        elif "hold" in self.paused:
            self.resume_client("hold")

    def _reject(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(errors.error(status, message, close=True))
        self.inbuf.clear()
        self._close()

    def _start(self, head: RequestHead) -> None:
        self.active = True
        self.used = True
        self.head = head
        self.started = time.perf_counter()
        self.close_after = self.close_after or head.close or self.hub.closing
        self.status = 0
        body = request_body(head)
        self.req_body = None if body.done else body
        handler = self.hub.interceptor.claim(head) if self.hub.interceptor else None
        if handler is None:
            self.sink = _UPSTREAM
            # The head and as much of the body as has arrived go in one write:
            # each write wakes the daemon, and a create's body comes with its head.
            data = head.raw
            if self.req_body is not None and self.inbuf:
                n = body.feed(self.inbuf)
                data += bytes(self.inbuf[:n])
                del self.inbuf[:n]
            self._send_request(data)
            if self.req_body is not None and body.done:
                self._body_done()
            return
        self.sink = _COLLECT
        self.collected.clear()
        self.task = asyncio.get_running_loop().create_task(self._run_local(handler))

    def _body_bytes(self, data: bytes) -> None:
        if self.sink == _UPSTREAM:
            self._to_upstream(data)
        elif self.sink == _COLLECT:
            self.collected += data
            if len(self.collected) > Exchange.BODY_LIMIT:
                self._overflow()
        elif self.sink == _STREAM:
            self.streamed += data
            self._wake("stream_waiter")
            if len(self.streamed) > STREAM_LIMIT:
                self.pause_client("stream")

    def _wake(self, name: str) -> None:
        """Resolve the waiter held in attribute ``name``, if one is waiting."""
        waiter: asyncio.Future[None] | None = getattr(self, name)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body_done(self) -> None:
        self.req_body = None
        self._wake("stream_waiter")
        if self.sink == _COLLECT:
            if self.body_waiter is not None and not self.body_waiter.done():
                self.body_waiter.set_result(bytes(self.collected))
        elif not self.awaiting and self.task is None:
            self._finish()

    def _overflow(self) -> None:
        """A claimed request's body outgrew the limit: forward it after all."""
        assert self.head is not None
        self.sink = _UPSTREAM
        self._send_request(self.head.raw + bytes(self.collected))
        self.collected.clear()
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def _send_request(self, raw: bytes) -> None:
        """Write a request upstream and expect its answer on the client."""
        self.awaiting = True
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
        if not self.connecting:
            self.connecting = True
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
            self.connecting = False
            reason = exc.strerror or str(exc)
            self._upstream_failed(f"cannot reach the Docker daemon at {path}: {reason}")
            return
        self.connecting = False
        if self.closed:
            assert up.transport is not None
            up.transport.close()
            return
        self.up = up
        pending, self.pending_up = self.pending_up, []
        assert up.transport is not None
        up.transport.writelines(pending)
        if self.client_eof and (self.spliced or self.eof_forwarded):
            self._up_write_eof()

    def _upstream_failed(self, message: str) -> None:
        self.pending_up.clear()
        self._observe_upstream_error("connect")
        log.warning("%s", message)
        if self.capture_waiter is not None and not self.capture_waiter.done():
            self.capture_waiter.set_exception(ConnectionError(message))
            return
        if not self.awaiting:
            return
        self.sink = _DISCARD
        self._respond_error(502, message)

    def _respond_error(self, status: int, message: str) -> None:
        """Answer the current exchange from the proxy itself, if nothing was sent yet."""
        head_only = self.head is not None and self.head.method == "HEAD"
        if self.transport is not None and not self.closed:
            self.transport.write(
                errors.error(status, message, head_only=head_only, close=self.close_after)
            )
        self.status = status
        self._observe_exchange()
        self._response_done()

    def upstream_data(self, data: bytes, up: Upstream) -> None:
        if self.spliced:
            self._to_client(data)
            return
        if not self.awaiting:
            log.debug("dropping %d unsolicited bytes from the daemon", len(data))
            return
        body = self.resp_body
        if body is None:
            if self.resp_buf:
                self.resp_buf += data
                self._response_head(self.resp_buf)
            else:
                self._response_head(data)  # the usual case: no copy
            return
        try:
            n = body.feed(data)
        except ProtocolError as exc:
            self._upstream_broken(str(exc))
            return
        self._to_client(data[:n] if n < len(data) else data)
        if body.done:
            self._response_done()

    def _response_head(self, buf: bytes | bytearray) -> None:
        """Parse the answer's head from ``buf``: ``resp_buf``, or a fresh chunk.

        A fresh chunk that holds a whole head (nearly every answer) is parsed
        and passed on without being copied into ``resp_buf`` first.
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
            if head.status == 101:
                self._to_client(bytes(buf[start:]))
                self.resp_buf.clear()
                self.status = 101
                self._observe_exchange()
                self._enter_splice()
                return
            if head.status < 200:  # 100 Continue and friends: the final answer follows
                self._to_client(bytes(buf[start:end]))
                start = end
                continue
            break
        assert self.head is not None
        body = response_body(head, self.head.method)
        raw_stream = isinstance(body, UntilCloseBody) and self.capture is None
        try:
            n = 0 if raw_stream else body.feed(buf, end)
        except ProtocolError as exc:
            self._upstream_garbage(str(exc))
            return
        self.status = head.status
        if self.capture is None:
            self._observe_exchange()
        else:
            self.capture_head = head  # the handler's answer is what gets counted
        if head.close:
            self.close_after = True
        out = bytes(buf[start:] if raw_stream else buf[start : end + n])
        self.resp_buf.clear()  # after the slice: ``buf`` may be this very buffer
        self._to_client(out)
        if raw_stream:
            self._enter_splice()
            return
        if body.done:
            self._response_done()
        else:
            self.resp_body = body

    def _upstream_broken(self, reason: str) -> None:
        """The daemon's answer went bad after its head was passed on: cut both sides."""
        self._observe_upstream_error("protocol")
        log.warning("the daemon sent an unreadable response body: %s", reason)
        if self.capture_waiter is not None and not self.capture_waiter.done():
            self._close_upstream()
            self.capture_waiter.set_exception(ConnectionError(reason))
            return
        self.abort()

    def _upstream_garbage(self, reason: str) -> None:
        """Nothing of the answer reached the client yet, so it gets a 502 instead."""
        self._observe_upstream_error("protocol")
        message = f"the Docker daemon sent an unreadable response: {reason}"
        log.warning("%s", message)
        self._close_upstream()
        if self.capture_waiter is not None and not self.capture_waiter.done():
            self.capture_waiter.set_exception(ConnectionError(message))
            return
        self.close_after = True
        self.sink = _DISCARD
        self._respond_error(502, message)

    def _to_client(self, data: bytes) -> None:
        capture = self.capture
        if capture is None:
            if self.transport is not None:
                self.transport.write(data)
            return
        capture += data
        if len(capture) > CAPTURE_LIMIT:
            self._stop_capture(None)

    def _stop_capture(self, result: tuple[ResponseHead, bytes] | None) -> None:
        capture, self.capture = self.capture, None
        if result is None and capture and self.transport is not None:
            self.transport.write(bytes(capture))
        if self.capture_waiter is not None and not self.capture_waiter.done():
            self.capture_waiter.set_result(result)

    def _response_done(self) -> None:
        self.awaiting = False
        self.resp_body = None
        if self.capture is not None:
            assert self.capture_head is not None
            self._stop_capture((self.capture_head, bytes(self.capture)))
            return
        if self.req_body is None and self.task is None:
            self._finish()

    def _finish(self) -> None:
        """The exchange is over in both directions: on to the next request."""
        self.active = False
        self.head = None
        if self.close_after or self.closed:
            self._close()
            return
        if self.client_eof and not self.inbuf:
            self._close()
            return
        if self.inbuf:
            self._pump()

    def upstream_eof(self, up: Upstream) -> bool:
        if up is not self.up:
            return False
        if self.spliced:
            self.up_eof = True
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
            return self._splice_maybe_done()
        self._upstream_gone()
        return False

    def upstream_lost(self, up: Upstream) -> None:
        if up is not self.up:
            return
        if self.spliced:
            self.up = None
            self._close()
        else:
            self._upstream_gone()

    def _upstream_gone(self) -> None:
        """The daemon closed or reset our connection outside a splice."""
        self.up = None
        self.resume_client("upstream-full")
        if self.req_body is not None and self.sink == _UPSTREAM:
            # The rest of this body must not reach a new daemon connection,
            # where it would be read as a request of its own.
            self.sink = _DISCARD
            self.close_after = True
            if not self.awaiting and self.transport is not None:
                # Answered already. Say so with EOF, as Go's server does, and
                # drain the rest: a close with unread bytes would reset the
                # socket and could cost the client the answer.
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                return
        if not self.awaiting:
            return  # an idle keep-alive connection; the next request reconnects
        self._observe_upstream_error("closed")
        message = "the Docker daemon closed the connection before answering"
        if self.capture_waiter is not None and not self.capture_waiter.done():
            self.capture_waiter.set_exception(ConnectionError(message))
        elif self.resp_body is None and not self.resp_buf:
            self._respond_error(502, message)
        else:
            self._close()

    def _close_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None and up.transport is not None:
            up.transport.close()
        self.resume_client("upstream-full")

    # -- splice ------------------------------------------------------------

    def _enter_splice(self) -> None:
        self.spliced = True
        self.awaiting = False
        self.req_body = None
        self._observe_hijacked(1)
        if self.inbuf:
            held = bytes(self.inbuf)
            self.inbuf.clear()
            self._to_upstream(held)
        self.resume_client("hold")
        if self.client_eof:
            self._up_write_eof()

    def _up_write_eof(self) -> None:
        up = self.up
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()

    def _splice_maybe_done(self) -> bool:
        if self.client_eof and self.up_eof:
            self._close()
            return False
        return True

    # -- local exchanges ---------------------------------------------------

    async def _run_local(self, handler: Handler) -> None:
        assert self.head is not None
        exchange = Exchange(self, self.head)
        try:
            await handler(exchange)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error handling %s %s", self.head.method, self.head.path)
            if not exchange.answered:
                exchange.respond(
                    errors.error(500, "docker-heal-proxy: internal error, see its log")
                )
            else:
                self._close()
        finally:
            self.task = None
        if self.closed:
            return
        if self.awaiting:
            # The handler forwarded the request; the answer streams on its own.
            return
        if self.req_body is None:
            self._finish()
        else:
            self.sink = _DISCARD
            self.streamed.clear()
            self.resume_client("stream")

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
        conn = self._conn
        if conn.sink == _UPSTREAM:
            return None
        if conn.req_body is None:
            return bytes(conn.collected)
        conn.body_waiter = asyncio.get_running_loop().create_future()
        try:
            return await conn.body_waiter
        finally:
            conn.body_waiter = None

    async def roundtrip(self, raw: bytes) -> tuple[ResponseHead, bytes] | None:
        """Send a request to the daemon and capture its whole answer.

        None means the exchange is already answered: the daemon's answer was
        too large to hold and went to the client as it came, or the daemon
        could not be reached and the client got a 502.
        """
        conn = self._conn
        conn.capture = bytearray()
        conn.capture_head = None
        conn.capture_waiter = asyncio.get_running_loop().create_future()
        conn._send_request(raw)
        try:
            result = await conn.capture_waiter
        except ConnectionError as exc:
            conn.awaiting = False
            self.respond(errors.error(502, str(exc)))
            return None
        finally:
            conn.capture_waiter = None
            conn.capture = None
        if result is None:
            self.answered = True
        return result

    def forward(self, raw: bytes) -> None:
        """Send a request and let the daemon's answer stream to the client.

        The handler may return at once: the connection finishes the exchange
        when the answer is complete.
        """
        self.answered = True
        self._conn._send_request(raw)

    async def read(self) -> bytes | None:
        """The request body's next raw bytes as they arrive; b"" once it is complete.

        Unlike ``body`` nothing is held but what the handler has not read yet,
        and reading pauses while that exceeds ``STREAM_LIMIT``, so a body of
        any size streams through flat memory. None: the body outgrew
        ``BODY_LIMIT`` before the first read and was forwarded as it came.
        Raises ConnectionError when the client ended the body early; the
        connection then closes after the handler's answer.
        """
        conn = self._conn
        if conn.sink == _UPSTREAM:
            return None
        self._stream()
        while not conn.streamed and conn.req_body is not None:
            if conn.client_eof or conn.closed:
                conn.req_body = None
                conn.close_after = True
                raise ConnectionError("the client closed the connection during its request body")
            conn.stream_waiter = asyncio.get_running_loop().create_future()
            try:
                await conn.stream_waiter
            finally:
                conn.stream_waiter = None
        data = bytes(conn.streamed)
        conn.streamed.clear()
        conn.resume_client("stream")
        return data

    async def send(self, data: bytes) -> bool:
        """Send part of a request upstream, waiting while the daemon's side is full.

        The first call starts the request (so ``data`` begins with its head)
        and makes the daemon's answer stream to the client. False: sending is
        over, because the daemon connection is gone (the client got a 502 if
        nothing was answered yet); the rest of the body is then discarded. A
        daemon that answered early still gets the whole body, as it would
        from the client itself: the connection stays in step.
        """
        conn = self._conn
        if not self.answered:
            self.answered = True
            self._stream()  # the body waits for forward_rest, bounded, not collected
            conn._send_request(data)
        elif conn.up is not None and not conn.closed:
            conn._to_upstream(data)
        connect = conn.connect_task
        if connect is not None and not connect.done():
            await asyncio.shield(connect)
        while "upstream-full" in conn.paused and conn.up is not None and not conn.closed:
            conn.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await conn.drain_waiter
            finally:
                conn.drain_waiter = None
        return conn.up is not None and not conn.closed

    def _stream(self) -> None:
        """From now on the body is held for ``read`` (bounded), not collected whole."""
        conn = self._conn
        if conn.sink == _COLLECT:
            conn.sink = _STREAM
            conn.streamed += conn.collected
            conn.collected.clear()

    def forward_rest(self) -> None:
        """After ``send``: the body bytes not read yet, and all still to come,
        go upstream as they arrive, as on a request the proxy never claimed."""
        conn = self._conn
        held = bytes(conn.collected) + bytes(conn.streamed)
        conn.collected.clear()
        conn.streamed.clear()
        if conn.up is None or conn.closed:  # never into a new daemon connection
            conn.sink = _DISCARD
            conn.close_after = True
        else:
            conn.sink = _UPSTREAM
            if held:
                conn._to_upstream(held)
        conn.resume_client("stream")

    def respond(self, raw: bytes) -> None:
        """Write a complete answer of the proxy's own."""
        self.answered = True
        conn = self._conn
        if conn.transport is not None and not conn.closed:
            conn.transport.write(raw)
        conn.status = int(raw[9:12])
        conn._observe_exchange()

    def write(self, data: bytes) -> None:
        """Write part of a streamed answer (the head first)."""
        conn = self._conn
        if not self.answered:
            self.answered = True
            conn.status = int(data[9:12])
            conn._observe_exchange()
        if conn.transport is not None and not conn.closed:
            conn.transport.write(data)

    @property
    def client_gone(self) -> bool:
        """Whether the client can no longer read an answer.

        EOF alone does not say so: a client may half-close and still read.
        A peer that closed its socket (or died) shows as POLLHUP on it.
        """
        conn = self._conn
        return conn.closed or (conn.client_eof and _hung_up(conn.transport))
