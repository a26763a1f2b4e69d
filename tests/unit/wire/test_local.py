"""local: claimed requests, run by a handler through an ``Exchange``, against a fake daemon."""

from __future__ import annotations

import asyncio

from inproc import (
    Closing,
    FakeDaemon,
    ok,
    ping_answer,
    proxy_tasks,
    read_answer,
    rig,
    wait_until,
)
from scenarios import (
    CONTINUE,
    HANDLERS,
    PING,
    Claims,
    close_client,
    post,
    scenario,
    scenario_test,
)

from proxy.wire.http1 import RequestHead
from proxy.wire.local import CAPTURE_LIMIT, Exchange
from proxy.wire.states import SEND_BODY


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


test_scenario = scenario_test(__name__)
