"""connection: the state tables, driven in process against a fake daemon.

Each scenario is a coroutine that asserts what the client and the daemon saw
and that the connection left nothing behind. ``test_every_transition`` runs
them all with the tables recording which rows were used, so a row no scenario
reaches (and so no test pins) fails the suite.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import (
    Closing,
    FakeDaemon,
    Rig,
    Transitions,
    cut,
    ok,
    ping_answer,
    proxy_tasks,
    read_answer,
    rig,
    run,
    wait_until,
)

from proxy.wire import connection
from proxy.wire.connection import (
    CAPTURE_LIMIT,
    H2_PREFACE,
    HOLD_HIGH,
    Connection,
    Exchange,
    Handler,
    Hub,
)
from proxy.wire.http1 import (
    MAX_HEAD,
    RequestHead,
    find_head_end,
    parse_request_head,
    partial_head_fault,
)
from proxy.wire.states import BODY, IDLE, SEND_BODY, InvalidTransition

PING = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
Scenario = Callable[[], Coroutine[Any, Any, None]]
SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append(fn)
    return fn


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: d\r\n%sContent-Length: %d\r\n\r\n"
    return head % (path.encode(), extra, len(body)) + body


class Claims:
    """An interceptor claiming ``/local/...`` paths with the handler named after them."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers

    def claim(self, head: RequestHead) -> Handler | None:
        if head.path.startswith("/local/"):
            return self.handlers[head.path.removeprefix("/local/")]
        return None


async def relay(exchange: Exchange) -> None:
    """Read the body, make the round trip, answer with what the daemon said."""
    body = await exchange.body()
    if body is None:
        return
    answer = await exchange.roundtrip(exchange.head.raw + body)
    if answer is not None:
        exchange.respond(answer[1])


async def forward(exchange: Exchange) -> None:
    body = await exchange.body()
    if body is not None:
        exchange.forward(exchange.head.raw + body)


async def early(exchange: Exchange) -> None:
    """Answer without reading the body."""
    exchange.reply(200, b'{"early":true}')


async def broken(exchange: Exchange) -> None:
    raise RuntimeError("a bug in a handler")


async def stream(exchange: Exchange) -> None:
    """Read the first piece of the body as a stream, start the request, forward the rest."""
    first = await exchange.read()
    if first is not None and await exchange.send(exchange.head.raw + first):
        exchange.forward_rest()


async def spool(exchange: Exchange) -> None:
    """Read the whole body as a stream, then send it upstream in pieces."""
    pieces = []
    try:
        while data := await exchange.read():
            pieces.append(data)
    except ConnectionError as exc:
        exchange.fail(400, f"bad request: {exc}")
        return
    if data is not None and await exchange.send(exchange.head.raw):
        for piece in pieces:
            await exchange.send(piece)


async def peek(exchange: Exchange) -> None:
    """Read one piece of a stream, then answer without the rest."""
    await exchange.read()
    exchange.reply(200, b'{"peeked":true}')


async def ahead(exchange: Exchange) -> None:
    """Forward a request of its own without waiting for the body."""
    exchange.forward(PING)


async def stall(exchange: Exchange) -> None:
    await asyncio.Event().wait()


HANDLERS: dict[str, Handler] = {
    "relay": relay,
    "forward": forward,
    "early": early,
    "broken": broken,
    "stream": stream,
    "spool": spool,
    "peek": peek,
    "ahead": ahead,
    "stall": stall,
}


async def close_client(r: Rig, writer: asyncio.StreamWriter) -> None:
    writer.close()
    await r.settled()


# -- plain exchanges -------------------------------------------------------------


@scenario
async def pipelined_pings_then_half_close() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(PING * 3)
        for _ in range(3):
            assert await read_answer(reader) == ok()
        writer.write_eof()
        assert await reader.read() == b""  # the proxy closes an idle half-closed connection
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING * 3
        assert r.recorder.exchanges == [("GET", "/_ping", 200)] * 3


@scenario
async def bodies_and_large_answers_pass_whole() -> None:
    big = bytes(range(256)) * 1000

    async def answer(head: RequestHead, body: bytes) -> bytes:
        return ok(big) if head.path == "/big" else ok(body)

    async with rig(answer) as r:
        reader, writer = await r.client()
        request = post("/echo", b"x" * 70000)
        for i in range(0, len(request), 7000):  # the body arrives in pieces
            writer.write(request[i : i + 7000])
            await asyncio.sleep(0)
        assert await read_answer(reader) == ok(b"x" * 70000)
        writer.write(b"GET /big HTTP/1.1\r\n\r\n")
        assert await read_answer(reader) == ok(big)
        await close_client(r, writer)


