"""splice: HTTP/2 with prior knowledge, 101 upgrades and raw streams, half-closes passed on."""

from __future__ import annotations

import asyncio

from inproc import (
    FakeDaemon,
    Rig,
    rig,
)
from scenarios import (
    close_client,
    post,
    scenario,
    scenario_test,
)

from proxy.wire.connection import H2_PREFACE
from proxy.wire.http1 import RequestHead


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


test_scenario = scenario_test(__name__)
