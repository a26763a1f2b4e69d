"""When the daemon is down, talks nonsense, or dies mid-answer.

A real dockerd cannot be made to do these on cue without stopping the
session's daemon, so a small fake upstream stands in for it here, and only
here. What matters is what the client sees (a dockerd-shaped 502 the docker
CLI can print, or a closed connection rather than a hang) and that the proxy
itself survives and serves the next request.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Dockerd, FakeDaemon, MakeProxyTo, Proxy, accepting, docker, ping, wait_for

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
PING_OK = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK"


def read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return buf
        buf += data
    return buf


class FakeUpstream(FakeDaemon):
    """A daemon that misbehaves on request, chosen by the request path.

    ``/_ping`` answers like dockerd; ``/garbage`` answers something that is
    not HTTP; ``/die-before`` closes without answering; ``/die-mid`` sends
    part of a body and closes; ``/hang`` never answers. Hung connections are
    tracked so a test can see when the proxy lets go of them.
    """

    def __init__(self, path: str) -> None:
        self.hanging = 0
        self.released = 0
        self.lock = threading.Lock()
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            while head := read_head(conn):
                target = head.split(b" ")[1]
                if target == b"/_ping":
                    conn.sendall(PING_OK)
                elif target == b"/garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\nthis is not HTTP\r\n\r\n")
                elif target == b"/die-before":
                    return
                elif target == b"/die-mid":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                    return
                elif target == b"/die-mid-chunked":
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                    )
                    return
                elif target == b"/hang":
                    with self.lock:
                        self.hanging += 1
                    while conn.recv(65536):
                        pass
                    with self.lock:
                        self.released += 1
                    return


class Relay(FakeDaemon):
    """The daemon coming back: a byte relay to the real dockerd at a new path."""

    def __init__(self, path: str, target: str) -> None:
        self.target = target
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        daemon.connect(self.target)
        for a, b in ((conn, daemon), (daemon, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)


def proxy_to(make_proxy_to: MakeProxyTo, upstream: str) -> Proxy:
    """A proxy in front of ``upstream``, which need not answer (or exist) yet."""
    proxy = make_proxy_to(upstream, wait=False)
    wait_for(lambda: accepting(proxy), 20, "the proxy to accept")
    return proxy


def exchange(path: str, request: bytes, timeout: float = 10) -> bytes:
    """Send a request, read until the proxy closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(request)
        got = b""
        while data := sock.recv(65536):
            got += data
        return got


def get(target: str, method: str = "GET", close: bool = True) -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: docker\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode()


def assert_healthy(proxy: Proxy) -> None:
    assert proxy.proc.poll() is None, proxy.log()
    assert "Traceback" not in proxy.log(), proxy.log()


@pytest.fixture
def fake(make_proxy_to: MakeProxyTo, tmp_path: Path) -> Iterator[tuple[FakeUpstream, Proxy]]:
    upstream = FakeUpstream(str(tmp_path / "fake.sock"))
    proxy = proxy_to(make_proxy_to, str(tmp_path / "fake.sock"))
    yield upstream, proxy
    upstream.close()
    assert_healthy(proxy)


