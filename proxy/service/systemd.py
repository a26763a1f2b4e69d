"""The systemd service protocol: socket activation, readiness, watchdog.

Rules:
- Everything the proxy says to or takes from systemd lives here, written
  against the documented protocol (sd_listen_fds(3), sd_notify(3)) so that no
  libsystemd binding is needed.
- Without systemd every function is a no-op, so the same code path runs
  under a terminal, a container or a unit.
- The environment variables systemd passes are consumed: a recipe's build
  script run by the proxy must not think it is the service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3


def activated_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed us, if it passed one."""
    env = os.environ if env is None else env
    pid = env.pop("LISTEN_PID", None)
    count = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid != str(os.getpid()) or int(count) < 1:
        return None
    sock = socket.socket(fileno=LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    return sock


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
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
