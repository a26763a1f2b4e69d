"""The route a policy judges is the route dockerd takes: checked against dockerd.

A policy reads a request as ``routes.locate`` places it; if dockerd took the
request elsewhere, an allowed route could hide a refused one. So every route
of the table gets a reference answer from the real daemon, asked on its plain
target (``/v1.41/containers/ID/json``), and none may be dockerd's 404 "page
not found" (a row dockerd does not register). Reads name objects that exist
(a created container, the busybox image, the ``none`` network, a volume), and
the query asks for everything a read can say, so that their answers differ
route by route: a list of containers is not a list of images, an inspect is
not an export; under each shipped profile no allowed read answers as a
refused one does. Writes name objects that do not exist, so nothing changes;
they answer alike ("No such container"), so among themselves they are told
apart by the table alone.

Then Hypothesis bends plain targets (``hostile``) and each bent target is sent
to dockerd as it stands. One ``locate`` places on a route must not be routed
nowhere by dockerd (a redirect, "page not found", Go's 400), and must get
that route's reference answer when its ids are the plain ones; with other
ids (a bend may change one), the answer to the route's target written
cleanly with those ids. What ``locate`` calls ``other`` every policy
refuses, so dockerd may do with it what it likes. The last test plants a
mis-route and sees it caught.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hostile import ROWS, pattern, plain, targets
from hypothesis import HealthCheck, example, given, settings
from support import Dockerd, docker

from proxy.wire.policy import policies_from_config
from proxy.wire.routes import Located, api_path, locate, template

EXISTING = {
    "containers": "dhp-route-diff",
    "images": "127.0.0.1:1/dhp/busybox:1",
    "networks": "none",
    "volumes": "dhp-route-diff",
}
MISSING = {
    kind: "dhp-no-such" for kind in ("containers", "exec", "images", "networks", "volumes")
} | {
    "plugins": "dhp/no-such:1",
    "distribution": "dhp/no-such:1",
    "checkpoints": "cp1",
    **{kind: "dhpnosuch" for kind in ("services", "nodes", "tasks", "secrets", "configs")},
}
QUERY = "?all=1&stream=0&since=1&until=2&size=1"
"""Every container, one stats sample, the events of one second of 1970: all ends."""

SKIPPED = {
    "GET /images/search",  # asks Docker Hub
    "GET /distribution/{name}/json",  # asks a registry
    "GET /containers/{id}/attach/ws",  # a websocket
    "POST /containers/{id}/attach",  # a hijack
    "POST /exec/{id}/start",  # a hijack
    "POST /session",  # a hijack
    "POST /grpc",  # HTTP/2
    "POST /auth",  # asks a registry
    "POST /plugins/pull",  # asks a registry
    "POST /images/create",  # may ask a registry or import
    "POST /images/load",  # reads an archive
    "POST /build",  # builds
    "POST /swarm/init",  # makes a swarm
    "POST /swarm/join",  # asks a swarm
    "POST /plugins/create",  # reads an archive
}
"""Routes whose plain target is not a harmless question; never drawn."""

ASKED = [
    row
    for row in ROWS
    if f"{row.partition(' ')[0]} {template(row)}" not in SKIPPED
    # A write with no id in it acts on the whole daemon (prune, create, swarm...).
    and (row.startswith(("GET ", "HEAD ")) or "{" in row)
]


def ids_for(method: str) -> dict[str, str]:
    return {**MISSING, **EXISTING} if method in ("GET", "HEAD") else MISSING


def asked(row: str, version: str = "/v1.41") -> tuple[str, str]:
    """A route's plain target, with its query."""
    method, target = plain(row, ids_for(row.partition(" ")[0]), version)
    return method, target + QUERY


PLAINS = [asked(row) for row in ASKED]


@dataclass(frozen=True)
class Answer:
    status: int
    what: str
    """The part of the body that tells a route from another: a JSON error's
    message, a JSON value's shape (keys), or the content type."""


def ask(socket_path: str, method: str, target: str) -> Answer:
    """One request on its own connection, HTTP/1.0 so that the body ends at the close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        body = b"Content-Length: 0\r\n" if method not in ("GET", "HEAD") else b""
        sock.sendall(f"{method} {target} HTTP/1.0\r\n".encode("latin-1") + body + b"\r\n")
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, data = bytes(raw).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    kind = re.search(rb"(?im)^content-type: *([^;\r\n]*)", head)
    content_type = kind[1].decode() if kind else ""
    if content_type != "application/json" or not data.strip():
        return Answer(status, content_type)
    value = json.loads(data.splitlines()[0])
    if isinstance(value, dict) and set(value) == {"message"}:
        return Answer(status, value["message"])
    if isinstance(value, list):
        value = value[0] if value else {}
    return Answer(
        status, " ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
    )


def nowhere(answer: Answer) -> bool:
    """Whether dockerd routed the request nowhere: Go's 400 for a bad URL, mux's
    redirect of an unclean path, or dockerd's 404 "page not found"."""
    return (
        answer.status == 301
        or answer == Answer(404, "page not found")
        or (answer.status == 400 and answer.what == "text/plain")
    )


ROW_OF = {f"{row.partition(' ')[0]} {template(row)}": row for row in ASKED}
"""The row of each route asked about, by ``locate``'s name for it."""