# -- the daemon is down ----------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "stale"])
def test_daemon_down_answers_a_dockerd_shaped_502(
    make_proxy_to: MakeProxyTo, dockerd: Dockerd, tmp_path: Path, state: str
) -> None:
    """502 with ``{"message": ...}`` as JSON, for no socket file and for a dead one."""
    upstream = str(tmp_path / "down.sock")
    if state == "stale":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(upstream)  # a file, and nobody listening behind it
    proxy = proxy_to(make_proxy_to, upstream)

    raw = exchange(proxy.socket, get("/v1.41/containers/json"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    content_types = [line for line in lines if line.lower().startswith(b"content-type:")]
    assert content_types == [b"Content-Type: application/json"]
    message = json.loads(body)["message"]
    assert message.startswith(f"cannot reach the Docker daemon at {upstream}")
    assert list(json.loads(body)) == ["message"]

    # HEAD: the same head, no body; the next response follows at once.
    raw = exchange(proxy.socket, get("/_ping", "HEAD", close=False) + get("/_ping"))
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 502 ")
    assert rest.startswith(b"HTTP/1.1 502 ")

    # The docker CLI prints the message.
    for args in (["version"], ["ps"]):
        result = docker(args, env=proxy.env, check=False)
        assert result.returncode != 0
        assert f"cannot reach the Docker daemon at {upstream}" in result.stderr.decode(), args
    assert_healthy(proxy)

    # The daemon comes back: the same proxy serves again, nothing restarted.
    if state == "stale":
        Path(upstream).unlink()
    relay = Relay(upstream, dockerd.socket)
    try:
        assert ping(proxy.socket)
        version = docker(["version", "--format", "{{.Server.APIVersion}}"], env=proxy.env)
        assert version.stdout.decode().strip() == dockerd.release.api
    finally:
        relay.close()
    assert_healthy(proxy)


# -- the daemon misbehaves --------------------------------------------------------


def test_garbage_answer_becomes_a_502_and_a_close(fake: tuple[FakeUpstream, Proxy]) -> None:
    """Bytes that are not HTTP are never passed on as if they were; the client hears why."""
    _, proxy = fake
    answer = exchange(proxy.socket, get("/garbage", close=False))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ")
    assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n"
    assert b"\r\nConnection: close" in head
    assert "unreadable response" in json.loads(body)["message"]
    assert ping(proxy.socket)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response framed by Content-Length, leaving the connection open."""
    buf = read_head(sock)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "closed inside the body"
        body += data
    assert len(body) == length
    return head, body


def test_daemon_closing_before_answering_is_a_502(fake: tuple[FakeUpstream, Proxy]) -> None:
    """The client gets a 502 it can read, and its connection stays usable."""
    _, proxy = fake
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(proxy.socket)
        sock.sendall(get("/die-before", close=False))
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"Content-Type: application/json" in head.split(b"\r\n")
        message = json.loads(body)["message"]
        assert message == "the Docker daemon closed the connection before answering"
        # The same client connection goes on, over a new daemon connection.
        sock.sendall(get("/_ping", close=False))
        assert read_response(sock) == (PING_OK.partition(b"\r\n\r\n")[0], b"OK")


TRUNCATED = {"/die-mid": b"x" * 10, "/die-mid-chunked": b"3\r\nabc\r\n"}
"""What the fake sends of each body before it dies: all of it must reach the
client, and nothing more (no made-up end such as a last chunk)."""


@pytest.mark.parametrize("target", list(TRUNCATED))
def test_daemon_dying_mid_body_closes_the_client(
    fake: tuple[FakeUpstream, Proxy], target: str
) -> None:
    """A truncated body must end in a closed connection, never a hang or a made-up end."""
    _, proxy = fake
    raw = exchange(proxy.socket, get(target, close=False))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == TRUNCATED[target]
    assert ping(proxy.socket)


def test_closing_client_releases_a_hung_upstream(fake: tuple[FakeUpstream, Proxy]) -> None:
    """No timeout ends a hung request; the client leaving does, at once."""
    upstream, proxy = fake
    clients = []
    for _ in range(5):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(proxy.socket)
        sock.sendall(get("/hang", close=False))
        clients.append(sock)
    wait_for(lambda: upstream.hanging == 5, 10, "5 hung requests upstream")
    for sock in clients:
        sock.close()
    wait_for(lambda: upstream.released == 5, 5, "the proxy to close 5 upstream connections")
    assert ping(proxy.socket)


def test_many_failures_leave_the_proxy_serving(fake: tuple[FakeUpstream, Proxy]) -> None:
    _, proxy = fake
    for target in ["/garbage", "/die-before", "/die-mid", "/die-mid-chunked"] * 10:
        exchange(proxy.socket, get(target))
    assert ping(proxy.socket)
