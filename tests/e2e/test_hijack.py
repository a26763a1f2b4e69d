"""Hijacked connections: attach, exec and gRPC, where HTTP turns into a raw splice.

``docker run -i``, ``docker exec`` and BuildKit sessions leave HTTP after one
exchange: dockerd answers 101 (``Upgrade: tcp`` or ``h2c``) or a 200 with no
length that runs until close, and from then on bytes flow both ways with
half-closes meaning "stdin is done". A proxy that keeps parsing, buffers, or
turns a half-close into a full close hangs the CLI or loses output; so these
tests speak the raw protocol on one side and check every byte and every EOF.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import uuid
from collections.abc import Iterator

import pytest
from support import BUSYBOX, Proxy, docker

TIMEOUT = 30


@pytest.fixture(scope="module")
def running(proxy: Proxy, busybox: str) -> Iterator[str]:
    """A long-running container to exec into; removed at the end of the module."""
    name = f"dhp-hijack-{uuid.uuid4().hex[:8]}"
    docker(["run", "-d", "--name", name, BUSYBOX, "sleep", "600"], env=proxy.env)
    yield name
    docker(["rm", "-f", name], env=proxy.env, check=False)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def read_head(sock: socket.socket) -> tuple[int, list[bytes], bytes]:
    """Status, header lines, and whatever bytes already followed the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed inside the head: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return int(lines[0].split(b" ")[1]), lines[1:], rest


def read_to_eof(sock: socket.socket, buf: bytes = b"") -> bytes:
    """Everything up to the peer's EOF; a timeout here means the half-close was lost."""
    while data := sock.recv(65536):
        buf += data
    return buf


def demux(data: bytes) -> dict[int, bytes]:
    """Split dockerd's multiplexed stream (8-byte frame headers) into stdout and stderr."""
    out: dict[int, bytes] = {1: b"", 2: b""}
    i = 0
    while i + 8 <= len(data):
        kind, size = data[i], struct.unpack(">I", data[i + 4 : i + 8])[0]
        assert kind in (1, 2), f"bad frame header at {i}: {data[i : i + 8]!r}"
        assert i + 8 + size <= len(data), "a truncated frame"
        out[kind] += data[i + 8 : i + 8 + size]
        i += 8 + size
    assert i == len(data), "trailing bytes that are not a frame"
    return out


def read_stdout_until(sock: socket.socket, want: bytes, buf: bytes = b"") -> bytes:
    """Read frames until stdout holds ``want``: proves bytes flow before any EOF."""
    while True:
        complete = 0
        stdout = b""
        while complete + 8 <= len(buf):
            size = struct.unpack(">I", buf[complete + 4 : complete + 8])[0]
            if complete + 8 + size > len(buf):
                break
            if buf[complete] == 1:
                stdout += buf[complete + 8 : complete + 8 + size]
            complete += 8 + size
        if want in stdout:
            return buf
        data = sock.recv(65536)
        assert data, f"EOF before {want!r} arrived: {buf!r}"
        buf += data


def upgrade_headers(upgrade: bool, protocol: str = "tcp") -> str:
    return f"Connection: Upgrade\r\nUpgrade: {protocol}\r\n" if upgrade else ""


@pytest.mark.parametrize("upgrade", [True, False], ids=["101-upgrade", "200-raw-stream"])
def test_attach_splices_both_ways_and_passes_half_close(proxy: Proxy, upgrade: bool) -> None:
    """Attach to ``cat``: our bytes reach it, its echo reaches us, our EOF ends it."""
    name = f"dhp-attach-{uuid.uuid4().hex[:8]}"
    docker(["create", "-i", "--name", name, BUSYBOX, "cat"], env=proxy.env)
    try:
        with connect(proxy.socket) as sock:
            sock.sendall(
                f"POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
                f"HTTP/1.1\r\nHost: docker\r\n{upgrade_headers(upgrade)}\r\n".encode()
            )
            status, lines, rest = read_head(sock)
            assert status == (101 if upgrade else 200), lines
            assert b"Content-Type: application/vnd.docker.raw-stream" in lines
            docker(["start", name], env=proxy.env)
            sock.sendall(b"first line\n")
            got = read_stdout_until(sock, b"first line\n", rest)
            sock.sendall(b"second line\n")
            sock.shutdown(socket.SHUT_WR)  # stdin EOF: cat exits, dockerd ends the stream
            got = read_to_eof(sock, got)
        assert demux(got) == {1: b"first line\nsecond line\n", 2: b""}
        exit_code = docker(["wait", name], env=proxy.env).stdout.strip()
        assert exit_code == b"0"
    finally:
        docker(["rm", "-f", name], env=proxy.env, check=False)


