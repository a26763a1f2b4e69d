"""The start-up line: where clients connect, and why there when it may surprise."""

from __future__ import annotations

import socket
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