@scenario
async def interim_answers_of_a_plain_request_pass_uncounted() -> None:
    async def answer(head: RequestHead, body: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok()

    async with rig(answer) as r:
        reader, writer = await r.client()
        writer.write(post("/x", b"{}", b"Expect: 100-continue\r\n"))
        assert await read_answer(reader, "POST") == b"HTTP/1.1 100 Continue\r\n\r\n" + ok()
        assert r.recorder.exchanges == [("POST", "/x", 200)]
        await close_client(r, writer)


@scenario
async def an_interim_answer_in_a_read_of_its_own_does_not_end_the_exchange() -> None:
    async def answer(head: RequestHead, body: bytes) -> bytes:
        return CONTINUE + ok() if head.method == "POST" else ok()

    async with rig(answer) as r:
        r.daemon.cuts = [len(CONTINUE)]  # as Go's server writes its 100: alone
        reader, writer = await r.client()
        writer.write(post("/x", b"{}", b"Expect: 100-continue\r\n"))
        assert await read_answer(reader, "POST") == CONTINUE + ok()
        writer.write(PING)
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert r.recorder.exchanges == [("POST", "/x", 200), ("GET", "/_ping", 200)]


@scenario
async def a_daemon_close_in_a_whole_answer_ends_the_connection() -> None:
    closing = ok(extra=b"Connection: close\r\n")

    async def answer(head: RequestHead, body: bytes) -> bytes:
        return closing

    async with rig(answer) as r:
        reader, writer = await r.client()
        writer.write(PING * 2)  # pipelined: the second must never reach the daemon
        assert await read_answer(reader) == closing
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def a_known_head_after_a_held_partial_head_is_read_as_its_rest() -> None:
    parse_request_head(PING)
    partial = b"GET /_ping HTTP/1.1\r\n"
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(PING)
        assert await read_answer(reader) == ok()
        (conn,) = r.hub.connections
        writer.write(partial)
        await wait_until(lambda: bytes(conn.inbuf) == partial, "the partial head to be held")
        writer.write(PING)  # known whole, but here it continues the partial head
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def daemon_answering_early_drops_the_rest_of_the_body() -> None:
    async def answer(head: RequestHead, body: bytes) -> None:
        return None

    class Early(FakeDaemon):
        async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            self.accepted += 1
            await reader.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            w.close()
            self.open -= 1

    async with rig(answer) as r:
        early_daemon = await r.swap_daemon(lambda path: Early(path, answer))
        reader, writer = await r.client()
        writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 413")
        writer.write(b"a" * 99990)  # drained, never sent anywhere as a request
        assert await reader.read() == b""  # EOF after the body, as Go's server does
        await close_client(r, writer)
        await early_daemon.close()
        assert early_daemon.accepted == 1  # the rest of the body never became a request
        assert r.recorder.exchanges == [("POST", "/x", 413)]


@scenario
async def daemon_down_gets_502_honouring_head_and_close() -> None:
    async with rig(daemon_up=False) as r:
        reader, writer = await r.client()
        writer.write(b"HEAD /_ping HTTP/1.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 ")
        writer.write(b"GET /_ping HTTP/1.1\r\nConnection: close\r\n\r\n")
        rest = await reader.read()
        assert rest.startswith(b"HTTP/1.1 502 ") and b"Connection: close\r\n" in rest
        assert rest.endswith(b'"}\n')  # a body for GET, none for HEAD before it
        await close_client(r, writer)
        assert r.recorder.upstream_errors == ["connect", "connect"]


class ScriptedDaemon(FakeDaemon):
    """A daemon the test writes for by hand, at the moments it chooses."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


@scenario
async def daemon_answering_twice_is_cut_off() -> None:
    async def twice(head: RequestHead, body: bytes) -> bytes:
        return ok() + ok(b"again")

    async with rig(twice) as r:  # both answers in one read
        reader, writer = await r.client()
        writer.write(PING * 2)
        assert await read_answer(reader) == ok()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING and r.recorder.upstream_errors == ["protocol"]
    async with rig() as r:
        daemon = await r.swap_daemon(lambda path: ScriptedDaemon(path, r.daemon.answer))
        for i, surplus_in in enumerate(("BODY", "IDLE")):
            reader, writer = await r.client()
            writer.write(PING)
            await wait_until(lambda n=i + 1: bytes(daemon.received) == PING * n, "the request")
            (conn,) = r.hub.connections
            daemon.writers[-1].write(ok()[:-2])
            await wait_until(lambda c=conn: c.resp is BODY, "the head to pass")
            if surplus_in == "BODY":
                daemon.writers[-1].write(b"OK" + ok())
            else:
                daemon.writers[-1].write(b"OK")
                await wait_until(lambda c=conn: c.resp is IDLE, "the exchange to end")
                daemon.writers[-1].write(ok())
            assert await read_answer(reader) == ok()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            await close_client(r, writer)
        await daemon.close()
        assert r.recorder.upstream_errors == ["protocol"] * 2


@scenario
async def a_head_seen_before_in_a_read_of_its_own_waits_its_turn() -> None:
    """A whole head the proxy knows by its bytes skips the parse, never the queue."""
    parse_request_head(PING)
    async with rig() as r:
        daemon = await r.swap_daemon(lambda path: ScriptedDaemon(path, r.daemon.answer))
        reader, writer = await r.client()
        writer.write(PING)
        await wait_until(lambda: bytes(daemon.received) == PING, "the first request")
        (conn,) = r.hub.connections
        writer.write(PING)  # whole and known, while the first is still unanswered
        await wait_until(lambda: bytes(conn.inbuf) == PING, "the second to be held")
        assert bytes(daemon.received) == PING
        daemon.writers[-1].write(ok())
        assert await read_answer(reader) == ok()
        await wait_until(lambda: bytes(daemon.received) == PING * 2, "the second request")
        daemon.writers[-1].write(ok())
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        await daemon.close()
        assert r.recorder.exchanges == [("GET", "/_ping", 200)] * 2


@scenario
async def daemon_closing_before_answering_gets_502() -> None:
    async def answer(head: RequestHead, body: bytes) -> None:
        return None

    async with rig(answer) as r:
        reader, writer = await r.client()
        writer.write(PING)
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 502 ")
        await close_client(r, writer)
        assert r.recorder.upstream_errors == ["closed"]


@scenario
async def half_close_after_a_request_still_gets_the_answer() -> None:
    release = asyncio.Event()

    async def answer(head: RequestHead, body: bytes) -> bytes:
        await release.wait()
        return ok()

    async with rig(answer) as r:
        reader, writer = await r.client()
        writer.write(PING)
        writer.write_eof()
        await wait_until(lambda: r.daemon.requests, "the request to reach the daemon")
        release.set()
        assert await read_answer(reader) == ok()
        assert await reader.read() == b""
        await close_client(r, writer)


@scenario
async def half_close_mid_body_is_passed_on() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        partial = b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"0123456789"
        writer.write(partial)
        writer.write_eof()  # the daemon sees the body end early, as it would directly
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 502 ") and b"closed the connection" in answer
        await close_client(r, writer)
        assert bytes(r.daemon.received) == partial


@scenario
async def client_hanging_up_on_a_stream_frees_it_at_once() -> None:
    async def answer(head: RequestHead, body: bytes) -> bytes:
        await asyncio.Event().wait()  # an endless quiet stream (events, logs -f)
        raise AssertionError

    async with rig(answer) as r:
        _, writer = await r.client()
        writer.write(b"GET /events HTTP/1.1\r\n\r\n")
        await wait_until(lambda: r.daemon.requests, "the request to reach the daemon")
        (conn,) = r.hub.connections
        assert conn.up is not None and conn.up.transport is not None
        upstream = conn.up.transport
        writer.close()
        await r.settled()
        assert upstream.is_closing()


# -- splices ----------------------------------------------------------------------


@scenario
async def h2_preface_is_spliced_whole() -> None:
    class H2(FakeDaemon):
        async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            data = await reader.read()
            self.received += data
            w.write(b"h2 frames back")
            w.write_eof()
            self.open -= 1

    async with rig() as r:
        h2 = await r.swap_daemon(lambda path: H2(path, r.daemon.answer))
        reader, writer = await r.client()
        sent = H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        writer.write(sent[:5])  # a prefix of the preface: wait for the rest
        await asyncio.sleep(0.01)
        writer.write(sent[5:])
        writer.write_eof()
        assert await reader.read() == b"h2 frames back"
        await close_client(r, writer)
        await h2.close()
        assert bytes(h2.received) == sent
        assert r.recorder.h2 == 1 and r.recorder.hijacks == 0


@scenario
async def h2_preface_with_the_daemon_down_closes() -> None:
    async with rig(daemon_up=False) as r:
        reader, writer = await r.client()
        writer.write(H2_PREFACE)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_client(r, writer)
        assert r.recorder.upstream_errors == ["connect"] and r.recorder.hijacks == 0


def upgrade_daemon(path: str, early: bool = False) -> FakeDaemon:
    """Answers 101 to the head (before any body when ``early``), then echoes raw bytes."""

    class Upgrade(FakeDaemon):
        async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            head = await reader.readuntil(b"\r\n\r\n")
            self.received += head
            if not early:
                await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r")[0]))
            w.write(b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\n\r\n")
            while data := await reader.read(65536):
                w.write(data.upper())
            await asyncio.sleep(0.01)
            w.write(b"bye")
            w.write_eof()
            await asyncio.sleep(0.05)
            w.close()
            self.open -= 1

    return Upgrade(path, lambda head, body: asyncio.sleep(0))  # type: ignore[arg-type,return-value]


async def spliced(r: Rig, request: bytes, early: bool, half_close_first: bool) -> None:
    daemon = upgrade_daemon(r.daemon.path + "u", early)
    await daemon.start()
    r.hub.upstream_path = daemon.path
    reader, writer = await r.client()
    writer.write(request)
    if half_close_first:
        writer.write_eof()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    if not half_close_first:
        writer.write(b"raw bytes")
        assert await reader.readexactly(9) == b"RAW BYTES"
        writer.write_eof()
    assert await reader.read() == b"bye"
    await close_client(r, writer)
    await daemon.close()
    assert r.recorder.hijacks == 0


@scenario
async def upgrade_after_the_body() -> None:
    async with rig() as r:
        await spliced(r, post("/exec/1/start", b"{}"), early=False, half_close_first=False)


@scenario
async def upgrade_before_the_body_ends() -> None:
    async with rig() as r:
        await spliced(r, post("/exec/1/start", b"{}")[:-2], early=True, half_close_first=False)


@scenario
async def upgrade_after_the_client_half_closed() -> None:
    async with rig() as r:
        await spliced(r, post("/exec/1/start", b"{}"), early=False, half_close_first=True)


@scenario
async def raw_stream_ending_from_the_daemon_first() -> None:
    async def answer(head: RequestHead, body: bytes) -> None:
        return None

    class Raw(FakeDaemon):
        async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            await reader.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
            w.write(b"output")
            w.write_eof()
            assert await reader.read() == b"stdin"
            w.close()
            self.open -= 1

    async with rig(answer) as r:
        raw = Raw(r.daemon.path + "r", answer)
        await raw.start()
        r.hub.upstream_path = raw.path
        reader, writer = await r.client()
        writer.write(b"POST /containers/x/attach?stream=1 HTTP/1.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.read() == b"output"
        writer.write(b"stdin")
        writer.write_eof()
        await close_client(r, writer)
        await raw.close()


# -- local exchanges -------------------------------------------------------------


@scenario
async def local_relay_captures_and_answers_unchanged() -> None:
    big = b"y" * 300000

    async def answer(head: RequestHead, body: bytes) -> bytes:
        if body == b"big":
            return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(big)
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(body)

    async with rig(answer, Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/relay", b"small"))
        assert await read_answer(reader, "POST") == ok(b"small")  # no interim answer
        writer.write(post("/local/relay", b"big"))
        assert await read_answer(reader, "POST") == ok(big)
        await close_client(r, writer)
        assert r.recorder.exchanges == [("POST", "/local/relay", 200)] * 2


@scenario
async def local_forward_streams_the_answer() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/forward", b"body"))
        assert await read_answer(reader, "POST") == ok()
        await close_client(r, writer)
        assert r.daemon.requests[0][1] == b"body"


@scenario
async def local_answer_without_reading_the_body() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        request = post("/local/early", b"z" * 5000)
        writer.write(request[:-4000])
        assert (await read_answer(reader, "POST")).endswith(b'{"early":true}')
        writer.write(request[-4000:] + PING)  # the rest is dropped; the next request served
        assert await read_answer(reader) == ok()
        writer.write(request[:-10])
        assert (await read_answer(reader, "POST")).endswith(b'{"early":true}')
        writer.write_eof()  # mid-body of a request already answered
        assert await reader.read() == b""
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def local_handler_error_is_a_500() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(b"GET /local/broken HTTP/1.1\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 500 ") and b"internal error" in answer
        await close_client(r, writer)


@scenario
async def local_forward_before_the_body_then_the_next_request() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        request = post("/local/ahead", b"body")
        writer.write(request[:-2])
        assert await read_answer(reader, "POST") == ok()
        writer.write(request[-2:] + PING)
        assert await asyncio.wait_for(read_answer(reader), 5) == ok()
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING * 2


@scenario
async def local_handler_cancelled_aborts_the_connection() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(b"GET /local/stall HTTP/1.1\r\n\r\n")
        await wait_until(lambda: proxy_tasks(), "the handler to start")
        (task,) = proxy_tasks()
        task.cancel()  # not by the client going: by shutdown, say
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_client(r, writer)


@scenario
async def local_body_over_the_limit_is_forwarded() -> None:
    body = b"b" * (Exchange.BODY_LIMIT + 10)

    async def answer(head: RequestHead, got: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"%d" % len(got))

    async with rig(answer, Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/relay", body, b"Expect: 100-continue\r\n"))
        got = await read_answer(reader, "POST")
        # One 100: the proxy's own and the daemon's dropped, or (the body
        # outgrew the limit before the handler read it) the daemon's.
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"%d" % len(body))
        await close_client(r, writer)


@scenario
async def capture_over_the_limit_streams_and_is_counted() -> None:
    big = b"c" * (CAPTURE_LIMIT + 100)

    async def answer(head: RequestHead, got: bytes) -> bytes:
        return ok(big, b"X: 1\r\n")

    async with rig(answer, Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/relay", b"{}"))
        assert await read_answer(reader, "POST") == ok(big, b"X: 1\r\n")
        await close_client(r, writer)
        assert r.recorder.exchanges == [("POST", "/local/relay", 200)]


@scenario
async def capture_failures_answer_502() -> None:
    async def answer(head: RequestHead, got: bytes) -> bytes | None:
        if got == b"mid":
            return Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        return None

    async with rig(answer, Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/relay", b"nothing"))  # the daemon closes without a word
        assert (await read_answer(reader, "POST")).startswith(b"HTTP/1.1 502 ")
        writer.write(post("/local/relay", b"mid"))  # ...or in the middle of its answer
        assert (await read_answer(reader, "POST")).startswith(b"HTTP/1.1 502 ")
        await close_client(r, writer)
    async with rig(daemon_up=False, interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/relay", b"{}", b"Connection: close\r\n"))
        got = await reader.read()
        assert got.startswith(b"HTTP/1.1 502 ") and b"\r\nConnection: close\r\n" in got
        await close_client(r, writer)


@scenario
async def streamed_body_goes_upstream_with_one_100() -> None:
    body = b"s" * 300000

    async def answer(head: RequestHead, got: bytes) -> bytes:
        return CONTINUE + ok(b"%d" % len(got))

    async with rig(answer, Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        for path in ("/local/stream", "/local/spool"):
            request = post(path, body, b"Expect: 100-continue\r\n")
            head_end = request.index(b"\r\n\r\n") + 4
            writer.write(request[:head_end])
            # The handler's first read says 100 Continue, as Go's server does.
            assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), 5) == CONTINUE
            for i in range(head_end, len(request), 70000):
                writer.write(request[i : i + 70000])
                await asyncio.sleep(0)
            # The daemon's own 100 is dropped: the client had one.
            assert await read_answer(reader, "POST") == ok(b"%d" % len(body))
        await close_client(r, writer)
        assert [got for _, got in r.daemon.requests] == [body, body]


@scenario
async def streamed_body_answered_locally_drops_the_rest() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        request = post("/local/peek", b"p" * 200000)
        writer.write(request[:1000])
        assert (await read_answer(reader, "POST")).endswith(b'{"peeked":true}')
        writer.write(request[1000:] + PING)
        assert await read_answer(reader) == ok()
        # A client waiting for a 100 it never got may never send its body: closed.
        writer.write(post("/local/early", b"never sent", b"Expect: 100-continue\r\n")[:-10])
        assert (await read_answer(reader, "POST")).endswith(b'{"early":true}')
        assert await reader.read() == b""
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def streamed_body_cut_short_fails_the_read() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        reader, writer = await r.client()
        writer.write(post("/local/spool", b"x" * 100)[:-50])
        await wait_until(lambda: proxy_tasks(), "the handler to start")
        writer.write_eof()
        got = await reader.read()
        assert got.startswith(b"HTTP/1.1 400 ") and b"during its request body" in got
        await close_client(r, writer)
        assert r.daemon.received == b""


@scenario
async def streamed_body_goes_upstream_whole_after_an_early_answer() -> None:
    gate = asyncio.Event()

    async def gated(exchange: Exchange) -> None:
        first = await exchange.read()
        assert first is not None and await exchange.send(exchange.head.raw + first)
        await gate.wait()  # until the client has the daemon's answer
        gate.clear()
        if exchange.head.query == "forward":
            exchange.forward_rest()

    async with rig(interceptor=Claims({"gated": gated})) as r:
        daemon = await r.swap_daemon(lambda path: FakeDaemon(path, ping_answer, at_head=True))
        reader, writer = await r.client()
        sent = b""
        # With forward_rest, or returning without it: either way the body is
        # the daemon's, all of it, and the next request follows it in step.
        for query in ("forward", "return"):
            request = post("/local/gated?" + query, b"g" * 100000)
            writer.write(request[:2000])
            assert await read_answer(reader, "POST") == ok()
            gate.set()
            (conn,) = r.hub.connections
            await wait_until(lambda c=conn: c.req is SEND_BODY, "the rest to go upstream")
            writer.write(request[2000:] + PING)
            assert await read_answer(reader) == ok()
            sent += request + PING
            await wait_until(
                lambda want=sent: daemon.received == want,
                "the whole body, then the ping",
            )
        await close_client(r, writer)
        await daemon.close()
        assert daemon.accepted == 1


@scenario
async def a_head_over_the_hold_limit_is_read_whole() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        request = b"GET /_ping HTTP/1.1\r\nX-Registry-Config: %s\r\n\r\n" % (b"r" * 300000)
        writer.write(request)
        assert await asyncio.wait_for(read_answer(reader), 5) == ok()
        writer.write(b"GET /_ping HTTP/1.1\r\nX: " + b"r" * MAX_HEAD)  # no end in sight
        assert (await reader.read()).startswith(b"HTTP/1.1 431 ")
        await close_client(r, writer)
        assert bytes(r.daemon.received) == request


@scenario
async def a_bad_line_is_refused_before_its_head_ends() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(PING + b"GET /_ping HTTP/1.1\r\nHost: d\r\n")
        assert await read_answer(reader) == ok()
        writer.write(b"No colon\r\n")  # and nothing more: the client waits
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"without a colon" in answer
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def a_head_in_many_reads_is_searched_once() -> None:
    searched: list[int] = []

    def counting(buf: bytes | bytearray, start: int = 0) -> int:
        searched.append(len(buf) - start)
        return find_head_end(buf, start)

    judged: list[tuple[int, int]] = []

    def judging(buf: bytes | bytearray, start: int, stop: int) -> str | None:
        if stop > start:
            judged.append((start, stop))
        return partial_head_fault(buf, start, stop)

    async with rig() as r:
        conn, client = fake_connection(r.hub)
        request = b"GET /_ping HTTP/1.1\r\n" + b"X-Line: %s\r\n" % (b"l" * 90) * 400 + b"\r\n"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(connection, "find_head_end", counting)
            patch.setattr(connection, "partial_head_fault", judging)
            for i in range(0, len(request), 100):
                conn.data_received(request[i : i + 100])
        # Each read searches its own bytes and the line it continues, no more.
        assert sum(searched) < 3 * len(request)
        # And judges each whole line once, in order.
        assert judged[0][0] == 0 and judged[-1][1] > len(request) - 200
        assert all(a[1] == b[0] for a, b in itertools.pairwise(judged))
        await wait_until(lambda: client.out == ok(), "the answer")
        assert bytes(r.daemon.received) == request
        conn.abort()
        conn.connection_lost(None)
        await r.settled()


# -- the client going away -------------------------------------------------------


@scenario
async def claimed_body_cut_short_leaves_nothing() -> None:
    async with rig(interceptor=Claims(HANDLERS)) as r:
        for finish in ("half-close", "close"):
            _, writer = await r.client()
            writer.write(post("/local/relay", b"x" * 100)[:-50])
            await wait_until(lambda: proxy_tasks(), "the handler to start")
            if finish == "half-close":
                writer.write_eof()
            else:
                writer.close()
            await r.settled()
            writer.close()
        assert r.daemon.received == b""


@scenario
async def mid_head_eof_closes() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(b"GET /_ping HTTP/1.1\r\nHo")
        writer.write_eof()
        assert await reader.read() == b""
        await close_client(r, writer)


# -- flow control ----------------------------------------------------------------


class FakeClient:
    """A client transport that only records what the connection does to it."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.calls: list[str] = []
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def pause_reading(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume_reading(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    abort = close


def fake_connection(hub: Hub) -> tuple[Connection, FakeClient]:
    conn = Connection(hub)
    client = FakeClient()
    conn.connection_made(cast(asyncio.Transport, client))
    return conn, client


@scenario
async def a_replaced_daemon_connection_no_longer_moves_the_client() -> None:
    async with rig() as r:
        conn, client = fake_connection(r.hub)
        old = connection.Upstream(conn)
        conn.up = connection.Upstream(conn)
        conn.reading.pause("daemon-full")  # the current daemon connection is full
        old.resume_writing()  # the replaced one drained its buffer
        assert client.calls == ["pause"]
        conn.reading.resume("daemon-full")
        old.pause_writing()
        assert client.calls == ["pause", "resume"]
        conn.abort()
        conn.connection_lost(None)


@scenario
async def held_bytes_pause_high_and_resume_low() -> None:
    release = [asyncio.Event(), asyncio.Event()]

    async def answer(head: RequestHead, body: bytes) -> bytes:
        index = len(r.daemon.requests) - 1
        if index < len(release):
            await release[index].wait()
        return ok()

    async with rig(answer) as r:
        conn, client = fake_connection(r.hub)
        second = b"GET /_ping HTTP/1.1\r\nPad: %s\r\n\r\n" % (b"p" * 5000)
        third = b"GET /_ping HTTP/1.1\r\nPad: %s\r\n\r\n" % (b"q" * (HOLD_HIGH - 2000))
        conn.data_received(PING + second + third)
        assert client.calls == ["pause"]
        release[0].set()
        await wait_until(lambda: len(r.daemon.requests) == 2, "the second request")
        # Still above the low water mark: reading stays paused, no flapping.
        assert client.calls == ["pause"]
        release[1].set()
        await wait_until(lambda: client.calls == ["pause", "resume"], "reading to resume")
        await wait_until(lambda: client.out == ok() * 3, "three answers")
        conn.abort()
        conn.connection_lost(None)
        await r.settled()


@scenario
async def writes_while_connecting_are_bounded() -> None:
    async def answer(head: RequestHead, body: bytes) -> bytes:
        return ok(b"%d" % len(body))

    async with rig(answer) as r:
        conn, client = fake_connection(r.hub)
        body = b"w" * (HOLD_HIGH + 10)
        conn.data_received(post("/x", body))  # before the daemon connection exists
        assert client.paused
        await wait_until(lambda: not client.paused, "reading to resume once connected")
        await wait_until(lambda: client.out == ok(b"%d" % len(body)), "the answer")
        conn.abort()
        conn.connection_lost(None)
        await r.settled()


@scenario
async def a_new_daemon_connection_starts_paused_for_a_full_client() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(PING)
        assert await read_answer(reader) == ok()
        (conn,) = r.hub.connections
        for w in r.daemon.writers:
            w.close()  # the daemon drops the idle connection
        await wait_until(lambda: conn.up is None, "the upstream to go")
        conn.pause_writing()  # the client stopped reading: its buffer is full
        writer.write(PING)
        await wait_until(lambda: r.daemon.accepted == 2 and conn.up, "a new upstream")
        assert conn.up is not None and conn.up.transport is not None
        assert not conn.up.transport.is_reading()  # type: ignore[attr-defined]
        conn.resume_writing()
        assert await read_answer(reader) == ok()
        await close_client(r, writer)


# -- the table itself ------------------------------------------------------------


def test_impossible_event_raises_in_strict_mode_and_aborts() -> None:
    async def main() -> None:
        async with rig() as r:
            conn, client = fake_connection(r.hub)
            with pytest.raises(InvalidTransition, match="no 'body_end' in state IDLE"):
                conn._req("body_end")
            assert client.closed
            conn.connection_lost(None)

    run(main())


def test_impossible_event_in_production_is_logged_and_aborts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with rig() as r:
            r.hub.strict = False
            reader, writer = await r.client()
            writer.write(PING)
            assert await read_answer(reader) == ok()
            (conn,) = r.hub.connections
            # As if a bug left it there: sending the next request is impossible.
            conn.resp = BODY
            conn.req = IDLE
            writer.write(PING)
            assert await reader.read() == b""
            await close_client(r, writer)

    run(main())
    assert "no 'send' in state BODY; aborting the connection" in caplog.text


@pytest.mark.parametrize("fn", SCENARIOS, ids=lambda fn: fn.__name__)
def test_scenario(fn: Scenario) -> None:
    run(fn())


def test_every_transition() -> None:
    with Transitions() as seen:
        for fn in SCENARIOS:
            run(fn())
    assert Transitions.all() - seen.seen == set()


# -- random exchanges --------------------------------------------------------------


KINDS = ["get", "head", "post", "chunked", "local"]


def _request(kind: str, n: int) -> tuple[bytes, str]:
    if kind == "get":
        return b"GET /r/%d HTTP/1.1\r\n\r\n" % n, "GET"
    if kind == "head":
        return b"HEAD /r/%d HTTP/1.1\r\n\r\n" % n, "HEAD"
    body = bytes([65 + n % 26]) * n
    if kind == "chunked":
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (n, body) if n else b"0\r\n\r\n"
        return b"POST /r/%d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" % n + chunked, "POST"
    target = "/local/relay" if kind == "local" else f"/r/{n}"
    return post(target, body), "POST"


async def _echo_size(head: RequestHead, body: bytes) -> bytes:
    if head.method == "HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    size = len(body) if head.method == "POST" else int(head.path.rsplit("/", 1)[1])
    payload = b"%d:" % size + b"r" * size
    if size % 2:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(payload),
            payload,
        )
    return ok(payload)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 3000)),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 100000), max_size=8),
    answer_cuts=st.lists(st.integers(0, 100000), max_size=4),
    ending=st.sampled_from(["close", "half-close", "cut-sending", "cut-reading"]),
    where=st.integers(0, 100000),
)
def test_random_exchanges_keep_every_byte_in_order(
    requests: list[tuple[str, int]],
    cuts: list[int],
    answer_cuts: list[int],
    ending: str,
    where: int,
) -> None:
    async def main() -> None:
        built = [_request(kind, n) for kind, n in requests]
        sent = b"".join(raw for raw, _ in built)
        expected = [await _echo_size(_parse(raw), _body_of(raw)) for raw, _ in built]
        async with rig(_echo_size, Claims(HANDLERS)) as r:
            r.daemon.cuts = answer_cuts
            reader, writer = await r.client()
            limit = where % (len(sent) + 1) if ending == "cut-sending" else len(sent)
            for piece in cut(sent[:limit], cuts):
                writer.write(piece)
                await asyncio.sleep(0)
            if ending == "cut-sending":
                writer.close()
                await r.settled()
                assert sent.startswith(bytes(r.daemon.received))
                return
            if ending == "half-close":
                writer.write_eof()
            got = b""
            want = b"".join(expected)
            stop = where % (len(want) + 1) if ending == "cut-reading" else len(want)
            for _, method in built:
                if len(got) >= stop:
                    break
                got += await read_answer(reader, method)
            if ending == "cut-reading":
                assert want.startswith(got)
                writer.close()
                await r.settled()
                return
            assert got == want
            assert bytes(r.daemon.received) == sent
            if ending == "half-close":
                assert await reader.read() == b""
            await close_client(r, writer)

    run(main())


def _parse(raw: bytes) -> RequestHead:

    return parse_request_head(raw[: raw.index(b"\r\n\r\n") + 4])


def _body_of(raw: bytes) -> bytes:
    """The body as the daemon reads it: still chunked, if it was."""
    return raw[len(_parse(raw).raw) :]
