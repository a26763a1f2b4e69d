"""watcher: a daemon that answers /_ping but refuses or drops /events is not
reopened in a tight loop, and asks for no reconcile until the stream opens.

The fake daemon is an aiohttp server on a Unix socket: a real dockerd never
refuses its own /events, but a docker-socket-proxy with EVENTS=0 does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from proxy.healing.background.watcher import EventWatcher
from proxy.healing.sources.engine import Engine

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def refused(request: web.Request) -> web.Response:
    return web.json_response({"message": "forbidden"}, status=403)


async def closed_at_once(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    return response


async def one_prune_then_open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(json.dumps({"Type": "image", "Action": "prune"}).encode() + b"\n")
    await response.write(json.dumps({"Type": "image", "Action": "pull"}).encode() + b"\n")
    await asyncio.sleep(3600)
    return response


def watch(tmp_path: Path, events: Handler, seconds: float) -> tuple[int, int, int, EventWatcher]:
    """Run a watcher against a fake daemon for ``seconds``: how many times it
    opened /events, how many reconciles it asked for, how many triggers it saw."""
    opens = connected = triggers = 0

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal opens
        opens += 1
        return await events(request)

    def on_connected() -> None:
        nonlocal connected
        connected += 1

    def on_trigger() -> None:
        nonlocal triggers
        triggers += 1

    async def main() -> EventWatcher:
        app = web.Application()
        app.router.add_get("/_ping", ping)
        app.router.add_get("/events", counted)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        socket = str(tmp_path / "docker.sock")
        await web.UnixSite(runner, socket).start()
        engine = Engine(socket, 60.0)
        watcher = EventWatcher(
            engine, on_trigger, on_connected, first_retry=0.05, retry=0.4, stable=10.0
        )
        task = asyncio.get_running_loop().create_task(watcher.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()
        await runner.cleanup()
        return watcher

    watcher = asyncio.run(main())
    return opens, connected, triggers, watcher


def test_a_refused_stream_is_down_asks_no_reconcile_and_backs_off(tmp_path: Path) -> None:
    opens, connected, _, watcher = watch(tmp_path, refused, 2.0)
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 ... : at most 8 attempts in 2 s, however fast the machine.
    assert 1 <= opens <= 8
    assert connected == 0
    assert not watcher.up and "forbidden" in watcher.detail


def test_a_stream_closed_at_once_backs_off_too(tmp_path: Path) -> None:
    opens, connected, _, watcher = watch(tmp_path, closed_at_once, 2.0)
    assert 1 <= opens <= 8
    assert connected == opens, "each stream that opened asks for one reconcile"
    assert not watcher.up and "closed" in watcher.detail


def test_an_open_stream_is_up_and_passes_on_removals_only(tmp_path: Path) -> None:
    opens, connected, triggers, watcher = watch(tmp_path, one_prune_then_open, 0.5)
    assert (opens, connected, triggers) == (1, 1, 1)
    assert watcher.up
