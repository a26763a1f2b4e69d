"""daemon: opening the daemon connection, what waits for it, the daemon going or misbehaving."""

from __future__ import annotations

import asyncio

from inproc import (
    FakeDaemon,
    ok,
    read_answer,
    rig,
    wait_until,
)
from scenarios import (
    PING,
    ScriptedDaemon,
    close_client,
    fake_connection,
    post,
    scenario,
    scenario_test,
)

from proxy.wire.daemon import Upstream
from proxy.wire.flow import HOLD_HIGH
from proxy.wire.http1 import RequestHead
from proxy.wire.states import BODY, IDLE


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
async def a_replaced_daemon_connection_no_longer_moves_the_client() -> None:
    async with rig() as r:
        conn, client = fake_connection(r.hub)
        old = Upstream(conn)
        conn.up = Upstream(conn)
        conn.reading.pause("daemon-full")  # the current daemon connection is full
        old.resume_writing()  # the replaced one drained its buffer
        assert client.calls == ["pause"]
        conn.reading.resume("daemon-full")
        old.pause_writing()
        assert client.calls == ["pause", "resume"]
        conn.abort()
        conn.connection_lost(None)


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


test_scenario = scenario_test(__name__)
