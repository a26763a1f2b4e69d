"""The start-up line: where clients connect, and why there when it may surprise."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.service import systemd
from proxy.service.listeners import ListenerSettings
from proxy.service.server import close_listeners, open_listeners, startup_line
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


def two_listeners(tmp_path: Path) -> Settings:
    default = ListenerSettings("default", str(tmp_path / "d.sock"), 0o660, None, "full")
    ci = ListenerSettings("ci", str(tmp_path / "ci.sock"), 0o600, None, "runner")
    return replace(
        SETTINGS, listen=default.listen, upstream=str(tmp_path / "up.sock"), listeners=(default, ci)
    )


def passing(monkeypatch: pytest.MonkeyPatch, *named: tuple[str, str]) -> list[socket.socket]:
    """systemd passing a listening socket at each (name, path)."""
    socks = []
    for _, path in named:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen()
        socks.append(sock)
    found = [(name, sock) for (name, _), sock in zip(named, socks, strict=True)]
    monkeypatch.setattr(systemd, "activated_sockets", lambda: found)
    return socks


@pytest.mark.parametrize("unit_name", ["docker-heal-proxy.socket", "unknown", "default"])
def test_passed_sockets_go_to_their_listeners_by_name_and_the_rest_are_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unit_name: str
) -> None:
    settings = two_listeners(tmp_path)
    (passed,) = passing(monkeypatch, (unit_name, str(tmp_path / "unit.sock")))
    opened = open_listeners(settings)
    try:
        (default, by_unit), (ci, bound) = opened
        assert (default.name, by_unit.sock, by_unit.inode) == ("default", passed, None)
        assert (ci.name, bound.path) == ("ci", str(tmp_path / "ci.sock"))
        assert bound.inode is not None and stat.S_IMODE(os.stat(bound.path).st_mode) == 0o600
    finally:
        close_listeners(listener for _, listener in opened)
    assert not os.path.exists(tmp_path / "ci.sock")  # ours: removed
    assert os.path.exists(tmp_path / "unit.sock")  # systemd's: kept


def test_a_socket_named_for_no_listener_stops_the_start_and_gives_every_socket_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served as the default listener it would be ``full``: what its policy was meant to keep."""
    socks = passing(monkeypatch, ("ci", str(tmp_path / "a.sock")), ("cl", str(tmp_path / "b.sock")))
    with pytest.raises(systemd.ActivationError, match="named 'cl', and no listener has that name"):
        open_listeners(two_listeners(tmp_path))
    assert [sock.fileno() for sock in socks] == [-1, -1]
    assert not os.path.exists(tmp_path / "d.sock")


def test_two_sockets_for_one_listener_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passing(monkeypatch, ("ci", str(tmp_path / "a.sock")), ("ci", str(tmp_path / "b.sock")))
    with pytest.raises(systemd.ActivationError, match="two sockets for listener 'ci'"):
        open_listeners(two_listeners(tmp_path))


def test_a_named_listener_says_its_policy() -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        of = ListenerSettings("ci", "/run/ci.sock", 0o660, None, "runner")
        assert startup_line(SETTINGS, Listener(sock, "/run/ci.sock", inode=1), of) == (
            "listening on /run/ci.sock for listener ci (policy runner), "
            "forwarding to /var/run/docker.sock"
        )
