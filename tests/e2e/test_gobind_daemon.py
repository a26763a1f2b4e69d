"""The Go oracle of the unit tests, held to the real daemon: creates posted straight to
the suite's private dockerd (20.10 and 26), inspected, compared field by field.

The bodies are the issue's key tricks and a sample drawn with folded keys, duplicate
objects and fields, ``null`` and deprecated top-level host fields, over values a
daemon without a bridge creates without complaint. A create the daemon refuses is
skipped (nothing to compare), and the test asserts it compared most of them. Where
the proxy's reader (``gobind``) reads a body at all, it must read what the daemon made.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import BUSYBOX, Dockerd, UnixHTTPConnection

from proxy.wire.gobind import Create, Refused, read_create
from tests.goracle import WRAPPER, create_of, decode

FOLDER = Path(tempfile.gettempdir()) / "dhp-gobind-binds"
BASE = f'"Image":"{BUSYBOX}","Cmd":["true"]'
"""The members every create here starts with: the daemon wants a command."""


def call(daemon: Dockerd, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = UnixHTTPConnection(daemon.socket, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data.strip() else None
    finally:
        conn.close()


def made(daemon: Dockerd, body: bytes) -> dict[str, Any] | None:
    """The HostConfig dockerd made of ``body``, or None when it refused the create."""
    status, answer = call(daemon, "POST", "/containers/create", body)
    if status != 201:
        return None
    try:
        status, inspect = call(daemon, "GET", f"/containers/{answer['Id']}/json")
        assert status == 200
        host: dict[str, Any] = inspect["HostConfig"]
        return host
    finally:
        call(daemon, "DELETE", f"/containers/{answer['Id']}?force=1")


def agrees(reading: Create, host: dict[str, Any]) -> list[str]:
    """The fields where ``reading`` and the daemon's inspect differ."""
    wrong = []

    def same(name: str, ours: object, theirs: object) -> None:
        if ours != theirs:
            wrong.append(f"{name}: read {ours!r}, daemon made {theirs!r}")

    same("Privileged", reading.privileged, host["Privileged"])
    same("Binds", reading.binds, tuple(host["Binds"] or ()))
    same("CapAdd", reading.cap_add, tuple(host["CapAdd"] or ()))
    same("PidMode", reading.pid_mode, host["PidMode"])
    same("UTSMode", reading.uts_mode, host["UTSMode"])
    same("GroupAdd", reading.group_add, tuple(host["GroupAdd"] or ()))
    same("DeviceCgroupRules", reading.device_cgroup_rules, tuple(host["DeviceCgroupRules"] or ()))
    same("Devices", reading.devices, tuple(d["PathOnHost"] for d in host["Devices"] or ()))
    same("Mounts", [(m.type, m.source) for m in reading.mounts],
         [(m["Type"], m["Source"]) for m in host.get("Mounts") or ()])  # fmt: skip
    if reading.network_mode:
        same("NetworkMode", reading.network_mode, host["NetworkMode"])
    for name, ours in (
        ("MaskedPaths", reading.masked_paths),
        ("ReadonlyPaths", reading.readonly_paths),
    ):
        theirs = host[name]
        if ours is None:  # the daemon's defaults (none when privileged)
            if not reading.privileged and not theirs:
                wrong.append(f"{name}: read as absent, the daemon made {theirs!r}")
        else:
            same(name, ours, tuple(theirs or ()))
    return wrong


TRICKS = [
    b'{%s,"hostconfig":{"Privileged":true}}',
    '{%s,"HostConfig":{"Bind\u017f":["/tmp/dhp-gobind-binds:/w"]}}'.encode(),
    b'{%s,"HostConfig":{"Privileged":true},"HostConfig":{"PidMode":"host"}}',
    b'{%s,"HostConfig":{"privileged":false,"Privileged":true}}',
    b'{%s,"HostConfig":{"Privileged":true,"privileged":false}}',
    b'{%s,"HostConfig":{"MaskedPaths":[],"ReadonlyPaths":[]}}',
    b'{%s,"Privileged":true}',
    b'{%s,"Privileged":true,"HostConfig":{}}',
    b'{%s,"HostConfig":{"CapAdd":"NET_ADMIN","capadd":null}}',
]


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    FOLDER.mkdir(exist_ok=True)
    yield FOLDER
    shutil.rmtree(FOLDER, ignore_errors=True)


@pytest.mark.parametrize("body", TRICKS)
def test_the_oracle_reads_the_tricks_as_the_daemon_did(
    dockerd: Dockerd, folder: Path, body: bytes
) -> None:
    body = body.replace(b"%s", BASE.encode())
    host = made(dockerd, body)
    assert host is not None, body
    decoded, error = decode(body, WRAPPER)
    assert decoded is not None and not error
    assert agrees(create_of(decoded), host) == []
    try:
        reading = read_create(body)
    except Refused:
        return
    assert agrees(reading, host) == []


FIELDS: list[tuple[str, list[Any]]] = [
    ("Privileged", [True, False, None]),
    ("Binds", [[f"{FOLDER}:/w"], [f"{FOLDER}:/v:ro"], [], None]),
    ("CapAdd", [["NET_ADMIN"], "SYS_TIME", [], None]),
    ("PidMode", ["host", ""]),
    ("UTSMode", ["host", ""]),
    ("GroupAdd", [["123"], ["7", "8"], None]),
    ("DeviceCgroupRules", [["c 1:3 r"], None]),
    ("Devices", [[{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n"}], None]),
    ("Mounts", [[{"Type": "bind", "Source": str(FOLDER), "Target": "/m"}], None]),
    ("MaskedPaths", [[], ["/proc/kcore"], None]),
    ("ReadonlyPaths", [[], None]),
    ("NetworkMode", ["none", "host"]),
]


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return name.lower()
    if choice == 1:
        return name.upper()
    if choice == 2:
        return name.replace("s", "\u017f", 1).replace("k", "\u212a", 1)
    return name


@st.composite
def host_object(draw: st.DrawFn) -> str:
    members = []
    for _ in range(draw(st.integers(1, 4))):
        name, values = draw(st.sampled_from(FIELDS))
        members.append(
            f"{json.dumps(draw(spelled(name)))}:{json.dumps(draw(st.sampled_from(values)))}"
        )
    return "{" + ",".join(members) + "}"


@st.composite
def create_body(draw: st.DrawFn) -> bytes:
    members = [BASE]
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(["HostConfig", "hostconfig", "HOSTCONFIG", "top"]))
        if where == "top":
            members.append(draw(host_object())[1:-1])
        else:
            members.append(f'"{where}":{draw(host_object())}')
    return ("{" + ",".join(members) + "}").encode()


COMPARED: dict[str, int] = {}


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=create_body())
def test_the_oracle_reads_a_sample_as_the_daemon_does(
    dockerd: Dockerd, folder: Path, body: bytes
) -> None:
    key = dockerd.release.name
    COMPARED.setdefault(key, 0)
    host = made(dockerd, body)
    decoded, error = decode(body, WRAPPER)
    if host is None:
        return  # refused by the daemon: nothing to compare
    assert decoded is not None and not error, body
    COMPARED[key] += 1
    assert agrees(create_of(decoded), host) == [], body
    try:
        reading = read_create(body)
    except Refused:
        return
    assert agrees(reading, host) == [], body


def test_most_of_the_sample_was_compared(dockerd: Dockerd) -> None:
    """Runs after the sample (file order): a sample the daemon all refused proves nothing."""
    assert COMPARED.get(dockerd.release.name, 0) >= 20, COMPARED
