"""Edge cases a review of the data path and the healer found, pinned down.

Each test names the failure it guards against. The fake upstream here is a
plain socket server because these are faults a real dockerd does not produce
on demand (an early answer that closes mid-upload); everything else runs
against the session's real daemon.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    Dockerd,
    FakeDaemon,
    MakeProxy,
    Proxy,
    raw_request,
    start_proxy,
    toml_string,
    wait_for,
)


def test_malformed_chunked_body_gets_a_400_not_a_dropped_connection(proxy: Proxy) -> None:
    answer = raw_request(
        proxy.socket,
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert "bad chunk size" in json.loads(body)["message"]


def test_pipelined_requests_then_half_close_are_all_answered(proxy: Proxy) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(proxy.socket)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n" * 2)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2


def test_heal_status_with_an_oversized_body_is_answered_once(dockerd: Dockerd) -> None:
    """Over the body limit a claimed request is forwarded; the proxy must not answer too."""
    workdir = Path(tempfile.mkdtemp(prefix="p-", dir="/tmp"))
    p = start_proxy(workdir, dockerd.socket)
    try:
        body = b"x" * (2 << 20)
        request = (
            b"GET /_heal/status HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(p.socket)
            # dockerd answers without reading it all, then the proxy closes.
            with contextlib.suppress(OSError):
                sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.count(b"HTTP/1.1 ") == 1, answer[:500]
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:500]  # dockerd's, not ours
    finally:
        p.stop()


class EarlyCloser(FakeDaemon):
    """An upstream that answers 413 with ``Connection: close`` before reading the body."""

    def __init__(self, path: str) -> None:
        self.connections = 0
        self.extra: list[bytes] = []
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            first = conn.recv(65536)
            if not first:
                return  # the proxy's start-up check of who serves this socket
            self.connections += 1
            if not first.startswith(b"POST"):
                self.extra.append(first)
                return
            conn.sendall(
                b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )


@pytest.fixture
def early() -> Iterator[tuple[EarlyCloser, Proxy]]:
    workdir = Path(tempfile.mkdtemp(prefix="p-", dir="/tmp"))
    upstream = EarlyCloser(str(workdir / "up.sock"))
    p = start_proxy(workdir / "p", str(workdir / "up.sock"), wait=False)
    wait_for(lambda: Path(p.socket).exists(), 20, "the proxy socket")
    yield upstream, p
    p.stop()
    upstream.close()


def test_body_left_after_the_daemon_hung_up_never_reaches_a_new_connection(
    early: tuple[EarlyCloser, Proxy],
) -> None:
    upstream, p = early
    wait_for(lambda: _connects(p.socket), 20, "the proxy to accept")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(p.socket)
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\nab")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 413 ")
        # The rest of the body, which holds what looks like a request of its own.
        with contextlib.suppress(OSError):  # the proxy may have closed already: fine
            sock.sendall(b"GET /smuggled HTTP/1.1\r\nHost: d\r\n\r\n" + b"y" * 1000)
        assert sock.recv(65536) == b"", "the proxy sends EOF once the answer is out"
    assert upstream.connections == 1
    assert upstream.extra == []


def _connects(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def test_busy_metrics_port_is_a_one_line_refusal_that_gives_the_socket_back(
    dockerd: Dockerd,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        workdir = Path(tempfile.mkdtemp(prefix="p-", dir="/tmp"))
        sock = workdir / "proxy.sock"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                f"--listen=unix://{sock}",
                f"--upstream=unix://{dockerd.socket}",
                f"--metrics-listen=127.0.0.1:{port}",
                "--log-level=warning",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    expected = f"docker-heal-proxy: cannot listen for metrics on 127.0.0.1:{port}: "
    assert lines == [expected + "Address already in use"], result.stderr
    assert not sock.exists()


def test_a_from_cycle_fails_the_heal_instead_of_hanging(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Two images whose Dockerfiles name each other: both creates must fail, promptly."""
    a, b = "127.0.0.1:1/dhp/cycle-a:1", "127.0.0.1:1/dhp/cycle-b:1"
    (tmp_path / "Dockerfile.a").write_text(f"FROM {b}\n")
    (tmp_path / "Dockerfile.b").write_text(f"FROM {a}\n")
    p = make_proxy(
        f"""
[[images]]
match = {toml_string(a)}
build = {{ context = {toml_string(tmp_path)}, dockerfile = "Dockerfile.a" }}
[[images]]
match = {toml_string(b)}
build = {{ context = {toml_string(tmp_path)}, dockerfile = "Dockerfile.b" }}
"""
    )
    runs = [
        subprocess.Popen(
            ["docker", "run", "--rm", "--network=none", image, "true"],
            env=p.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for image in (a, b)
    ]
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 125
        assert "cycle" in err and "Unable to find image" not in err, err
