"""Pass-through exactness: what the client sends is what the daemon gets, and back.

The proxy's promise for every request it does not heal is that it is not
there. Clients negotiate on response headers (``Api-Version``, ``Ostype``),
encode filters as JSON in the query, and send credentials in big headers, so
any rewrite, re-encoding or dropped header changes behaviour somewhere. The
checks compare the proxy against the daemon directly, or against a fake
upstream that echoes the raw bytes it received, so "byte-identical" is tested
literally.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import tarfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    FakeDaemon,
    MakeProxyTo,
    Proxy,
    UnixHTTPConnection,
    accepting,
    docker,
    image_exists,
    raw_request,
    wait_for,
)


def split_response(raw: bytes) -> tuple[list[bytes], bytes]:
    """Head lines (status line first) and everything after the blank line."""
    end = raw.find(b"\r\n\r\n")
    assert end > 0, f"no complete response head in {raw[:200]!r}"
    return raw[:end].split(b"\r\n"), raw[end + 4 :]


def without_date(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if not line.lower().startswith(b"date:")]


def calling_lines(daemon: Dockerd, marker: str) -> list[str]:
    """The request targets dockerd's debug log shows for requests containing ``marker``."""
    found = re.findall(r'msg="Calling (\w+ [^"]*)"', daemon.log_path.read_text(errors="replace"))
    return [line for line in found if marker in line]


def wait_calls(daemon: Dockerd, marker: str, count: int = 1) -> list[str]:
    wait_for(lambda: len(calling_lines(daemon, marker)) >= count, 10, f"dockerd to log {marker}")
    return calling_lines(daemon, marker)


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- a fake upstream that echoes the raw bytes it got ---------------------------


class EchoUpstream(FakeDaemon):
    """Answers each request with a body that is exactly the bytes it received.

    The test says how many bytes the next request has (``expect``), so the
    fake needs no HTTP parser of its own and cannot share the proxy's bugs.
    Its answers carry odd but valid headers, to show they come back as sent.
    """

    HEAD_EXTRA = b"X-Odd-Case:  Value With  Spaces \r\nServer: fake/1.0\r\nX-Dup: 1\r\nX-Dup: 2\r\n"

    def __init__(self, path: str) -> None:
        self.expect = 0
        self.sent: list[bytes] = []
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while not buf or len(buf) < self.expect:
                    data = conn.recv(1 << 16)
                    if not data:
                        return
                    buf += data
                got, buf = buf[: self.expect], buf[self.expect :]
                # A HEAD answer announces the length a GET's body would have, and has none.
                answer = (
                    b"HTTP/1.1 200 OK\r\n"
                    + self.HEAD_EXTRA
                    + b"Content-Length: %d\r\n\r\n" % len(got)
                    + (b"" if got.startswith(b"HEAD ") else got)
                )
                self.sent.append(answer)
                conn.sendall(answer)


@pytest.fixture
def echo(make_proxy_to: MakeProxyTo, tmp_path: Path) -> Iterator[tuple[EchoUpstream, Proxy]]:
    path = str(Path(tmp_path) / "echo.sock")
    upstream = EchoUpstream(path)
    # The fake does not answer /_ping by itself, so do not wait for one.
    proxy = make_proxy_to(path, wait=False)
    wait_for(lambda: accepting(proxy), 20, "the proxy to accept")
    yield upstream, proxy
    upstream.close()


def through(proxy: Proxy, upstream: EchoUpstream, request: bytes) -> bytes:
    """Send one request on a fresh connection; return the full answer the client got."""
    upstream.expect = len(request)
    before = len(upstream.sent)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(proxy.socket)
        sock.sendall(request)
        got = b""
        while len(upstream.sent) == before or len(got) < len(upstream.sent[-1]):
            data = sock.recv(1 << 16)
            assert data, f"the proxy closed early after {got!r}"
            got += data
        return got


