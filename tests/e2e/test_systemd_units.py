"""The systemd side: the shipped units, socket activation, readiness and watchdog.

systemd is not PID 1 here, so the protocol is played by the test itself, as
sd_listen_fds(3) and sd_notify(3) describe it: the test binds and listens on
the socket and hands it over as fd 3 with ``LISTEN_FDS``/``LISTEN_PID``, and
binds the datagram socket ``NOTIFY_SOCKET`` names. The pid variables must be
the proxy's own pid, so the proxy is started through ``sh -c 'export
LISTEN_PID=$$; exec ...'``: exec keeps the shell's pid.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import REPO, Dockerd, ping, require, wait_for

UNITS = REPO / "systemd"


def unit_entries(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values; systemd allows a key more than once."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def installed_script() -> str:
    """The ``docker-heal-proxy`` console script of the environment running the tests
    (``pip install -e .``): the one next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "docker-heal-proxy"
    if os.access(beside, os.X_OK):
        return str(beside)
    return require("docker-heal-proxy")


def test_units_say_what_the_issue_asks() -> None:
    sock = unit_entries(UNITS / "docker-heal-proxy.socket")
    assert sock["Socket.ListenStream"] == ["/run/docker-heal-proxy.sock"]
    assert sock["Socket.SocketMode"] == ["0660"]
    assert sock["Socket.SocketGroup"] == ["docker"]
    svc = unit_entries(UNITS / "docker-heal-proxy.service")
    assert svc["Service.Type"] == ["notify"]
    assert svc["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["Service.Restart"] == ["on-failure"]
    assert svc["Service.WatchdogSec"] == ["30s"]
    assert svc["Unit.Wants"] == ["docker.service"]
    assert "docker.service" in svc["Unit.After"]
    assert all("docker.service" not in v for v in svc.get("Unit.Requires", []))
    assert svc["Service.NoNewPrivileges"] == ["yes"]
    assert svc["Service.ProtectSystem"] == ["strict"]
    assert svc["Service.ReadWritePaths"] == ["/var/lib/docker-heal-proxy"]
    assert svc["Service.StateDirectory"] == ["docker-heal-proxy"]
    assert svc["Service.LogsDirectory"] == ["docker-heal-proxy"]  # the audit log's folder
    assert svc["Service.PrivateTmp"] == ["yes"]
    assert svc["Service.LimitNOFILE"] == ["1048576"]
    dropin = unit_entries(UNITS / "host-service-dropin.conf")
    assert dropin["Service.Environment"] == ["DOCKER_HOST=unix:///run/docker-heal-proxy.sock"]
    second = unit_entries(UNITS / "docker-heal-proxy-ci.socket")
    assert second["Socket.FileDescriptorName"] == ["ci"]  # the [[listeners]] entry's name
    assert second["Socket.Service"] == ["docker-heal-proxy.service"]
    assert second["Socket.ListenStream"] == ["/run/docker-heal-proxy-ci.sock"]
    assert second["Socket.SocketGroup"] != ["docker"]


def analyze(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("systemd-analyze"), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """The units as shipped, with ExecStart pointing at the script that is installed here.

    ``systemd-analyze verify`` exits 0 on unknown keys and typos too, merely
    warning, so any output naming our files counts as a failure. It does not
    check that ``SocketGroup=`` exists (checked here instead: the docker.io
    package creates the group).
    """
    require("systemd-analyze")
    script = installed_script()
    for name in (
        "docker-heal-proxy.socket",
        "docker-heal-proxy-ci.socket",
        "docker-heal-proxy.service",
    ):
        text = (UNITS / name).read_text()
        text = text.replace("/opt/docker-heal-proxy/bin/docker-heal-proxy", script)
        (tmp_path / name).write_text(text)
    assert f"ExecStart={script} serve" in (tmp_path / "docker-heal-proxy.service").read_text()
    host = tmp_path / "dhp-example-host.service"
    host.write_text("[Unit]\nDescription=a host service\n[Service]\nExecStart=/bin/true\n")
    dropins = tmp_path / "dhp-example-host.service.d"
    dropins.mkdir()
    shutil.copy(UNITS / "host-service-dropin.conf", dropins / "docker-heal-proxy.conf")
    units = [
        tmp_path / "docker-heal-proxy.socket",
        tmp_path / "docker-heal-proxy-ci.socket",
        tmp_path / "docker-heal-proxy.service",
        host,
    ]
    result = analyze(*units)
    assert result.returncode == 0, result.stdout + result.stderr
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "docker-heal-proxy" in line or "dhp-example-host" in line
    ]
    assert ours == [], "\n".join(ours)
    import grp

    assert grp.getgrnam("docker")  # SocketGroup=docker must exist where the socket is made

    # The check is not vacuous: a broken ExecStart fails it.
    broken = tmp_path / "docker-heal-proxy.service"
    broken.write_text(broken.read_text().replace(script, str(tmp_path / "missing")))
    assert analyze(tmp_path / "docker-heal-proxy.socket", broken).returncode != 0


# -- the proxy under the systemd protocol --------------------------------------------------


def launch(
    listening: socket.socket | None,
    listen_path: str,
    upstream: str,
    log_path: Path,
    extra_env: dict[str, str],
    wrapper: str,
) -> subprocess.Popen[bytes]:
    """Start the proxy through ``sh -c WRAPPER``; the listening socket arrives as stdin."""
    argv = [sys.executable, "-m", "proxy", "serve", f"--listen=unix://{listen_path}"]
    argv += [f"--upstream=unix://{upstream}", "--metrics-listen=", "--log-level=debug"]
    env = {**os.environ, **extra_env}
    for key in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        if key not in extra_env:
            env.pop(key, None)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            ["/bin/sh", "-c", wrapper, "sh", *argv],
            stdin=listening.fileno() if listening is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


# fd 0 (the socket) becomes fd 3, then stdin is /dev/null again.
ACTIVATE = 'export LISTEN_PID=$$; exec "$@" 3<&0 0</dev/null'


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Pinger:
    """Threads that each connect, ``GET /_ping`` and close, over and over."""

    path: str
    ok: int = 0
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    in_gap: bool = False
    """Set before the first proxy is told to stop, cleared once the second runs."""
    gap_sent: int = 0
    gap_answered: list[bool] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def once(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            try:
                sock.connect(self.path)
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                with self.lock:
                    self.refused.append(repr(exc))
                return
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            with self.lock:
                in_gap = self.in_gap
                self.gap_sent += in_gap
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError as exc:
                data += repr(exc).encode()
            good = data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"OK")
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed.append(data[:200].decode(errors="replace"))
                if in_gap:
                    self.gap_answered.append(good)

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.once()


@pytest.mark.daemon
def test_socket_activation_restart_refuses_nothing(
    dockerd: Dockerd, tmp_path: Path, short: Path
) -> None:
    """Stop and start the proxy under a socket the 'service manager' (the test)
    keeps; clients that connect while no proxy runs wait in the backlog and
    are answered by the next one."""
    path = str(short / "a.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(128)
    log = tmp_path / "proxy.log"
    env = {"LISTEN_FDS": "1"}
    pinger = Pinger(path)
    threads = [threading.Thread(target=pinger.loop, daemon=True) for _ in range(3)]
    first = launch(listening, path, dockerd.socket, log, env, ACTIVATE)
    second: subprocess.Popen[bytes] | None = None
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: first.poll() is not None or pinger.ok >= 30, 30, "pings via the first")
        assert first.poll() is None, log.read_text()
        with pinger.lock:
            pinger.in_gap = True
        assert stop(first) == 0, log.read_text()
        # No proxy runs now: every client ends up waiting in the backlog.
        wait_for(lambda: pinger.gap_sent >= len(threads), 30, "requests sent during the gap")
        gap_requests = pinger.gap_sent
        second = launch(listening, path, dockerd.socket, log, env, ACTIVATE)
        wait_for(
            lambda: second.poll() is not None or len(pinger.gap_answered) >= gap_requests,
            30,
            "the requests of the gap to be answered",
        )
        with pinger.lock:
            pinger.in_gap = False
            ok_at_restart = pinger.ok
        wait_for(
            lambda: second.poll() is not None or pinger.ok >= ok_at_restart + 30,
            30,
            "pings via the second proxy",
        )
        assert second.poll() is None, log.read_text()
    finally:
        pinger.stopping.set()
        for thread in threads:
            thread.join(40)
        stop(first)
        if second is not None:
            stop(second)
        listening.close()
    assert pinger.refused == []
    assert pinger.failed == []
    assert len(pinger.gap_answered) >= len(threads) and all(pinger.gap_answered)
    assert log.read_text().count(f"listening on {path}") == 2
    # The activated socket is the service manager's: the proxy leaves the file alone.
    assert os.path.exists(path)


@pytest.fixture
def short() -> Iterator[Path]:
    """A short folder, removed afterwards: Unix socket paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    path = str(Path(folder) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def messages_until(sock: socket.socket, done: object, timeout: float) -> list[tuple[float, str]]:
    """Datagrams received until ``done(messages)`` holds or the deadline passes."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    assert callable(done)
    while not done(got) and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got.append((time.monotonic(), sock.recv(4096).decode()))
    return got


WATCHDOG_USEC = 1_000_000
"""What the 'service manager' allows between keep-alives: long enough that a
busy test machine cannot make a healthy proxy miss it."""


def texts_of(messages: list[tuple[float, str]]) -> list[str]:
    return [text for _, text in messages]


@pytest.mark.daemon
def test_ready_watchdog_and_stopping_notifications(
    dockerd: Dockerd, tmp_path: Path, short: Path
) -> None:
    """READY=1 first and once, WATCHDOG=1 from the running loop always within
    WATCHDOG_USEC, STOPPING=1 on SIGTERM, and its own socket file removed."""
    listen = str(short / "w.sock")
    log = tmp_path / "w.log"
    with notify_socket() as (address, sock):
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        proc = launch(None, listen, dockerd.socket, log, env, 'export WATCHDOG_PID=$$; exec "$@"')
        try:
            got = messages_until(
                sock, lambda m: sum(text == "WATCHDOG=1" for _, text in m) >= 6, 60
            )
            texts = texts_of(got)
            assert texts[:1] == ["READY=1"], (texts, log.read_text())
            assert texts[1:] == ["WATCHDOG=1"] * (len(texts) - 1), texts
            assert len(texts) == 7, (texts, log.read_text())
            # From READY on, no gap may reach what the manager allows.
            limit = WATCHDOG_USEC / 1e6
            gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
            assert all(gap < limit for gap in gaps), gaps
            proc.send_signal(signal.SIGTERM)
            after = messages_until(sock, lambda m: "STOPPING=1" in texts_of(m), 20)
            stopping = texts_of(after)
            assert "STOPPING=1" in stopping, (stopping, log.read_text())
            before_stop = stopping[: stopping.index("STOPPING=1")]
            assert set(before_stop) <= {"WATCHDOG=1"}, stopping
            assert proc.wait(30) == 0, log.read_text()
            assert not os.path.exists(listen), "its own socket file is removed at exit"
        finally:
            stop(proc)


@pytest.mark.daemon
def test_watchdog_meant_for_another_process_is_ignored(
    dockerd: Dockerd, tmp_path: Path, short: Path
) -> None:
    """``WATCHDOG_PID`` names someone else (a parent's watchdog leaked into our
    environment): the proxy says READY but sends no keep-alives of its own."""
    listen = str(short / "o.sock")
    log = tmp_path / "o.log"
    with notify_socket() as (address, sock):
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"}
        proc = launch(None, listen, dockerd.socket, log, env, 'exec "$@"')
        try:
            got = messages_until(sock, lambda m: "READY=1" in texts_of(m), 30)
            assert texts_of(got) == ["READY=1"], (texts_of(got), log.read_text())
            # Serving, not merely started: its loop is running.
            assert ping(listen), log.read_text()
            # Five keep-alive intervals (half of WATCHDOG_USEC each) of silence.
            later = messages_until(sock, lambda m: False, 2.5 * WATCHDOG_USEC / 1e6)
            assert texts_of(later) == []
            assert proc.poll() is None, log.read_text()
        finally:
            stop(proc)