class Judge:
    """Compares dockerd's answers to a bent target and to its route's plain one."""

    def __init__(self, dockerd: Dockerd, where: Callable[[str, str], Located]) -> None:
        self.socket = dockerd.socket
        self.where = where
        self._asked: dict[tuple[str, str], Answer] = {}

    def answer(self, method: str, target: str) -> Answer:
        key = (method, target)
        if key not in self._asked:
            self._asked[key] = ask(self.socket, method, target)
        return self._asked[key]

    def mismatch(self, method: str, bent: str) -> str | None:
        """Why dockerd did not take ``bent`` where ``where`` says; None when it did."""
        located = self.where(method, bent)
        row = ROW_OF.get(located.route)
        if row is None:  # other, which every policy refuses, or a route never asked about
            return None
        kind = template(row).split("/")[1]
        ids = ids_for(method)
        plain_ids = {
            v: ids["checkpoints" if v == "checkpoint" else kind] for v in pattern(row).groupindex
        }
        prefix = "" if located.version is None else f"/v{located.version}"
        match = pattern(row).fullmatch(api_path(bent.partition("?")[0]) or "")
        if match is None or match.groupdict() == plain_ids:
            # The plain ids (or a table that places the target where its pattern
            # does not even fit): the route's reference answer.
            reference = asked(row, prefix)[1]
        else:
            values = match.groupdict()
            filled = re.sub(r"\{(\w+)\}", lambda m: quote(values[m[1]], safe=""), template(row))
            reference = prefix + filled + QUERY
        got, expected = self.answer(method, bent), self.answer(method, reference)
        if nowhere(got) and not nowhere(self.answer(*asked(row))):
            return f"{method} {bent!r}: dockerd routed it nowhere ({got}), not to {located.route}"
        if got != expected:
            return f"{method} {bent!r}: dockerd answered {got}, {located.route} answers {expected}"
        return None


@pytest.fixture(scope="module")
def objects(dockerd: Dockerd) -> Iterator[None]:
    docker(
        ["create", "--name", EXISTING["containers"], EXISTING["images"], "true"], env=dockerd.env
    )
    docker(["volume", "create", EXISTING["volumes"]], env=dockerd.env)
    yield
    docker(["rm", "-f", EXISTING["containers"]], env=dockerd.env, check=False)
    docker(["volume", "rm", EXISTING["volumes"]], env=dockerd.env, check=False)


@pytest.fixture(scope="module")
def judge(dockerd: Dockerd, objects: None) -> Judge:
    return Judge(dockerd, locate)


def test_every_route_asked_is_a_route_of_dockerd(judge: Judge, dockerd: Dockerd) -> None:
    """A row dockerd does not register answers 404 "page not found" on its plain target.

    Two rows are one release's only: 20.10's copy (gone in 26), 26's volume update.
    """
    only = {"20.10": {"PUT /volumes/{name}"}, "26": {"POST /containers/{id}/copy"}}
    absent = {
        f"{method} {template(row)}"
        for row, (method, target) in zip(ASKED, PLAINS, strict=True)
        if judge.answer(method, target) == Answer(404, "page not found")
    }
    assert absent == only[dockerd.release.name]


def test_allowed_and_refused_reads_answer_apart(judge: Judge) -> None:
    """Under each shipped profile, no allowed read's reference answer is a refused read's.

    Were the table to place a refused read's target on an allowed template, the
    answers would differ and the differential test below would see it. Writes
    name missing objects, so they answer alike ("No such container"): among
    themselves they are told apart by the table only, from reads and from
    routing nowhere by their answers.
    """
    references = {
        (method, target): judge.answer(method, target)
        for method, target in PLAINS
        if method in ("GET", "HEAD")
    }
    for policy in policies_from_config({}).values():
        allowed = {r for r in references if not policy.judge(*r, []).denied}
        for read in allowed:
            twins = [
                other
                for other in references
                if other not in allowed and references[other] == references[read]
            ]
            assert not twins, f"{policy.name}: {read} answers as {twins}: {references[read]}"


@example(drawn=("GET", "", "/v1.41/containers%2Fjson" + QUERY))
@example(drawn=("GET", "", "http://d/v1.41/containers/dhp-route-diff/json" + QUERY))
@example(drawn=("GET", "", "/v1.41.0/images/127.0.0.1:1%2Fdhp%2Fbusybox:1/json" + QUERY))
@example(drawn=("GET", "", "/v1.41/containers/dhp-route-diff%2Farchive/json" + QUERY))
@example(drawn=("GET", "", "/v1.41/containers/dhp-route-diff/json#/../archive" + QUERY))
@example(drawn=("GET", "", "/v1.41/images/127.0.0.1:1/./dhp/busybox:1/json" + QUERY))
@example(drawn=("GET", "", "/v1.41/images/127.0.0.1:1/x/../dhp/busybox:1/get" + QUERY))
@example(drawn=("GET", "", "/v1.41/images/127.0.0.1:1/x/%2e%2e/dhp/busybox:1/get" + QUERY))
@example(drawn=("GET", "", "/v1.41/images/127.0.0.1:1//dhp/busybox:1/json" + QUERY))
@example(drawn=("DELETE", "", "/v1.41/plugins/dhp/./no-such:1" + QUERY))
@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=targets(PLAINS))
def test_dockerd_takes_a_bent_target_where_locate_says(
    judge: Judge, drawn: tuple[str, str, str]
) -> None:
    method, _, bent = drawn
    assert judge.mismatch(method, bent) is None


def test_a_planted_mis_route_is_caught(dockerd: Dockerd, objects: None) -> None:
    """A table that took ``GET /containers/{id}/archive`` for an inspect (readonly
    allows that) would let readonly copy files out: the comparison says so."""

    def planted(method: str, target: str) -> Located:
        located = locate(method, target)
        if located.route == "GET /containers/{id}/archive":
            return Located("GET /containers/{id}/json", located.version)
        return located

    caught = Judge(dockerd, planted).mismatch(
        "GET", f"/v1.41/containers/{EXISTING['containers']}/archive{QUERY}&path=/etc"
    )
    assert caught is not None and "GET /containers/{id}/json" in caught
