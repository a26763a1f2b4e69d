"""Which exchanges get an audit line, what a line holds (and never holds), and the
allow list a log asks for."""

from __future__ import annotations

import dataclasses
import json

import pytest

from proxy.service.auditlines import (
    MAX_PATH,
    allow_list,
    allow_toml,
    encode,
    entry,
    logged,
)
from proxy.wire.access import AccessRecord, Mode, Peer, Verdict

PEER = Peer(uid=1000, gid=1000, groups=(1000, 27), pid=4242, exe="/usr/bin/docker")
WHEN = 1_796_608_800.25  # 2026-12-07T02:00:00.250Z


def record(
    method: str = "GET",
    path: str = "/v1.45/containers/json",
    verdict: Verdict | None = None,
    hijacked: bool = False,
    status: int = 200,
) -> AccessRecord:
    return AccessRecord("ci", PEER, method, path, verdict, status, 0.0123456789, hijacked)


def verdict(route: str, denied: bool = False, mode: Mode = "enforce") -> Verdict:
    rule = None if denied else route
    return Verdict("runner", mode, route, rule, denied, "no" if denied else "")


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (record(), False),
        (record("HEAD", "/_ping"), False),
        (record("GET", "/v1.45/containers/abc/json"), False),
        (record("GET", "/v1.45/containers/abc/logs?follow=1"), False),
        (record("POST", "/v1.45/containers/create"), True),
        (record("DELETE", "/v1.45/containers/abc"), True),
        (record("PUT", "/v1.45/containers/abc/archive?path=/"), True),
        (record("OPTIONS", "/"), True),
        (record("GET", "/v1.45/containers/abc/archive?path=/etc"), True),
        (record("HEAD", "/v1.45/containers/abc/archive?path=/etc"), False),
        (record("GET", "/v1.45/containers/abc/export"), True),
        (record("GET", "/v1.45/images/busybox/get"), True),
        (record("GET", "/v1.45/images/get?names=busybox"), True),
        (record("GET", "/v1.45/containers%2Fabc/archive"), True),
        (record("GET", "/v1.45/exec/abc/json", hijacked=True), True),
        (record("GET", "/x", verdict("GET other", denied=True)), True),
        (record("GET", "/x", verdict("GET other", denied=True, mode="audit")), True),
        (record("GET", "/_ping", verdict("GET /_ping")), False),
        (record("POST", "/_ping", verdict("POST /_ping")), True),
    ],
)
def test_what_gets_a_line(rec: AccessRecord, expected: bool) -> None:
    assert logged(rec) is expected


def test_a_line_holds_the_record() -> None:
    rec = record(
        "POST",
        "/v1.45/containers/abc/start",
        Verdict(
            "runner", "enforce", "POST /containers/{id}/start", "POST /containers/{id}/start", False
        ),
        status=204,
    )
    assert entry(rec, WHEN) == {
        "time": "2026-12-07T02:00:00.250+00:00",
        "listener": "ci",
        "uid": 1000,
        "gid": 1000,
        "pid": 4242,
        "exe": "/usr/bin/docker",
        "method": "POST",
        "route": "POST /containers/{id}/start",
        "path": "/v1.45/containers/abc/start",
        "query": [],
        "hijacked": False,
        "decision": "allow",
        "policy": "runner",
        "rule": "POST /containers/{id}/start",
        "mode": "enforce",
        "field": None,
        "value": None,
        "status": 204,
        "duration": 0.012346,
    }


def test_a_body_refusal_names_the_field_and_the_value_only() -> None:
    refused = Verdict(
        "runner",
        "audit",
        "POST /containers/create",
        "POST /containers/create",
        True,
        'policy "runner" refuses privileged containers',
        "HostConfig.Privileged",
        "true",
    )
    line = entry(record("POST", "/v1.45/containers/create", refused), WHEN)
    assert (line["decision"], line["field"], line["value"]) == (
        "would_deny",
        "HostConfig.Privileged",
        "true",
    )


