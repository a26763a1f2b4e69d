"""The systemd protocol, spoken against real sockets rather than a mock of libsystemd.

A notify socket here is a real AF_UNIX datagram socket, the way systemd
listens, so a message that would not reach systemd does not reach the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from proxy.service import systemd
from proxy.service.systemd import LISTEN_FDS_START


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


@contextlib.contextmanager
def on_fd(fd: int, sock: socket.socket) -> Iterator[None]:
    """Put ``sock`` at ``fd`` as systemd does, and give ``fd`` back to its owner afterwards."""
    try:
        saved: int | None = os.dup(fd)
    except OSError:
        saved = None
    os.dup2(sock.fileno(), fd)
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
        else:
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def passed(*socks: socket.socket) -> Iterator[None]:
    """Put ``socks`` at fds 3, 4, ... as systemd does, and give the fds back afterwards."""
    with contextlib.ExitStack() as stack:
        for index, sock in enumerate(socks):
            stack.enter_context(on_fd(LISTEN_FDS_START + index, sock))
        yield


def listening(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock


def activation(count: int, names: str | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def test_not_activated_without_the_variables() -> None:
    assert systemd.activated_sockets({}) == []


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"},  # meant for another process
        {"LISTEN_PID": "self", "LISTEN_FDS": "0"},
        {"LISTEN_FDS": "1"},
    ],
)
def test_variables_for_someone_else_are_consumed_and_ignored(env: dict[str, str]) -> None:
    """A child the proxy runs (a recipe's build) must not think it was activated."""
    env = {k: (str(os.getpid()) if v == "self" else v) for k, v in env.items()}
    env["OTHER"] = "kept"
    assert systemd.activated_sockets(env) == []
    assert env == {"OTHER": "kept"}


def test_activated_sockets_come_by_name_and_accept(tmp_path: Path) -> None:
    paths = [str(tmp_path / "a.sock"), str(tmp_path / "b.sock")]
    socks = [listening(path) for path in paths]
    env = activation(2, "default:ci")
    with passed(*socks):
        found = systemd.activated_sockets(env)
        try:
            assert [(name, sock.fileno()) for name, sock in found] == [("default", 3), ("ci", 4)]
            assert env == {}
            assert not os.get_inheritable(3) and not os.get_inheritable(4)
            for (_, sock), path in zip(found, paths, strict=True):
                assert sock.getsockname() == path
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(path)
                    accepted, _ = sock.accept()
                    client.sendall(b"hi")
                    assert accepted.recv(2) == b"hi"
                    accepted.close()
        finally:
            for _, sock in found:
                sock.detach()  # the fds are restored by ``passed``
    for sock in socks:
        sock.close()


def test_sockets_without_names_are_unknown(tmp_path: Path) -> None:
    sock = listening(str(tmp_path / "a.sock"))
    with passed(sock):
        ((name, got),) = systemd.activated_sockets(activation(1))
        got.detach()
    sock.close()
    assert name == "unknown"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID='x'"),
        ({"LISTEN_PID": "-1", "LISTEN_FDS": "1"}, "LISTEN_PID='-1'"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "one"}, "LISTEN_FDS='one'"),
        (
            {"LISTEN_PID": "self", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"},
            "LISTEN_FDNAMES='a' names 1 sockets, but LISTEN_FDS=2",
        ),
    ],
)
def test_malformed_activation_is_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    env = {k: (str(os.getpid()) if v == "self" else v) for k, v in env.items()}
    with pytest.raises(systemd.ActivationError, match=re.escape(named)):
        systemd.activated_sockets(env)


@pytest.mark.parametrize(
    ("family", "kind", "listening", "said"),
    [
        (
            socket.AF_INET,
            socket.SOCK_STREAM,
            True,
            r"AF_INET socket \(127\.0\.0\.1:\d+, named ci\)",
        ),
        (socket.AF_UNIX, socket.SOCK_DGRAM, False, r"type SOCK_DGRAM \(ci\)"),
        (socket.AF_UNIX, socket.SOCK_STREAM, False, r"not listening \(ci\)"),
    ],
)
def test_a_passed_socket_that_is_not_a_listening_unix_stream_is_refused(
    tmp_path: Path,
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    listening: bool,
    said: str,
) -> None:
    """uvloop would end in a traceback on any of these; the start must say what is wrong,
    and the good socket passed beside the bad one is closed with it."""
    good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    good.bind(str(tmp_path / "good.sock"))
    good.listen()
    with socket.socket(family, kind) as bad, good:
        if family == socket.AF_INET:
            bad.bind(("127.0.0.1", 0))
        if listening:
            bad.listen()
        with passed(good, bad):
            with pytest.raises(systemd.ActivationError, match=said) as refused:
                systemd.activated_sockets(activation(2, "default:ci"))
            for fd in (3, 4):  # closed by the refusal, not left open
                with pytest.raises(OSError):
                    os.fstat(fd)
        assert "ListenStream=" in str(refused.value)
        assert "\n" not in str(refused.value)


def test_a_passed_fd_that_is_no_socket_is_refused(tmp_path: Path) -> None:
    with (
        (tmp_path / "file").open("w") as file,
        passed(cast(socket.socket, file)),
        pytest.raises(systemd.ActivationError, match=r"fd 3 \(unknown\) is not a socket"),
    ):
        systemd.activated_sockets(activation(1))


def test_notify_reaches_a_datagram_socket(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path}
    assert systemd.notify("READY=1", env)
    assert systemd.notify("STOPPING=1", env)
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_an_abstract_socket() -> None:
    name = f"dhp-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_quiet_no(tmp_path: Path) -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": ""})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "self"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], interval: float | None) -> None:
    env = {k: (str(os.getpid()) if v == "self" else v) for k, v in env.items()}
    assert systemd.watchdog_interval(env) == interval


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "30s"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "me"},
    ],
)
def test_malformed_watchdog_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(systemd.ActivationError, match="WATCHDOG_"):
        systemd.watchdog_interval(env)
