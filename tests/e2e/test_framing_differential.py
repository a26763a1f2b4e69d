"""The proxy frames requests as dockerd does, or refuses them: checked against dockerd.

A request the proxy and dockerd cut differently lets a second request ride
past the proxy inside the first one's body. The unit tests pin each rule of
``http1``; here Hypothesis draws heads and bodies, valid and not, and each is
judged by the real daemon, one request at a time: the bytes the proxy frames
as that request go straight to dockerd followed by a sentinel request that
asks to close, and dockerd must answer exactly the request and then the
sentinel. An extra answer in between is a request the proxy did not see; a
missing sentinel is one dockerd read further than the proxy. The one allowed
difference is Go refusing the request itself (plain-text 400 or 501, or 417,
then close): it reads nothing after it, so nothing can be smuggled. A request
the proxy refuses must get the real proxy's Docker-shaped 400 and a close.
Examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from framing import (
    PING_CLOSE,
    SENTINEL,
    SMUGGLED,
    SMUGGLED_PAYLOADS,
    Answer,
    answers,
    frame,
    go_refusal,
    is_sentinel,
    requests,
)
from hypothesis import example, given, settings
from support import Dockerd, MakeProxy, Proxy, docker, remove, tagging_script, toml_string

from proxy.wire.routes import api_path


def exchange(path: str, data: bytes, timeout: float = 5) -> tuple[bytes, bool]:
    """Send ``data`` on one connection; read until the server closes or ``timeout`` passes.

    Returns what came back and whether the server closed.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        out = bytearray()
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return bytes(out), True
            if not chunk:
                return bytes(out), True
            out += chunk
        return bytes(out), False


def assert_refused_with_400(answer: Answer, closed: bool) -> None:
    """A Docker-shaped 400: JSON with a message, then the proxy closes."""
    assert answer.head.status == 400, answer.raw
    assert b"content-type: application/json" in answer.head.raw.lower()
    assert json.loads(answer.raw[len(answer.head.raw) :])["message"].startswith("bad request: ")
    assert closed


def statuses(heads: list[Answer]) -> list[int]:
    return [a.head.status for a in heads]


def judge(direct: list[Answer], closed: bool, expected: int, stream: bytes) -> None:
    """dockerd cut ``stream`` where the proxy does, or Go refused its first request.

    ``expected`` is 2 for a framed request dockerd keeps the connection open
    after (its answer, then the sentinel's), 1 for one that closes, 0 for one
    the proxy waits to finish (dockerd must wait too: no close, and no answer
    but the request's own, which a handler that never reads its body, like
    ``/_ping``'s, gives before the body ends). A single Go refusal as the
    first answer also agrees: Go read nothing after it, so nothing can ride
    past the proxy.
    """
    if len(direct) == 1 and go_refusal(direct[0]) and closed:
        return
    if expected == 0 and len(direct) == 1 and not is_sentinel(direct[0]) and not closed:
        return
    sentinel = expected < 2 or (len(direct) == 2 and is_sentinel(direct[1]))
    assert len(direct) == expected and closed == (expected > 0) and sentinel, (
        f"dockerd answered {statuses(direct)} (closed: {closed}); "
        f"the proxy frames {stream!r} as {expected} answers"
    )


_TE_ON_HTTP10 = (
    b"POST /_ping HTTP/1.0\r\nHost: d\r\nConnection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
)
_UNFINISHED = b"GET /_ping HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\nabc\r\n"


