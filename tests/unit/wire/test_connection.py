"""connection: the plain path and the tables, driven in process against a fake daemon.

Each scenario is a coroutine that asserts what the client and the daemon saw
and that the connection left nothing behind (``scenarios``). The scenarios
of the other modules of the data path live in their own test modules
(``test_local``, ``test_daemon``, ``test_splice``); ``test_every_transition``
here runs them all with the tables recording which rows were used, so a row
no scenario reaches (and so no test pins) fails the suite.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import (
    Transitions,
    cut,
    ok,
    read_answer,
    rig,
    run,
    wait_until,
)
from scenarios import (
    CONTINUE,
    HANDLERS,
    PING,
    SCENARIOS,
    Claims,
    ScriptedDaemon,
    close_client,
    fake_connection,
    post,
    scenario,
    scenario_test,
)

from proxy.wire import connection
from proxy.wire.flow import HOLD_HIGH
from proxy.wire.http1 import (
    MAX_HEAD,
    RequestHead,
    find_head_end,
    parse_request_head,
    partial_head_fault,
)
from proxy.wire.states import BODY, IDLE, InvalidTransition

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


# -- heads -----------------------------------------------------------------------


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
async def mid_head_eof_closes() -> None:
    async with rig() as r:
        reader, writer = await r.client()
        writer.write(b"GET /_ping HTTP/1.1\r\nHo")
        writer.write_eof()
        assert await reader.read() == b""
        await close_client(r, writer)


# -- flow control ----------------------------------------------------------------


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


test_scenario = scenario_test(__name__)


def test_every_transition() -> None:
    """Over the scenarios of every module of the data path, not only this one's."""
    import test_daemon  # noqa: F401 -- registers its scenarios
    import test_local  # noqa: F401
    import test_splice  # noqa: F401

    with Transitions() as seen:
        for fn in itertools.chain.from_iterable(SCENARIOS.values()):
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
