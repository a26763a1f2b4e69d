"""The start-up line: where clients connect, and why there when it may surprise."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from proxy.service.server import startup_line
from proxy.service.settings import Settings
from proxy.wire.listener import Listener

SETTINGS = Settings(
    listen="/home/u/.local/state/docker-heal-proxy/docker-heal-proxy.sock",
    upstream="/var/run/docker.sock",
    socket_mode=0o660,
    socket_group=None,
    shutdown_timeout=10.0,
    metrics=None,
    state_dir=Path("/home/u/.local/state/docker-heal-proxy"),
    listen_note=" (the default for a user without XDG_RUNTIME_DIR)",
)


def test_a_claimed_socket_says_why_it_is_where_it_is() -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        claimed = Listener(sock, SETTINGS.listen, inode=1)
        assert startup_line(SETTINGS, claimed) == (
            f"listening on {SETTINGS.listen} (the default for a user without "
            "XDG_RUNTIME_DIR), forwarding to /var/run/docker.sock"
        )
        plain = replace(SETTINGS, listen_note="")
        assert startup_line(plain, claimed) == (
            f"listening on {SETTINGS.listen}, forwarding to /var/run/docker.sock"
        )


def test_a_socket_systemd_handed_over_needs_no_note() -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        assert startup_line(SETTINGS, Listener(sock, "/run/x.sock", inode=None)) == (
            "listening on /run/x.sock, forwarding to /var/run/docker.sock"
        )
        assert startup_line(SETTINGS, Listener(sock, "", inode=None)) == (
            "listening on <activated socket>, forwarding to /var/run/docker.sock"
        )


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    """In a process of its own, so this one's limit stays. The Go runtime inside
    the ``dockerfile`` package raises the limit once, at some moment after its
    import; the test waits for that to be over before it lowers the limit, so
    only the proxy's own raise can lift it again."""
    script = """
import resource, time
from proxy.service.server import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
deadline = time.monotonic() + 5
while resource.getrlimit(resource.RLIMIT_NOFILE)[0] != hard and time.monotonic() < deadline:
    time.sleep(0.01)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
raise_open_files_limit()
print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "True\n", result.stderr
