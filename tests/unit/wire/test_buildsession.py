"""buildsession: a recorded BuildKit /session through a real Connection, held and let go.

The fake daemon answers ``POST /session`` with a 101 and the daemon's side of a
session recorded from dockerd 26 (its first bytes in the 101's own write, as
dockerd sends them); the client sends the CLI's side once it has read the
daemon's. The hub's ``BuildSessions`` is a fake whose verdict the test picks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperframe.frame import DataFrame, Frame

from proxy.wire import fsutil
from proxy.wire.grpcmessages import Deframer
from tests.inproc import FakeDaemon, rig, run, wait_until

RECORDED = Path(__file__).parent / "sessions" / "plain.json"
HEAD = b"POST /session HTTP/1.1\r\nHost: d\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


READS = [(r["side"], bytes.fromhex(r["hex"])) for r in json.loads(RECORDED.read_text())["reads"]]
CLIENT = b"".join(data for side, data in READS if side == "client")


def before(i: int, side: str) -> int:
    """How many bytes ``side`` sent before read ``i``: what the other side waits for."""
    return sum(len(data) for s, data in READS[:i] if s == side)


class SessionDaemon(FakeDaemon):
    """Answers the session's head with a 101, then plays the daemon's reads in their order,
    each once the client's bytes recorded before it have arrived (the end's frame too)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, lambda head, body: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
        self.after = bytearray()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        reading = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"POST /session ")
            reading = asyncio.ensure_future(self._drain(reader))
            first = True
            for i, (side, data) in enumerate(READS):
                if side != "daemon":
                    continue
                await wait_until(lambda i=i: len(self.after) >= before(i, "client"), "client")
                writer.write(SWITCH + data if first else data)  # the preface in the 101's write
                first = False
            await reading
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            if reading is not None:
                reading.cancel()
            self.open -= 1
            writer.close()

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            self.after += data


async def play_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The CLI's reads in their order, each once the daemon's before it have arrived."""
    got = len(await reader.readuntil(b"\r\n\r\n")) - len(SWITCH)
    for i, (side, data) in enumerate(READS):
        if side == "client":
            while got < before(i, "daemon"):
                got += len(await reader.read(65536))
            writer.write(data)


class Verdicts:
    limit = 1 << 18

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.texts: list[bytes] = []
        self.gate = asyncio.Event()

    async def held(self, text: bytes, refusal: Callable[[str, str], str | None]) -> str | None:
        self.texts.append(text)
        await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


END_FRAME = bytes.fromhex("00000700000000000100000000020802")
"""The Dockerfile's end in this recording: DATA on stream 1, one gRPC message of 2 bytes,
a DATA packet for ID 0 with no data (proto3 leaves the zero ID out)."""
HELD_AT = CLIENT.index(END_FRAME)
"""What the daemon has while the end is held: the CLI sends nothing more until the FIN."""


async def session(answer: Any) -> tuple[bytes, Verdicts, int, int]:
    """The bytes the daemon got after the head, how many while held, the verdicts."""
    async with rig() as r:
        daemon = await r.swap_daemon(SessionDaemon)
        verdicts = Verdicts(answer)
        r.hub.sessions = verdicts
        reader, writer = await r.client()
        writer.write(HEAD)
        client = asyncio.ensure_future(play_client(reader, writer))
        await wait_until(lambda: verdicts.texts, "the Dockerfile held")
        await wait_until(lambda: len(daemon.after) >= HELD_AT, "all but the end")
        while_held = len(daemon.after)
        verdicts.gate.set()
        await client
        await wait_until(lambda: daemon.after.endswith(CLIENT[-10:]), "the CLI's trailers")
        writer.close()
        await r.settled()
        return bytes(daemon.after), verdicts, while_held, r.recorder.sessions_given_up


def test_a_released_dockerfile_reaches_the_daemon_byte_for_byte() -> None:
    after, verdicts, held_at, gave_up = run(session(None))
    assert verdicts.texts == [b"FROM i18base:latest\nCOPY a.txt /a.txt\n"]
    assert held_at == HELD_AT
    assert after == CLIENT
    assert gave_up == 0


def test_a_refused_dockerfile_ends_in_an_err_packet() -> None:
    after, _, held_at, gave_up = run(session("docker-heal-proxy: cannot heal base:1: broke"))
    assert after[:held_at] == CLIENT[:held_at]
    frame, length = Frame.parse_frame_header(memoryview(after[held_at : held_at + 9]))
    frame.parse_body(memoryview(after[held_at + 9 : held_at + 9 + length]))
    assert isinstance(frame, DataFrame)
    ((_, packet),) = Deframer(1 << 20).feed(frame.data)
    err = fsutil.read_packet(packet)
    assert (err.type, err.data) == (fsutil.ERR, b"docker-heal-proxy: cannot heal base:1: broke")
    assert gave_up == 0


def test_a_verdict_that_fails_splices_and_is_counted() -> None:
    after, _, _, gave_up = run(session(RuntimeError("the parse worker died")))
    assert after == CLIENT
    assert gave_up == 1
