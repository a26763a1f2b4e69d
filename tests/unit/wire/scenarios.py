"""The data path's scenarios: what they share, and the registry ``test_every_transition`` walks.

A scenario is a coroutine that drives a connection in process against a
fake daemon (``inproc``) and asserts what the client and the daemon saw and
that nothing was left behind. Each test module of ``wire`` registers its
own with ``@scenario`` and runs them with ``scenario_test``; the handlers
here are the local exchanges they claim.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from inproc import FakeDaemon, Rig, run

from proxy.wire.connection import Connection
from proxy.wire.http1 import RequestHead
from proxy.wire.hub import Hub
from proxy.wire.local import Exchange, Handler

PING = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
Scenario = Callable[[], Coroutine[Any, Any, None]]
SCENARIOS: defaultdict[str, list[Scenario]] = defaultdict(list)
"""The scenarios of each test module, by its name."""


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__module__].append(fn)
    return fn


def scenario_test(module: str) -> Callable[[Scenario], None]:
    """The test that runs each of ``module``'s scenarios on its own."""

    @pytest.mark.parametrize("fn", SCENARIOS[module], ids=lambda fn: fn.__name__)
    def test_scenario(fn: Scenario) -> None:
        run(fn())

    return test_scenario


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