@example(request=_UNFINISHED)
@example(request=_UNFINISHED.replace(b"Host: d\r\n", b"Host: d\r\nConnection: close\r\n"))
@example(request=_UNFINISHED.replace(b"Host: d\r\n", b""))
@example(request=_TE_ON_HTTP10)
@example(request=SMUGGLED % (len(SMUGGLED_PAYLOADS[0]), SMUGGLED_PAYLOADS[0]))
@example(request=b"GET /_ping HTTP/1.1\r\nHost: d\r\nExpect: nothing\r\n\r\n")
@settings(max_examples=200, deadline=None, derandomize=True)
@given(request=requests())
def test_proxy_refuses_or_frames_like_dockerd(
    dockerd: Dockerd, proxy: Proxy, request: bytes
) -> None:
    framing = frame(request + SENTINEL)
    if framing.heads:
        # Judge the first request alone: exactly the bytes the proxy frames as
        # it, then the sentinel. Whatever the proxy makes of any leftover is
        # another request's framing, drawn in another example.
        stream = (request + SENTINEL)[: framing.ends[0]] + SENTINEL
        got, closed = exchange(dockerd.socket, stream)
        direct = answers(got)
        judge(direct, closed, 1 if framing.heads[0].close else 2, stream)
        got, closed = exchange(proxy.socket, stream)
        assert statuses(answers(got)) == statuses(direct) and closed, (stream, got)
        return
    if framing.refused is not None:
        got, closed = exchange(proxy.socket, request + SENTINEL)
        (answer,) = answers(got)
        assert_refused_with_400(answer, closed)
        return
    # Unfinished even with the sentinel read as body (a large chunk size, say):
    # both wait for the rest; that silence is bounded by a short read deadline.
    got, direct_closed = exchange(dockerd.socket, request + SENTINEL, 1)
    direct = answers(got)
    judge(direct, direct_closed, 0, request)
    got, closed = exchange(proxy.socket, request + SENTINEL, 1)
    assert statuses(answers(got)) == statuses(direct) and closed == direct_closed, request


_PREFIXES = ["", "/v1.41", "/v1.41.0", "/v1.41.0.0", "/v1.41.", "/v.", "/v1", "/v01.41", "/V1.41"]
_PREFIXES += [
    "/v1.41/v1.41",
    "/vx",
    "/v1.4a",
    "/%761.41",
    "/v1%2e41",
    "http://d/v1.41",
    "http:/v1.41",
]
_PREFIXES += ["http://d", "HTTP://d:80", "v1.41", "//v1.41", "/v1.41/.", "/v1.41/x/..", "/v1.41/"]
_SUFFIXES = [
    "/version",
    "/%76ersion",
    "%2Fversion",
    "/versio%6e",
    "/version/",
    "/version/.",
    "/ver%zzsion",
]
_SUFFIXES += ["/version%", "/Version", "/version?x=1", "/version#x"]


def test_paths_route_like_dockerd(dockerd: Dockerd) -> None:
    """``api_path`` sends a path to ``/version`` exactly when dockerd's router does.

    Every prefix with every suffix. Routed means answered by the version
    endpoint, or refused by the version check that runs after routing
    ("client version ... is too old").
    """
    wrong = []
    for target in (p + s for p, s in itertools.product(_PREFIXES, _SUFFIXES)):
        request = b"GET %s HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n" % target.encode()
        (answer,) = answers(exchange(dockerd.socket, request)[0])
        body = answer.raw[len(answer.head.raw) :]
        routed = b'"ApiVersion"' in body or b"client version" in body
        if (api_path(target.partition("?")[0]) == "/version") != routed:
            wrong.append((target, answer.head.status))
    assert wrong == []


def test_the_smuggled_create_is_refused_and_creates_nothing(
    dockerd: Dockerd, busybox: str, proxy: Proxy
) -> None:
    """The issue's example: a GET whose head ends in bare LFs, with a create after it.

    dockerd alone runs both (checked first, so the test can fail); through the
    proxy the head is refused with a 400 and no container is created.
    """
    label = f"dhp.smuggled={uuid.uuid4().hex}"
    body = json.dumps({"Image": busybox, "Cmd": ["true"], "Labels": dict([label.split("=")])})
    smuggled = SMUGGLED % (len(body), body.encode())
    created = ["ps", "-aq", "--filter", f"label={label}"]

    direct = answers(exchange(dockerd.socket, smuggled + PING_CLOSE)[0])
    assert statuses(direct) == [200, 201, 200], "dockerd no longer runs the smuggled create"
    docker(["rm", *docker(created, env=dockerd.env).stdout.decode().split()], env=dockerd.env)

    got, closed = exchange(proxy.socket, smuggled + PING_CLOSE)
    (answer,) = answers(got)
    assert_refused_with_400(answer, closed)
    assert b"bare LF" in answer.raw
    assert docker(created, env=dockerd.env).stdout.strip() == b""


