"""The serving process: sockets in, signals handled, everything shut down cleanly.

Rules:
- Start-up either fully succeeds or exits non-zero with a one-line reason;
  a half-started proxy that accepts connections it cannot serve is worse
  than none.
- SIGHUP re-reads the config (``reload``); connections are untouched.
- SIGTERM: stop accepting, let plain requests in flight finish for up to
  ``shutdown_timeout``, close hijacked streams, remove only the socket files
  this process created, exit 0.
- Every listener is served alike, each with its own hub. Under socket
  activation a passed socket goes to the listener its ``FileDescriptorName=``
  names; the shipped unit's own name (and ``unknown``, no name at all) is the
  default listener's. A socket named for no listener stops the start: served
  as ``full`` by mistake, it would give away what its policy was to keep. A
  listener no socket was passed for is bound by the proxy itself.
- systemd hears READY=1 once we accept, STOPPING=1 when we stop, and a
  WATCHDOG=1 from the event loop itself, so a wedged loop gets restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable
from functools import partial

from ..wire.connection import Connection
from ..wire.hub import Hub
from ..wire.listener import Listener, adopt, check_upstream_peer, claim
from . import systemd
from .listeners import DEFAULT, DEFAULT_NAMES, FULL, ListenerSettings
from .settings import Settings

Opened = tuple[ListenerSettings, Listener]

log = logging.getLogger(__name__)


def _adopted(settings: Settings) -> dict[str, Listener]:
    """The sockets systemd passed, by the name of the listener each is for."""
    names = {listener.name for listener in settings.listeners}
    passed = systemd.activated_sockets()
    found: dict[str, Listener] = {}
    try:
        for name, sock in passed:
            target = DEFAULT if name in DEFAULT_NAMES else name
            if target not in names:
                raise systemd.ActivationError(
                    f"systemd passed a socket named {name!r}, and no listener has that name: "
                    "give the .socket unit FileDescriptorName= of a [[listeners]] entry's name"
                )
            if target in found:
                raise systemd.ActivationError(
                    f"systemd passed two sockets for listener {target!r}: "
                    "give each .socket unit one ListenStream= and its own FileDescriptorName="
                )
            found[target] = adopt(sock)
    except systemd.ActivationError:
        for _, sock in passed:
            sock.close()
        raise
    return found


def open_listeners(settings: Settings) -> list[Opened]:
    """Every listener's socket, passed or bound; all or none. Settings come
    checked (a path-level loop included); this catches the loops only a live
    socket shows."""
    adopted = _adopted(settings)
    opened: list[Opened] = []
    try:
        for of in settings.listeners:
            listener = adopted.pop(of.name, None)
            if listener is None:
                listener = claim(of.listen, of.socket_mode, of.socket_group)
            opened.append((of, listener))
            check_upstream_peer(listener, settings.upstream)
    except Exception:
        close_listeners([*(listener for _, listener in opened), *adopted.values()])
        raise
    return opened


def close_listeners(listeners: Iterable[Listener]) -> None:
    """Give the sockets back: closed, and the files this process made removed."""
    for listener in listeners:
        listener.sock.close()
        listener.remove()


def startup_line(settings: Settings, listener: Listener, of: ListenerSettings | None = None) -> str:
    """Where clients connect, and why there when the default may surprise; a
    socket systemd handed us is where its unit says, so it needs no note."""
    where = listener.path or "<activated socket>"
    if of is not None and (of.name != DEFAULT or of.policy != FULL):
        note = f" for listener {of.name} (policy {of.policy})"
    else:  # the default listener: ``listen``, whose place may surprise
        note = settings.listen_note if listener.inode is not None else ""
    return f"listening on {where}{note}, forwarding to {settings.upstream}"


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(
    settings: Settings,
    served: list[tuple[Opened, Hub]],
    reload: Callable[[], None],
    watchdog: float | None = None,
) -> int:
    """``watchdog`` is the interval ``systemd.watchdog_interval`` read (and
    checked) at start, before anything was bound."""
    loop = asyncio.get_running_loop()
    servers = []
    for (of, listener), hub in served:
        servers.append(
            await loop.create_unix_server(
                partial(Connection, hub), sock=listener.sock, backlog=1024
            )
        )
        log.info("%s", startup_line(settings, listener, of))
    hubs = [hub for _, hub in served]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    pinger = loop.create_task(_watchdog(watchdog)) if watchdog else None
    systemd.notify("READY=1")
    try:
        await stop.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("shutting down")
        for server in servers:
            server.close()
        for hub in hubs:
            hub.shut_down()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(hub.idle.wait() for hub in hubs)), settings.shutdown_timeout
            )
        except TimeoutError:
            log.warning(
                "%d connections still busy after %.0fs; closing them",
                sum(len(hub.connections) for hub in hubs),
                settings.shutdown_timeout,
            )
            for hub in hubs:
                hub.abort_all()
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        for (_, listener), _ in served:
            listener.remove()
    return 0
