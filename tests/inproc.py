"""In-process fixtures for the data path: a fake daemon, the proxy's hub, raw clients.

Everything runs on one uvloop event loop in the test process: no root, no
dockerd. The daemon is a small asyncio Unix server that frames requests with
``http1`` and answers through a script, so a test controls every byte and
every close. The hub is strict: an event the connection's table has no row
for raises, and any exception that reaches the loop fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from proxy.wire.connection import Connection
from proxy.wire.http1 import (
    ChunkedBody,
    LengthBody,
    RequestHead,
    UntilCloseBody,
    find_head_end,
    parse_request_head,
    parse_response_head,
    request_body,
    response_body,
)
from proxy.wire.hub import Hub, Interceptor
from proxy.wire.states import MACHINES

D = TypeVar("D", bound="FakeDaemon")

Answer = Callable[[RequestHead, bytes], Awaitable[bytes | None]]
"""What the fake daemon writes for a request; None closes the connection instead."""


class Closing(bytes):
    """An answer after which the fake daemon closes the connection."""


RUN_LIMIT = 60.0
"""A scenario still running after this long hangs: it fails instead of holding the suite."""


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return uvloop.run(asyncio.wait_for(coro, RUN_LIMIT))


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def ok(body: bytes = b"OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


async def ping_answer(head: RequestHead, body: bytes) -> bytes | None:
    return ok()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in pieces at ``points`` (taken modulo its length + 1)."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


class FakeDaemon:
    """dockerd's place: records every byte it reads, answers by script."""

    def __init__(self, path: str, answer: Answer, at_head: bool = False) -> None:
        self.path = path
        self.answer = answer
        self.at_head = at_head
        """Answer on the head, before reading the body, as a non-Go daemon may."""
        self.cuts: list[int] = []
        """Where answers are cut into separate writes, so the proxy reads them in pieces."""
        self.received = bytearray()
        self.requests: list[tuple[RequestHead, bytes]] = []
        self.accepted = 0
        self.open = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()
        await wait_until(lambda: self.open == 0, "the fake daemon's connections to end")

    async def _read(self, reader: asyncio.StreamReader, buf: bytearray) -> bool:
        data = await reader.read(65536)
        self.received += data
        buf += data
        return bool(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        buf = bytearray()
        try:
            while True:
                while (end := find_head_end(buf)) < 0:
                    if not await self._read(reader, buf):
                        return
                head = parse_request_head(bytes(buf[:end]))
                del buf[:end]
                early = await self.answer(head, b"") if self.at_head else None
                if early is not None:
                    writer.write(early)
                body = request_body(head)
                got = bytearray()
                while not body.done:
                    if not buf and not await self._read(reader, buf):
                        return
                    n = body.feed(buf)
                    got += buf[:n]
                    del buf[:n]
                self.requests.append((head, bytes(got)))
                if early is not None:
                    continue
                out = await self.answer(head, bytes(got))
                if out is None:
                    return
                for piece in cut(out, self.cuts):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)  # let the proxy read this piece alone
                if isinstance(out, Closing):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()


class Recorder:
    """A connection ``Observer`` that keeps everything it is told."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, str, int]] = []
        self.upstream_errors: list[str] = []
        self.hijacks = 0
        self.h2 = 0
        self.sessions_given_up = 0
        self.denials: list[tuple[str, str, str]] = []

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None:
        self.exchanges.append((method, path, status))

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.append(kind)

    def hijacked(self, delta: int) -> None:
        self.hijacks += delta

    def h2_spliced(self) -> None:
        self.h2 += 1

    def session_gave_up(self) -> None:
        self.sessions_given_up += 1

    def policy_denied(self, listener: str, policy: str, route: str) -> None:
        self.denials.append((listener, policy, route))


TASK_OWNERS = ("Connection.", "Daemon.", "Exchange.", "BuildSession.")
"""The classes of the data path whose coroutines run as tasks."""


def proxy_tasks() -> list[asyncio.Task[Any]]:
    """Tasks the data path started (connects, local exchanges), still running."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.startswith(TASK_OWNERS)  # type: ignore[union-attr]
    ]