def create_exec(proxy: Proxy, container: str, cmd: list[str]) -> str:
    body = json.dumps(
        {"AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Cmd": cmd}
    ).encode()
    with connect(proxy.socket) as sock:
        sock.sendall(
            f"POST /v1.41/containers/{container}/exec HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        status, _, rest = read_head(sock)
        answer = read_to_eof(sock, rest)
    assert status == 201, answer
    exec_id: str = json.loads(answer)["Id"]
    return exec_id


@pytest.mark.parametrize("upgrade", [True, False], ids=["101-upgrade", "200-raw-stream"])
def test_exec_start_splices_both_ways_and_passes_half_close(
    proxy: Proxy, running: str, upgrade: bool
) -> None:
    exec_id = create_exec(proxy, running, ["sh", "-c", "cat; echo done >&2; exit 5"])
    body = b'{"Detach":false,"Tty":false}'
    with connect(proxy.socket) as sock:
        sock.sendall(
            f"POST /v1.41/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{upgrade_headers(upgrade)}\r\n".encode()
            + body
        )
        status, lines, rest = read_head(sock)
        assert status == (101 if upgrade else 200), lines
        sock.sendall(b"ping\n")
        got = read_stdout_until(sock, b"ping\n", rest)
        sock.shutdown(socket.SHUT_WR)
        got = read_to_eof(sock, got)
    assert demux(got) == {1: b"ping\n", 2: b"done\n"}
    with connect(proxy.socket) as sock:
        sock.sendall(
            f"GET /v1.41/exec/{exec_id}/json HTTP/1.1\r\nHost: docker\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        status, _, rest = read_head(sock)
        info = json.loads(read_to_eof(sock, rest))
    assert (status, info["ExitCode"], info["Running"]) == (200, 5, False)


def frames(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Complete HTTP/2 frames in ``data``: (type, flags, payload)."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        if i + 9 + length > len(data):
            return
        yield data[i + 3], data[i + 4], data[i + 9 : i + 9 + length]
        i += 9 + length


def test_grpc_h2c_upgrade_speaks_http2(proxy: Proxy) -> None:
    """BuildKit's session endpoint: 101 to h2c, then real HTTP/2 frames both ways."""
    settings_type = 0x4
    with connect(proxy.socket) as sock:
        sock.sendall(
            b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        status, lines, rest = read_head(sock)
        assert status == 101, lines
        assert any(line.lower() == b"upgrade: h2c" for line in lines)
        empty_settings = b"\x00\x00\x00" + bytes([settings_type, 0]) + b"\x00\x00\x00\x00"
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings)
        buf = rest
        seen: list[tuple[int, int]] = []
        while (settings_type, 0) not in seen or (settings_type, 1) not in seen:
            data = sock.recv(65536)
            assert data, f"closed after frames {seen}"
            buf += data
            seen = [(kind, flags) for kind, flags, _ in frames(buf)]
        # The server's own SETTINGS comes first, then it ACKs ours.
        assert seen[0] == (settings_type, 0)


# -- the docker CLI --------------------------------------------------------------


def test_run_with_piped_stdin(proxy: Proxy, busybox: str) -> None:
    """``echo hi | docker run -i``: stdin EOF must reach cat, or the CLI hangs."""
    result = docker(["run", "-i", "--rm", BUSYBOX, "cat"], env=proxy.env, input=b"hi\n")
    assert result.stdout == b"hi\n"


def test_run_prints_output(proxy: Proxy, busybox: str) -> None:
    result = docker(["run", "--rm", BUSYBOX, "echo", "out"], env=proxy.env)
    assert result.stdout == b"out\n"


def test_run_keeps_stdout_and_stderr_apart(proxy: Proxy, busybox: str) -> None:
    result = docker(
        ["run", "--rm", BUSYBOX, "sh", "-c", "echo to-out; echo to-err >&2"], env=proxy.env
    )
    assert (result.stdout, result.stderr) == (b"to-out\n", b"to-err\n")


def test_exec_prints_output(proxy: Proxy, running: str) -> None:
    result = docker(["exec", running, "sh", "-c", "echo hello"], env=proxy.env)
    assert result.stdout == b"hello\n"


def test_20mb_through_cat_comes_back_identical(proxy: Proxy, busybox: str) -> None:
    data = os.urandom(20 * 1024 * 1024)
    result = docker(["run", "-i", "--rm", BUSYBOX, "cat"], env=proxy.env, input=data)
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_exit_codes_reach_the_cli(proxy: Proxy, running: str) -> None:
    run = docker(["run", "--rm", BUSYBOX, "sh", "-c", "exit 7"], env=proxy.env, check=False)
    assert run.returncode == 7, run.stderr
    exec_ = docker(["exec", running, "sh", "-c", "exit 3"], env=proxy.env, check=False)
    assert exec_.returncode == 3, exec_.stderr
    piped = docker(
        ["run", "-i", "--rm", BUSYBOX, "sh", "-c", "cat >/dev/null; exit 9"],
        env=proxy.env,
        input=b"x" * 100_000,
        check=False,
    )
    assert piped.returncode == 9, piped.stderr