@pytest.mark.parametrize(
    "partial",
    [
        b"GARBAGE\r\n",
        b"GET /_ping HTTP/1.1\r\nNo colon here\r\n",
        b"GET /_ping HTTP/1.1\r\n folded\r\n",
    ],
)
def test_a_bad_line_is_refused_before_the_head_ends_as_dockerd_does(
    dockerd: Dockerd, proxy: Proxy, partial: bytes
) -> None:
    """Go answers these lines as soon as it has read them; a client may wait for that."""
    direct, closed = exchange(dockerd.socket, partial)
    assert direct.startswith(b"HTTP/1.1 400 ") and closed, "dockerd no longer answers at once"
    got, closed = exchange(proxy.socket, partial)
    (answer,) = answers(got)
    assert_refused_with_400(answer, closed)


def healing_proxy(
    make_proxy: MakeProxy, dockerd: Dockerd, busybox: str, tmp_path: Path, image: str
) -> tuple[Proxy, Path]:
    """A proxy with one recipe that tags ``image`` and notes each run in the marker."""
    marker = tmp_path / "marker"
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, image)
    proxy = make_proxy(
        f"state_dir = {toml_string(tmp_path / 'state')}\n"
        f"[[images]]\nmatch = {toml_string(image)}\ncommand = [{toml_string(script)}]\n"
    )
    remove(dockerd.env, image)
    return proxy, marker


def create_request(path: bytes, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # A create to dockerd under any version prefix of digits and dots.
        (b"/v1.41.0/containers/create", b'{"Image": "%s", "Cmd": ["true"]}'),
        # dockerd's JSON decoder takes "image" for "Image", and the last one wins.
        (b"/v1.41/containers/create", b'{"Image": "", "image": "%s", "Cmd": ["true"]}'),
    ],
    ids=["long version prefix", "lower-case image key"],
)
def test_a_create_dockerd_reads_as_one_heals(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path, path: bytes, body: bytes
) -> None:
    image = "127.0.0.1:1/dhp/readasone:1"
    proxy, marker = healing_proxy(make_proxy, dockerd, busybox, tmp_path, image)
    got, _ = exchange(proxy.socket, create_request(path, body % image.encode()), 120)
    (answer,) = answers(got)
    assert answer.head.status == 201, answer.raw
    assert marker.read_text() == "run\n"
    container = json.loads(answer.raw[len(answer.head.raw) :])["Id"]
    docker(["rm", container], env=dockerd.env)


def test_a_pull_with_its_parameters_in_a_form_body_heals(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """dockerd pulls what a form body names, ahead of the query: so does the proxy."""
    image = "127.0.0.1:1/dhp/formpull:1"
    proxy, marker = healing_proxy(make_proxy, dockerd, busybox, tmp_path, image)
    form = b"fromImage=127.0.0.1%3A1%2Fdhp%2Fformpull&tag=1"
    pull = (
        b"POST /v1.41/images/create?fromImage=elsewhere&tag=2 HTTP/1.1\r\nHost: d\r\n"
        b"Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    got, _ = exchange(proxy.socket, pull, 120)
    (answer,) = answers(got)
    assert answer.head.status == 200, answer.raw
    assert b"docker-heal-proxy" in answer.raw and b"errorDetail" not in answer.raw, answer.raw
    assert marker.read_text() == "run\n"
