"""The data path: one client connection spliced to one daemon connection.

Rules:
- Bytes pass through untouched in both directions. Heads are parsed only to
  frame bodies (``http1``) and to decide whether a request is one the proxy
  must look at; what is forwarded is always the original bytes.
- One exchange at a time per connection. Bytes of a pipelined next request
  are held until the current response is complete (``Held`` "hold", see
  ``flow``); that keeps the daemon's answers in order and lets an
  intercepted request be replayed safely.
- Every change of state is a row of the tables in ``states``, and every
  decision that needs both sides is a rule in ``rules``: this module fires
  the events and carries out the actions. An event with no row is a bug in
  the proxy: it is logged and that one connection is aborted (``Hub.strict``,
  set by the tests, raises instead; ``states.guarded`` is where). Nothing is
  dropped silently.
- A client that closes its socket (not just its sending half) is noticed as
  soon as its EOF is read: nobody will read an answer, so the connection is
  aborted, its handler cancelled (a heal it waits for goes on: the healer
  shields it), and nothing is replayed for it. While reading is paused the EOF
  waits behind the unread bytes; in a splice it is a half-close, passed on.
- Interim answers are never an exchange's status.
- A listener's policy judges every request head before the interceptor
  may claim it and before any byte goes upstream (``gate``); a connection
  without a ``Gate`` pays one ``is None`` per head for it, nothing more.

Theory of operation:
``Connection`` is the asyncio protocol of the client side. A connection has
two machines, because a request and its answer overlap (a daemon may answer
before a body ends): the *request* side follows what the client sends, the
*response* side follows what the client is owed. A request head either
starts a *plain* exchange (head and body written upstream as they arrive, the
answer written back as it arrives) or, when the ``Hub``'s interceptor claims
it, a *local* exchange run by a coroutine through an ``Exchange`` (``local``).
The exchange is over when both sides are DONE and no handler runs
(``rules.finish``); ``next`` takes both back to IDLE and held bytes are read.

The parts, by how often they run:
- here, the plain path, on every chunk both ways: reading requests and
  answers, framing bodies, writing them on. It is plain callbacks without
  tasks or futures, and one class, because that is what keeps a keep-alive
  ``GET /_ping`` within a few microseconds of the daemon's own time: each
  hop to another object would be paid per chunk. That is why this class
  (about 600 lines) and this module (about 730) are over the ~400 and ~600
  the rest of ``wire`` keeps to: split further, the hot path would either
  pay a call per chunk or be one class spread over two files;
- ``local``, once per claimed request: the handler's operations;
- ``daemon``, once per daemon connection: opening it, what waits for it,
  its going or misbehaving;
- ``splice``, once per hijack: raw bytes and half-closes;
- ``flow``: why a side is paused, and the held-bytes water marks.

Two short paths take the commonest exchange through the same tables with
less work: a read that is exactly a head parsed before (``http1`` remembers
heads by their bytes), arriving while both sides are IDLE and nothing is
held, starts its exchange without a search, a parse or a copy; and an answer
that is final, whole in one read and not captured (``_whole_answer``) is
written to the client before it is counted, so on two cores the client reads
while the proxy counts it. Anything else, or anything in doubt, takes the
general path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from . import errors
from .buildsession import BuildSession
from .daemon import Daemon, Upstream
from .flow import HOLD_HIGH, HOLD_LOW, Flow, Held
from .gate import BodyCheck, Gate
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
from .hub import Hub, Observer
from .local import CAPTURE_LIMIT, Exchange, hung_up, wants_continue
from .routes import api_path
from .rules import (
    ABORT,
    CLOSE,
    CLOSE_AFTER,
    FAIL_CAPTURE,
    FAIL_DROP,
    FAIL_READ,
    FINISH,
    NEXT_CLOSE,
    NOTHING,
    PASS_EOF,
    bad_framing,
    client_eof,
    close_when_idle,
    fail_answer,
    finish,
)
from .splice import Splice
from .states import (
    AWAIT_HEAD,
    BODY,
    CAPTURE_BODY,
    CAPTURE_HEAD,
    COLLECT_BODY,
    IDLE,
    MACHINES,
    OPEN,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    STREAM_BODY,
    InvalidTransition,
    guarded,
)

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Connection(asyncio.Protocol):
    """The client side of one connection, the owner of its daemon side, and the plain path.

    All state of a plain exchange lives here, so that the plain path runs as
    callbacks without a task per request.
    """

    __slots__ = (
        "close_after", "daemon", "eof_held", "gate", "head", "hold", "hub", "inbuf", "life",
        "local", "observer", "reading", "req", "req_body", "resp", "resp_body", "resp_buf",
        "scanned", "splice", "started", "status", "transport", "up", "used",
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
        self.eof_held = False
        """The client half-closed; its EOF is read after the bytes ``hold`` counts, in order."""
        self.reading = Flow()
        """Why the client side is not read."""
        self.hold = Held(self.reading, "hold", HOLD_HIGH, HOLD_LOW)
        """Bytes of the next request, held while an exchange is under way."""
        self.up: Upstream | None = None
        """The open daemon connection; ``daemon`` opens it and sees it go."""
        self.daemon = Daemon(self)
        self.splice: Splice | None = None
        self.gate: Gate | None = None
        """The listener's policy and audit log for this peer; None when neither applies."""
        self.observer: Observer | Gate | None = hub.observer
        """Where exchanges are counted: the hub's observer, or the gate that records them too."""
        # The current exchange.
        self.head: RequestHead | None = None
        self.started = 0.0
        self.close_after = False
        self.req_body: Body | None = None
        self.local: Exchange | None = None
        """A claimed exchange, until the next one starts."""
        # The answer in progress.
        self.status = 0
        self.resp_buf = bytearray()
        self.resp_body: Body | None = None

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
        hub = self.hub
        hub.register(self)
        if hub.gated:
            gate = self.gate = Gate.at_accept(hub, self.transport.get_extra_info("socket"))
            if gate is not None and hub.auditor is not None:
                self.observer = gate

    @guarded
    def data_received(self, data: bytes) -> None:
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
        if body is not None and not self.inbuf and not self.eof_held:
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

    @guarded
    def eof_received(self) -> bool:
        if self.splice is not None:
            return self.splice.client_eof()
        if hung_up(self.transport):
            # Closed, not half-closed: nobody will read an answer. Free the
            # daemon connection now, or an endless stream (events, logs -f)
            # would hold it for as long as the daemon stays quiet; a handler
            # waiting for a heal is cancelled (the heal goes on) and does
            # not replay a create nobody would start.
            self.abort()
            return False
        self.eof_held = True
        self._pump()
        return self.life is OPEN

    def connection_lost(self, exc: Exception | None) -> None:
        self.life = self._fire("life", self.life, "lost")
        if self.splice is not None:
            self._observe_hijacked(-1)
            self.splice.lost()
        local = self.local
        if local is not None and local.task is not None:
            local.task.cancel()
        self.reading.attach(None)
        self.daemon.close()
        if self.gate is not None:
            self.gate.lost()
        self.hub.unregister(self)

    def pause_writing(self) -> None:
        self.daemon.reading.pause("client-full")

    def resume_writing(self) -> None:
        self.daemon.reading.resume("client-full")

    def close_when_idle(self) -> None:
        """Shutdown: see ``rules.close_when_idle``."""
        action = close_when_idle(self.splice is not None, self.req, self.resp, self.used)
        if action is ABORT:
            self.abort()
        elif action is CLOSE_AFTER:
            self.close_after = True
        else:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.daemon.close()

    def _close(self) -> None:
        if self.life is not OPEN:
            return
        self.life = self._fire("life", self.life, "close")
        if self.transport is not None:
            self.transport.close()
        self.daemon.close()

    # -- requests ----------------------------------------------------------

    def _pump(self) -> None:
        """Consume buffered client bytes: the current body, then the next head."""
        try:
            self._consume()
        except ProtocolError as exc:
            self._bad_framing(exc)

    def _bad_framing(self, exc: ProtocolError) -> None:
        """A body whose framing makes no sense."""
        if bad_framing(self.resp, self.status) is ABORT:
            self.abort()
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
                    gate = self.gate
                    if gate is not None:
                        if gate.policy is not None:
                            self._write_answer(gate.h2_refusal(gate.policy))
                            self.inbuf.clear()
                            self._close()
                            return
                        gate.h2_spliced()
                    Splice.h2(self)
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
        self.hold.update(0 if self.req is IDLE else len(buf))
        if self.eof_held and (not buf or self.req is IDLE):
            self.eof_held = False
            self._client_eof()

    def _client_eof(self) -> None:
        """The client will send nothing more: see ``rules.client_eof``."""
        action = client_eof(self.req, self.resp)
        self._req("eof")
        if action is CLOSE:
            self._close()
        elif action is ABORT:
            self.abort()
        elif action is FAIL_READ:
            self.close_after = True  # the handler's answer ends the connection
            self._wake()
        elif action is FINISH:
            self._maybe_finish()
        elif action is PASS_EOF:
            self.daemon.write_eof()

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
        body = request_body(head) if head.chunked or head.content_length else None
        interceptor = self.hub.interceptor
        if self.gate is not None:
            handler = self.gate.admit(head, interceptor)
        else:
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
        if body is not None:
            self._req("claim")
            self.req_body = body
        else:
            self._req("complete")
        expects = body is not None and wants_continue(head)
        local = self.local = Exchange(self, head, expects, isinstance(handler, BodyCheck))
        local.task = asyncio.get_running_loop().create_task(local.run(handler))

    def _body_bytes(self, data: bytes) -> None:
        state = self.req
        if state is SEND_BODY:
            self._to_upstream(data)
        elif state is COLLECT_BODY or state is STREAM_BODY:
            assert self.local is not None
            self.local.collect(data, state)

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
        if self.local is not None:
            self.local.discard()

    def _wake(self) -> None:
        """A handler waiting for body bytes or daemon room looks again."""
        if self.local is not None:
            self.local.wake()

    def _send(self, raw: bytes) -> None:
        """Write a request upstream and expect its answer on the client."""
        self._resp("send")
        if self.resp_buf:  # only after an answer that broke off mid-head
            self.resp_buf.clear()
        self.resp_body = None
        self._to_upstream(raw)

    def _to_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self.daemon.write_when_open(data)

    # -- answers -----------------------------------------------------------

    def _fail_answer(self, status: int, message: str) -> None:
        """The daemon will not answer: see ``rules.fail_answer``."""
        action = fail_answer(self.req, self.resp)
        if action is FAIL_CAPTURE:
            local = self.local
            assert local is not None
            capture, local.capture = local.capture, None
            self._resp("fail")
            if capture is not None:
                capture.fail(message)
            return
        if action is NOTHING:
            return
        if action is FAIL_DROP:
            self._drop_body()
        self._resp("fail")
        self._write_answer(self._error(status, message))
        self.status = status
        self._observe_exchange()
        self._maybe_finish()

    def _head_only(self) -> bool:
        return self.head is not None and self.head.method == "HEAD"

    def _reply(self, status: int, body: bytes) -> bytes:
        """The proxy's own answer, shaped for this request (HEAD, closing or not)."""
        return errors.response(status, body, head_only=self._head_only(), close=self.close_after)

    def _error(self, status: int, message: str) -> bytes:
        return errors.error(status, message, head_only=self._head_only(), close=self.close_after)

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
                self.daemon.broken(str(exc))
                return
            self._to_client(data[:n] if n < len(data) else data)
            if body.done:
                if n < len(data):
                    self.daemon.surplus(len(data) - n)
                self._resp("body_end")
                self._answer_complete()
        elif state is AWAIT_HEAD or state is CAPTURE_HEAD:
            if self.resp_buf:
                self.resp_buf += data
                self._response_head(self.resp_buf)
            else:
                self._response_head(data)  # the usual case: no copy
        else:
            self.daemon.surplus(len(data))
            self.close_when_idle()

    def _whole_answer(self, head: ResponseHead, data: bytes, end: int) -> bool:
        """The usual answer, kept short: final, whole in this one read, and not captured.

        Anything else (an interim answer, a stream, a body still to come,
        bytes past its end) goes on through ``_response_head``.
        """
        assert self.head is not None
        local = self.local
        if (local is not None and local.capture is not None) or head.status < 200:
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

    def _upgraded(self) -> Splice:
        """The splice a 101 starts: BuildKit's ``/session`` is read along, if the hub asks."""
        sessions, head = self.hub.sessions, self.head
        if sessions is not None and head is not None and api_path(head.path) == "/session":
            return BuildSession(self, sessions)
        return Splice(self)

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
                    self.daemon.garbage("response head too large")
                elif buf is self.resp_buf:
                    del self.resp_buf[:start]
                else:
                    self.resp_buf += buf[start:]
                return
            try:
                head = parse_response_head(bytes(buf[start:end]))
            except ProtocolError as exc:
                self.daemon.garbage(str(exc))
                return
            if start == 0 and isinstance(buf, bytes) and self._whole_answer(head, buf, end):
                return
            local = self.local
            capture = None if local is None else local.capture
            if head.status == 101:
                if capture is not None:
                    self.daemon.garbage("101 Switching Protocols to a request under check")
                    return
                self.status = 101
                self._observe_exchange()
                answer, after = bytes(buf[start:end]), bytes(buf[end:])
                self.resp_buf.clear()
                self._resp("splice")
                self._write_answer(answer)
                splice = self._upgraded()
                splice.enter()
                if after:  # the new protocol's first bytes, in the 101's read
                    splice.from_daemon(after)
                return
            if head.status >= 200:
                break
            # 100 Continue and friends: the final answer follows. The client
            # already had the proxy's own 100, or its answer is being captured.
            self._resp("interim")
            if capture is None and (local is None or not local.continued):
                self._write_answer(bytes(buf[start:end]))
            start = end
        assert self.head is not None
        body = response_body(head, self.head.method)
        raw_stream = isinstance(body, UntilCloseBody) and capture is None
        try:
            n = 0 if raw_stream else body.feed(buf, end)
        except ProtocolError as exc:
            self.daemon.garbage(str(exc))
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
            Splice(self).enter()
            return
        if body.done:
            self._resp("complete")
            if stop < len(buf):
                self.daemon.surplus(len(buf) - stop)
            if capture is None:
                self._write_answer(out)
            else:
                capture.buf += out  # a whole answer in one read: never over the limit
            self._answer_complete()
        else:
            self._resp("head")
            self.resp_body = body
            self._to_client(out)

    def _to_client(self, data: bytes) -> None:
        local = self.local
        capture = None if local is None else local.capture
        if capture is None:
            if self.transport is not None:
                self.transport.write(data)
            return
        capture.buf += data
        if len(capture.buf) > CAPTURE_LIMIT:
            assert local is not None
            local.overflow_capture(capture)

    def _answer_complete(self) -> None:
        self.resp_body = None
        local = self.local
        if local is not None and local.capture is not None:
            local.captured(local.capture)
            return
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """On to the next request once the exchange is over: see ``rules.finish``."""
        local = self.local
        action = finish(
            self.req, self.resp, local is not None and local.task is not None, self.life is OPEN,
            self.close_after,
        )  # fmt: skip
        if action is NOTHING:
            return
        if action is CLOSE:
            self._close()
            return
        self._req("next")
        self._resp("next")
        self.head = None
        self.local = None
        if action is NEXT_CLOSE:
            self._close()
        elif self.inbuf or self.eof_held:
            self._pump()  # held while the exchange was under way

    # -- observations ------------------------------------------------------

    def _observe_exchange(self) -> None:
        obs = self.observer
        head = self.head
        if obs is not None and head is not None:
            obs.exchange(head.method, head.path, self.status, time.perf_counter() - self.started)

    def _observe_upstream_error(self, kind: str) -> None:
        if self.hub.observer is not None:
            self.hub.observer.upstream_error(kind)

    def _observe_hijacked(self, delta: int) -> None:
        if self.hub.observer is not None:
            self.hub.observer.hijacked(delta)
