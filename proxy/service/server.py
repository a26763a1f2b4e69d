"""The serving process: sockets in, signals handled, everything shut down cleanly.

Rules:
- Start-up either fully succeeds or exits non-zero with a one-line reason;
  a half-started proxy that accepts connections it cannot serve is worse
  than none.
- SIGHUP re-reads the config (``reload``); connections are untouched.
- SIGTERM: stop accepting, let plain requests in flight finish for up to
  ``shutdown_timeout``, close hijacked streams, remove only the socket file
  this process created, exit 0.
- systemd hears READY=1 once we accept, STOPPING=1 when we stop, and a
  WATCHDOG=1 from the event loop itself, so a wedged loop gets restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from ..wire.connection import Connection
from ..wire.hub import Hub
from ..wire.listener import Listener, adopt, check_upstream_peer, claim
from . import systemd
from .settings import Settings

log = logging.getLogger(__name__)


def open_listener(settings: Settings) -> Listener:
    """Settings come checked (a path-level loop included); this catches the
    loops only a live socket shows."""
    activated = systemd.activated_socket()
    if activated is not None:
        listener = adopt(activated)
    else:
        listener = claim(settings.listen, settings.socket_mode, settings.socket_group)
    try:
        check_upstream_peer(listener, settings.upstream)
    except Exception:
        listener.sock.close()
        listener.remove()
        raise
    return listener


def startup_line(settings: Settings, listener: Listener) -> str:
    """Where clients connect, and why there when the default may surprise; a
    socket systemd handed us is where its unit says, so it needs no note."""
    where = listener.path or "<activated socket>"
    note = settings.listen_note if listener.inode is not None else ""
    return f"listening on {where}{note}, forwarding to {settings.upstream}"


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(
    settings: Settings,
    listener: Listener,
    hub: Hub,
    reload: Callable[[], None],
    watchdog: float | None = None,
) -> int:
    """``watchdog`` is the interval ``systemd.watchdog_interval`` read (and
    checked) at start, before anything was bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(
        lambda: Connection(hub), sock=listener.sock, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    pinger = loop.create_task(_watchdog(watchdog)) if watchdog else None
    log.info("%s", startup_line(settings, listener))
    systemd.notify("READY=1")
    try:
        await stop.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("shutting down")
        server.close()
        hub.shut_down()
        try:
            await asyncio.wait_for(hub.idle.wait(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning(
                "%d connections still busy after %.0fs; closing them",
                len(hub.connections),
                settings.shutdown_timeout,
            )
            hub.abort_all()
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        listener.remove()
    return 0