ODD_REQUESTS = {
    "odd headers": (
        b"GET /v1.41/containers/json?filters=%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D&x=%2F HTTP/1.1\r\n"
        b"Host: docker\r\n"
        b"x-lower: a\r\nX-UPPER: B\r\nX-Spaces:   padded   \r\nX-Dup: 1\r\nX-Dup: 2\r\n"
        b"X-Empty:\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\n\r\n"
    ),
    "content-length body": (
        b"POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n"
        b'{"Image": "none"}'
    ),
    "chunked body": (
        b"POST /v1.41/build?t=a%2Fb%3A1 HTTP/1.1\r\nHost: docker\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    ),
    "put": b"PUT /v1.41/containers/c/archive?path=%2Ftmp HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    "delete": b"DELETE /v1.41/containers/c?force=1&v=1 HTTP/1.1\r\nHost: docker\r\n\r\n",
    "patch": b"PATCH /anything/at/all HTTP/1.1\r\nHost: docker\r\nContent-Length: 1\r\n\r\nx",
    "options": b"OPTIONS * HTTP/1.1\r\nHost: docker\r\n\r\n",
    "http/1.0": b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
}


@pytest.mark.parametrize("name", list(ODD_REQUESTS))
def test_request_and_response_pass_byte_identical(
    echo: tuple[EchoUpstream, Proxy], name: str
) -> None:
    """The upstream sees exactly the client's bytes; the client exactly the upstream's."""
    upstream, proxy = echo
    request = ODD_REQUESTS[name]
    got = through(proxy, upstream, request)
    assert got == upstream.sent[-1]
    _, body = split_response(got)
    assert body == request


def test_head_answer_passes_without_a_body(echo: tuple[EchoUpstream, Proxy]) -> None:
    """A HEAD answer announces a length but carries no body: the proxy must not
    wait for one, nor take the next answer's bytes for it."""
    upstream, proxy = echo
    head = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
    follow = b"GET /_pings HTTP/1.1\r\nHost: docker\r\n\r\n"
    assert len(head) == len(follow)
    upstream.expect = len(head)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(proxy.socket)
        sock.sendall(head + follow)
        got = b""
        while not got.endswith(follow):
            data = sock.recv(1 << 16)
            assert data, f"the proxy closed early after {got!r}"
            got += data
    lines, after = split_response(got)
    # The client is told the announced length, and the next answer follows at once.
    assert b"Content-Length: %d" % len(head) in lines
    next_lines, next_body = split_response(after)
    assert next_lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: %d" % len(follow) in next_lines
    assert next_body == follow
    assert got == upstream.sent[0] + upstream.sent[1]


def test_keep_alive_requests_stay_in_order(echo: tuple[EchoUpstream, Proxy]) -> None:
    """Pipelined requests on one connection arrive intact and answer in order."""
    upstream, proxy = echo
    one = b"GET /one HTTP/1.1\r\nHost: docker\r\n\r\n"
    two = b"GET /two HTTP/1.1\r\nHost: docker\r\n\r\n"
    assert len(one) == len(two)
    upstream.expect = len(one)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(proxy.socket)
        sock.sendall(one + two)
        got = b""
        while got.count(b"HTTP/1.1 200 OK") < 2 or not got.endswith(two):
            data = sock.recv(1 << 16)
            assert data, got
            got += data
    assert got == upstream.sent[0] + upstream.sent[1]
    assert got.index(one) < got.index(two)


# -- against the real daemon ---------------------------------------------------


def test_query_strings_reach_the_daemon_byte_exact(proxy: Proxy, dockerd: Dockerd) -> None:
    """Percent-encoding is not normalised: dockerd logs the very target the client sent."""
    marker = uuid.uuid4().hex
    filters = "%7B%22label%22%3A%5B%22dhp%3D" + marker + "%22%5D%7D"
    targets = [
        f"/v1.41/containers/json?all=1&filters={filters}",
        f"/v1.41/images/127.0.0.1:1%2Fdhp%2Fbusybox:1/json?m={marker}",
        f"/v1.41/images/json?filters={filters}&m=%2f%2F",
        f"/_ping?m={marker}",
    ]
    for target in targets:
        raw = raw_request(
            proxy.socket,
            f"GET {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode(),
        )
        lines, _ = split_response(raw)
        assert lines[0] == b"HTTP/1.1 200 OK", (target, raw[:300])
    assert wait_calls(dockerd, marker, len(targets)) == [f"GET {t}" for t in targets]


def test_cli_query_reaches_the_daemon_as_the_cli_sent_it(
    proxy: Proxy, dockerd: Dockerd, busybox: str
) -> None:
    """The docker CLI's JSON filters arrive the same with and without the proxy."""
    marker = uuid.uuid4().hex
    args = ["ps", "-a", "--filter", f"label=dhp={marker}", "--filter", "status=exited"]
    docker(args, env=dockerd.env)
    docker(args, env=proxy.env)
    direct, proxied = wait_calls(dockerd, marker, 2)
    assert direct == proxied
    query = direct.split("?", 1)[1]
    assert "filters=" in query and "%22" in query


@pytest.mark.parametrize(
    "request_line", ["GET /_ping", "HEAD /_ping", "GET /v1.41/version", "GET /v1.41/info"]
)
def test_response_headers_are_the_daemons(
    proxy: Proxy, dockerd: Dockerd, request_line: str
) -> None:
    """Same header lines, same order, same values (bar Date) as asking dockerd directly."""
    request = f"{request_line} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()
    direct_lines, direct_body = split_response(raw_request(dockerd.socket, request))
    proxy_lines, proxy_body = split_response(raw_request(proxy.socket, request))
    assert without_date(proxy_lines) == without_date(direct_lines)
    names = {line.split(b":", 1)[0].lower() for line in proxy_lines[1:]}
    assert {b"api-version", b"ostype", b"docker-experimental", b"server"} <= names
    if request_line.startswith("HEAD"):
        assert proxy_body == direct_body == b""
    elif "info" not in request_line:  # info has clocks and counters in it
        assert proxy_body == direct_body


def test_head_ping_has_no_body_and_the_connection_goes_on(proxy: Proxy) -> None:
    """After HEAD /_ping the very next bytes are the next response, not a body."""
    request = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
    follow = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    raw = raw_request(proxy.socket, request + follow)
    head_end = raw.index(b"\r\n\r\n") + 4
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw[head_end:].startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\nOK")


def test_256kb_registry_config_header(proxy: Proxy, dockerd: Dockerd, busybox: str) -> None:
    """``X-Registry-Config`` carries every registry credential; big ones must get through."""
    auths = {"registry.invalid": {"username": "u", "password": "p" * 197_000}}
    header = base64.urlsafe_b64encode(json.dumps(auths).encode()).decode()
    assert 256 * 1024 <= len(header) < 270 * 1024
    context = tar_of({"Dockerfile": f"FROM {BUSYBOX}\nLABEL dhp.big-header=1\n".encode()})
    # Under 127.0.0.1:1, so that no later use of the tag can reach a real registry.
    tags = {name: f"127.0.0.1:1/dhp/big-header:{name}" for name in ("direct", "proxy")}
    results = {}
    try:
        for name, path in (("direct", dockerd.socket), ("proxy", proxy.socket)):
            conn = UnixHTTPConnection(path, timeout=60)
            conn.request("GET", "/_ping", headers={"X-Registry-Config": header})
            ping = conn.getresponse()
            assert (ping.status, ping.read()) == (200, b"OK"), name
            conn.request(
                "POST",
                "/v1.41/build?t=" + urllib.parse.quote(tags[name], safe=""),
                body=context,
                headers={"X-Registry-Config": header, "Content-Type": "application/x-tar"},
            )
            build = conn.getresponse()
            results[name] = (build.status, b"Successfully built" in build.read())
            conn.close()
        assert results["proxy"] == results["direct"] == (200, True)
        assert all(image_exists(dockerd.env, tag) for tag in tags.values())
    finally:
        docker(["rmi", "-f", *tags.values()], env=dockerd.env, check=False)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_request_bodies_in_both_framings(
    proxy: Proxy, dockerd: Dockerd, busybox: str, chunked: bool
) -> None:
    """``PUT /archive`` with a Content-Length and with chunks: the file lands intact."""
    name = f"dhp-body-{uuid.uuid4().hex[:8]}"
    docker(["create", "--name", name, BUSYBOX, "true"], env=proxy.env)
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
        archive = tar_of({"payload.bin": payload})
        conn = UnixHTTPConnection(proxy.socket)
        if chunked:
            pieces = iter([archive[i : i + 70_000] for i in range(0, len(archive), 70_000)])
            conn.request(
                "PUT",
                f"/v1.41/containers/{name}/archive?path=%2F",
                body=pieces,
                headers={"Content-Type": "application/x-tar"},
                encode_chunked=True,
            )
        else:
            conn.request("PUT", f"/v1.41/containers/{name}/archive?path=%2F", body=archive)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
        conn.close()
        copied = docker(["cp", f"{name}:/payload.bin", "-"], env=proxy.env).stdout
        with tarfile.open(fileobj=io.BytesIO(copied)) as tar:
            member = tar.extractfile("payload.bin")
            assert member is not None and member.read() == payload
    finally:
        docker(["rm", "-f", name], env=proxy.env, check=False)


def test_everyday_cli_commands_through_the_proxy(
    proxy: Proxy, tmp_path: Path, busybox: str
) -> None:
    """GET, HEAD, POST, PUT and DELETE as the CLI sends them, for the usual commands."""
    env = proxy.env
    name = f"dhp-cli-{uuid.uuid4().hex[:8]}"
    tag = f"127.0.0.1:1/dhp/cli-tag:{name}"
    try:
        docker(["tag", BUSYBOX, tag], env=env)
        # No network, as everywhere here: the daemon has no bridge, and 26
        # refuses a rename of a container on the missing default network.
        argv = ["create", "--name", name, "--network=none", "--label", "dhp=cli", tag]
        cid = docker([*argv, "sleep", "30"], env=env)
        cid_text = cid.stdout.decode().strip()
        docker(["start", name], env=env)
        running = docker(["inspect", "-f", "{{.State.Running}}", name], env=env).stdout
        assert running.strip() == b"true"
        (tmp_path / "in.txt").write_text("copied in\n")
        docker(["cp", str(tmp_path / "in.txt"), f"{name}:/in.txt"], env=env)  # HEAD + PUT archive
        out = docker(["exec", name, "cat", "/in.txt"], env=env).stdout
        assert out == b"copied in\n"
        docker(["cp", f"{name}:/in.txt", str(tmp_path / "out.txt")], env=env)  # GET archive
        assert (tmp_path / "out.txt").read_text() == "copied in\n"
        listed = docker(["ps", "-q", "--no-trunc", "--filter", "label=dhp=cli"], env=env).stdout
        assert cid_text.encode() in listed
        docker(["rename", name, name + "-2"], env=env)
        docker(["volume", "create", name], env=env)
        assert name.encode() in docker(["volume", "ls", "-q"], env=env).stdout
        docker(["volume", "rm", name], env=env)
        docker(["rm", "-f", name + "-2"], env=env)  # DELETE
        docker(["rmi", tag], env=env)
        assert docker(["inspect", name + "-2"], env=env, check=False).returncode != 0
        assert not image_exists(env, tag)
    finally:
        docker(["rm", "-f", name, name + "-2"], env=env, check=False)
        docker(["volume", "rm", "-f", name], env=env, check=False)
        docker(["rmi", "-f", tag], env=env, check=False)