def test_without_a_policy_the_route_is_the_metrics_template() -> None:
    line = entry(record("POST", "/v1.45/containers/abc/kill?signal=KILL"), WHEN)
    assert line["route"] == "POST /containers/{id}/kill"
    assert (line["policy"], line["rule"], line["mode"], line["decision"]) == (
        "full",
        None,
        None,
        "allow",
    )
    assert entry(record("POST", "/v1.45/../x"), WHEN)["route"] == "POST other"


def test_decisions() -> None:
    denied = record("POST", "/v1.45/build", verdict("POST /build", denied=True))
    assert entry(denied, WHEN)["decision"] == "deny"
    for mode in ("audit", "warn"):
        rec = record("POST", "/v1.45/build", verdict("POST /build", denied=True, mode=mode))
        assert entry(rec, WHEN)["decision"] == "would_deny"


def test_a_line_without_a_peer() -> None:
    line = entry(dataclasses.replace(record("POST"), peer=None), WHEN)
    assert (line["uid"], line["gid"], line["pid"], line["exe"]) == (None, None, None, None)


def test_the_query_keeps_its_names_never_its_values() -> None:
    secret = "ghp_0123456789abcdef"
    path = f'/v1.45/build?t=app&buildargs={{"TOKEN":"{secret}"}}&t=again&networkmode=host'
    text = encode(record("POST", path), WHEN)
    assert secret not in text.decode()
    line = json.loads(text)
    assert line["path"] == "/v1.45/build"
    assert line["query"] == ["t", "buildargs", "networkmode"]


def test_a_line_has_no_field_the_record_does_not() -> None:
    """Headers and bodies never reach a record, so they can never reach a line."""
    names = {f.name for f in dataclasses.fields(AccessRecord)}
    assert names == {
        "listener",
        "peer",
        "method",
        "path",
        "verdict",
        "status",
        "seconds",
        "hijacked",
    }


def test_a_line_is_one_ascii_line_whatever_the_path() -> None:
    text = encode(record("POST", "/v1.45/containers/\n\u00e9\x00/start"), WHEN)
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    assert text.isascii()


def test_a_long_path_is_cut_and_says_so() -> None:
    line = entry(record("POST", "/" + "a" * (2 * MAX_PATH)), WHEN)
    assert len(line["path"]) < MAX_PATH + 16
    assert line["path"].endswith("...(cut)")
    query = "&".join(f"n{i}=v" for i in range(MAX_PATH))
    names = entry(record("POST", f"/build?{query}"), WHEN)["query"]
    assert sum(map(len, names)) < MAX_PATH + 16
    assert names[:2] == ["n0", "n1"] and names[-1] == "...(cut)"


def line(listener: str, route: str) -> str:
    return json.dumps({"listener": listener, "route": route, "path": "/x"})


def test_allow_list_from_a_log() -> None:
    log = [
        line("ci", "POST /containers/create"),
        line("ci", "GET /_ping"),
        line("ci", "POST /containers/{id}/start"),
        line("ci", "POST /containers/create"),
        line("ci", "HEAD /_ping"),
        line("ci", "GET other"),
        line("other", "POST /build"),
        "",
        "not json",
        json.dumps({"route": "POST /x"}),
        json.dumps({"listener": "ci", "route": 1}),
        json.dumps([1]),
    ]
    harvest = allow_list(log, "ci")
    assert harvest.allow == [
        "GET /_ping",
        "HEAD /_ping",
        "POST /containers/create",
        "POST /containers/{id}/start",
    ]
    assert (harvest.lines, harvest.unroutable, harvest.unreadable) == (6, 1, 4)
    assert "POST /build" in allow_list(log).allow


def test_allow_toml_reads_back_as_a_policy() -> None:
    import tomllib

    harvest = allow_list([line("ci", 'POST /containers/{id}/"x"'), line("ci", "GET other")])
    text = allow_toml(harvest, "audit.jsonl", None)
    assert tomllib.loads(text) == {"allow": ['POST /containers/{id}/"x"']}
    assert "1 requests took no route of dockerd's" in text
