"""The systemd service protocol: socket activation, readiness, watchdog.

Rules:
- Everything the proxy says to or takes from systemd lives here, written
  against the documented protocol (sd_listen_fds(3), sd_notify(3)) so that no
  libsystemd binding is needed.
- Without systemd every function is a no-op, so the same code path runs
  under a terminal, a container or a unit.
- The environment variables systemd passes are consumed: a recipe's build
  script run by the proxy must not think it is the service.
- What systemd hands over is checked before it is used, the way
  sd_listen_fds(3) and sd_watchdog_enabled(3) check it: a ``LISTEN_PID``,
  ``LISTEN_FDS``, ``WATCHDOG_USEC`` or ``WATCHDOG_PID`` that is not a number,
  and a passed socket that is not one listening Unix stream socket, stop the
  start with a one-line ``ActivationError`` naming the variable or the socket
  and the fix in the unit, never with a traceback from deep in the event loop.
- Passed sockets are known by name (``FileDescriptorName=``, which systemd
  gives every socket of one unit alike), never by their order: which
  listener a socket serves is the config's word (``service.listeners``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3
_UNIT_FIX = "give each .socket unit one ListenStream=/run/NAME.sock (Accept=no)"


class ActivationError(Exception):
    """What systemd handed the proxy cannot be used; one line, naming the fix."""


def _number(name: str, text: str, least: int) -> int:
    """A variable systemd sets, as the decimal it must be (sd_listen_fds(3) refuses others)."""
    if not (text.isascii() and text.isdigit()) or int(text) < least:
        raise ActivationError(f"{name}={text!r} is not a number of at least {least}")
    return int(text)


def _listening_unix_stream(sock: socket.socket, name: str) -> None:
    """Refuse a passed socket the proxy cannot serve on, saying what it is instead."""
    if sock.family != socket.AF_UNIX:
        address = sock.getsockname()
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else repr(address)
        family = getattr(sock.family, "name", sock.family)
        raise ActivationError(
            f"systemd passed an {family} socket ({where}, named {name}); "
            f"the proxy serves a Unix stream socket only: {_UNIT_FIX}"
        )
    if sock.type != socket.SOCK_STREAM:
        raise ActivationError(
            f"systemd passed a Unix socket of type {sock.type.name} ({name}), not a stream: "
            f"{_UNIT_FIX}"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError(
            f"systemd passed a socket that is not listening ({name}): {_UNIT_FIX}"
        )


def activated_sockets(
    env: MutableMapping[str, str] | None = None,
) -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed us, each with its ``FileDescriptorName=``.

    Without ``LISTEN_FDNAMES`` every socket is named ``unknown``, as
    sd_listen_fds_with_names(3) names them. A socket that cannot be served on
    stops the start, and every socket passed is closed with it.
    """
    env = os.environ if env is None else env
    pid = env.pop("LISTEN_PID", None)
    count = env.pop("LISTEN_FDS", None)
    names = env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if _number("LISTEN_PID", pid, 1) != os.getpid():
        return []  # meant for the process that started us
    fds = _number("LISTEN_FDS", count, 0)
    labels = names.split(":") if names else ["unknown"] * fds
    if len(labels) != fds:
        raise ActivationError(
            f"LISTEN_FDNAMES={names!r} names {len(labels)} sockets, but LISTEN_FDS={fds}"
        )
    passed: list[tuple[str, socket.socket]] = []
    try:
        for index, name in enumerate(labels):
            fd = LISTEN_FDS_START + index
            try:
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                raise ActivationError(
                    f"LISTEN_FDS={fds}, but fd {fd} ({name}) is not a socket: {exc.strerror or exc}"
                ) from None
            passed.append((name, sock))
            _listening_unix_stream(sock, name)
            os.set_inheritable(fd, False)
    except ActivationError:
        for _, sock in passed:
            sock.close()
        raise
    return passed


def notify(message: str, env: MutableMapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; False when not running under systemd."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval(env: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alive pings: half of what systemd allows, per sd_watchdog_enabled(3)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    microseconds = _number("WATCHDOG_USEC", usec, 1)
    if pid and _number("WATCHDOG_PID", pid, 1) != os.getpid():
        return None
    return microseconds / 2e6