@dataclass
class Rig:
    hub: Hub
    daemon: FakeDaemon
    listen: str
    recorder: Recorder
    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    swapped: list[FakeDaemon] = field(default_factory=list)
    """Daemons a test put in the rig's place; closed with the rig, whatever the test did."""

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.listen)

    async def swap_daemon(self, make: Callable[[str], D]) -> D:
        """A daemon of the test's own in the rig's place: ``make`` builds it for a path."""
        assert self.daemon.server is not None
        self.daemon.server.close()
        daemon = make(self.daemon.path + "2")
        self.swapped.append(daemon)
        await daemon.start()
        self.hub.upstream_path = daemon.path
        return daemon

    async def settled(self) -> None:
        """Every connection gone and no task of the data path left."""
        await wait_until(lambda: not self.hub.connections, "hub.connections to empty")
        await wait_until(lambda: not proxy_tasks(), "the data path's tasks to end")


@contextlib.asynccontextmanager
async def rig(
    answer: Answer = ping_answer,
    interceptor: Interceptor | None = None,
    daemon_up: bool = True,
    **access: Any,
) -> AsyncIterator[Rig]:
    """``access``: the hub's ``name``, ``policy``, ``clients`` and ``auditor``."""
    folder = Path(tempfile.mkdtemp(prefix="ip-", dir="/tmp"))
    daemon = FakeDaemon(str(folder / "d.sock"), answer)
    if daemon_up:
        await daemon.start()
    recorder = Recorder()
    hub = Hub(daemon.path, interceptor, recorder, strict=True, **access)
    listen = str(folder / "p.sock")
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: Connection(hub), listen)
    r = Rig(hub, daemon, listen, recorder)
    loop.set_exception_handler(lambda _, context: r.loop_errors.append(context))
    try:
        yield r
    finally:
        server.close()
        hub.abort_all()
        for swapped in [daemon, *r.swapped]:
            await swapped.close()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    assert not r.loop_errors, r.loop_errors


async def read_answer(reader: asyncio.StreamReader, method: str = "GET") -> bytes:
    """One whole response (interim answers included) as the raw bytes that carried it."""
    out = bytearray()
    while True:
        head_raw = await reader.readuntil(b"\r\n\r\n")
        out += head_raw
        head = parse_response_head(head_raw)
        if head.status >= 200:
            break
    body = response_body(head, method)
    if isinstance(body, LengthBody):
        out += await reader.readexactly(body.remaining)
    elif isinstance(body, ChunkedBody):
        while True:
            line = await reader.readuntil(b"\r\n")
            out += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            out += await reader.readexactly(size + 2)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            out += line
        out += line
    elif isinstance(body, UntilCloseBody):
        out += await reader.read()
    return bytes(out)


class Transitions:
    """Records every (machine, state, event) the tables are asked for, while installed."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()
        self._saved: dict[str, dict[str, dict[str, str]]] = {}

    def __enter__(self) -> Transitions:
        for name, table in MACHINES.items():
            self._saved[name] = dict(table)
            for state, row in list(table.items()):
                table[state] = _RecordingRow(name, state, row, self.seen)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, table in MACHINES.items():
            table.update(self._saved[name])

    @staticmethod
    def all() -> set[tuple[str, str, str]]:
        return {
            (name, state, event)
            for name, table in MACHINES.items()
            for state, row in table.items()
            for event in row
        }


class _RecordingRow(dict[str, str]):
    def __init__(
        self, machine: str, state: str, row: dict[str, str], seen: set[tuple[str, str, str]]
    ) -> None:
        super().__init__(row)
        self.machine = machine
        self.state = state
        self.seen = seen

    def __getitem__(self, event: str) -> str:
        target = super().__getitem__(event)
        self.seen.add((self.machine, self.state, event))
        return target
