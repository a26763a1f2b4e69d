"""gobind: bodies read as dockerd binds them, key tricks refused, held to a Go oracle."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import gobind
from proxy.wire.gobind import Create, MountSpec, Refused, read_create, read_exec, read_volume
from proxy.wire.gojson import MAX_DEPTH, TooDeep
from tests.goracle import WRAPPER, GoType, create_of, decode, promoted


def oracle(body: bytes) -> Create:
    value, error = decode(body, WRAPPER)
    assert value is not None and not error
    return create_of(value)


# What dockerd did with each trick (issue 21, on 20.10 and 26); the oracle says
# the same, and the proxy either reads the same or refuses the body.
TRICKS = [
    (b'{"Image":"a","hostconfig":{"Privileged":true}}', Create(image="a", privileged=True)),
    (
        '{"Image":"a","HostConfig":{"Bind\u017f":["/:/host"]}}'.encode(),
        Create(image="a", binds=("/:/host",)),
    ),
    (
        b'{"Image":"a","HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"host"}}',
        Create(image="a", privileged=True, network_mode="host"),
    ),
    (b'{"HostConfig":{"privileged":false,"Privileged":true}}', Create(privileged=True)),
    (b'{"HostConfig":{"Privileged":true,"privileged":false}}', Create()),
    (b'{"HostConfig":{"Privileged":true,"Privileged":null}}', Create(privileged=True)),
    (b'{"HostConfig":{"Privileged":true},"HostConfig":null}', Create()),
    (
        b'{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/"}],"Mounts":[{"Target":"/x"}]}}',
        Create(mounts=(MountSpec("bind", "/", None, ()),)),  # decoded into the same element
    ),
    (
        '{"HostConfig":{"SecurityOpt":["a"],"\u017fecurityopt":["b"]}}'.encode(),
        Create(security_opt=("b",)),
    ),
    ('{"HostConfig":{"networ\u212amode":"host"}}'.encode(), Create(network_mode="host")),
]


@pytest.mark.parametrize(("body", "dockerd"), TRICKS)
def test_the_oracle_reads_the_tricks_as_dockerd_did(body: bytes, dockerd: Create) -> None:
    assert oracle(body) == dockerd


@pytest.mark.parametrize(("body", "dockerd"), TRICKS[1:])
def test_key_tricks_are_refused(body: bytes, dockerd: Create) -> None:
    with pytest.raises(Refused):
        read_create(body)


def test_a_lowercase_hostconfig_is_read_as_dockerd_reads_it() -> None:
    """No sibling shares its name, so nothing is refused: it is read, privileged."""
    body = TRICKS[0][0]
    assert read_create(body) == TRICKS[0][1] == oracle(body)


@pytest.mark.parametrize(
    ("body", "reading"),
    [
        (b'{"Image":"a","Privileged":true}', Create(image="a", privileged=True)),
        (b'{"Privileged":true,"HostConfig":{}}', Create()),
        (b'{"Privileged":true,"HostConfig":null}', Create(privileged=True)),
        (b'{"HostConfig":{"MaskedPaths":[],"ReadonlyPaths":null}}', Create(masked_paths=())),
        (b'{"HostConfig":{"CapAdd":"ALL"}}', Create(cap_add=("ALL",))),
        (b'{"HostConfig":{"Binds":["/a:/a",null]}}', Create(binds=("/a:/a", ""))),
        (
            b'{"HostConfig":{"Sysctls":{"a":"1","A":"2","a":"3"}}}',
            Create(sysctls=(("A", "2"), ("a", "3"))),
        ),
        (
            b'{"Labels":{"x":"1","X":"2"},"hostConfig":{"Cgroupparent":"/c"}}',
            Create(cgroup_parent="/c"),
        ),
        (
            '{"NetworkingConfig":{"EndpointsConfig":{"host":null,"Bind\u017f":{}}}}'.encode(),
            Create(networks=("Bind\u017f", "host")),
        ),
        (
            b'{"HostConfig":{"Mounts":[{"Type":"volume","VolumeOptions":{"DriverConfig":'
            b'{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]}}',
            Create(
                mounts=(
                    MountSpec(
                        "volume", "", "local", (("device", "/"), ("o", "bind"), ("type", "none"))
                    ),
                )
            ),
        ),
    ],
)
def test_readings_match_go(body: bytes, reading: Create) -> None:
    """Top-level host fields (the deprecated embedded HostConfig) count when there is
    no HostConfig; data maps keep their keys as written."""
    assert read_create(body) == reading == oracle(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{",
        b'{"Image":"a"} {}',
        b'{"HostConfig":{"Privileged":"yes"}}',
        b'{"HostConfig":{"Binds":"/:/h"}}',
        b'{"HostConfig":[]}',
        b'{"HostConfig":{"Sysctls":{"a":1}}}',
        b'{"X":{"a":1,"A":2}}',
        '{"X":[{"\u0130":1}]}'.encode(),
    ],
)
def test_bodies_the_checks_cannot_read_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        read_create(body)


def test_nesting_to_go_depth_is_read_and_one_more_refused() -> None:
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert read_create(f'{{"Image":"a","X":{deep}}}'.encode()) == Create(image="a")
    with pytest.raises(TooDeep):
        read_create(f'{{"Image":"a","X":[{deep}]}}'.encode())


def test_a_lone_surrogate_is_read_as_go_reads_it() -> None:
    """Go decodes ``\\udcff`` alone to U+FFFD; Python keeps the surrogate, which ``os``
    then writes as the byte 0xff: the proxy would resolve another path than dockerd mounts."""
    body = rb'{"Image":"a\ud800","HostConfig":{"Binds":["/srv/agents/x/\udcff:/w"],'
    body += rb'"Sysctls":{"net.\udcffx":"1"},"CapAdd":"\ud800"}}'
    create = read_create(body)
    assert create.image == "a\ufffd"
    assert create.binds == ("/srv/agents/x/\ufffd:/w",)
    assert create.sysctls == (("net.\ufffdx", "1"),)
    assert create.cap_add == ("\ufffd",)
    assert read_exec(rb'{"User":"\udc80"}').user == "\ufffd"
    pair = read_create(rb'{"Image":"a","Binds":["/srv/agents/\ud83d\ude00:/w"]}')
    assert pair.binds == ("/srv/agents/\U0001f600:/w",)  # a pair is one character, as in Go


def test_exec_and_volume_bodies() -> None:
    assert read_exec(b'{"user":"root","PRIVILEGED":true,"Env":["A=1"]}') == gobind.Exec(
        "root", True
    )
    with pytest.raises(Refused):
        read_exec(b'{"User":"x","user":"root"}')
    volume = read_volume(b'{"Name":"v","DriverOpts":{"o":"bind","device":"/","O":"x"}}')
    assert volume == gobind.Volume("", (("O", "x"), ("device", "/"), ("o", "bind")))


# The property: for bodies built from the create schema, with keys in any case,
# duplicates and nesting, the proxy reads each checked field as Go does, or
# refuses the body; and a body without duplicates or folding letters is read.

FAVOURED = {"HostConfig", "Privileged", "Binds", "Mounts", "CapAdd", "MaskedPaths", "NetworkMode"}
FAVOURED |= {"NetworkingConfig", "EndpointsConfig", "VolumeOptions", "DriverConfig", "Options"}
"""Fields drawn more often, so that the merges and choices between them are met."""
WORDS = ["", "host", "container:x", "/", "/etc", "/srv/agents/x", "bind", "none", "local", "a"]


@st.composite
def spelling(draw: st.DrawFn, name: str, tricky: bool) -> str:
    cases = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    out = "".join(c.upper() if up else c.lower() for c, up in zip(name, cases, strict=True))
    if tricky and draw(st.integers(0, 4)) == 0:
        out = out.replace("s", "\u017f", 1).replace("k", "\u212a", 1)
    return out


@st.composite
def other(draw: st.DrawFn, clean: bool) -> str:
    depth = draw(st.sampled_from([0, 1, 3, 40, 3_000]))
    inner = draw(st.sampled_from(["1", '"x"', "null", '{"a":1,"b":[]}']))
    if not clean and draw(st.booleans()):
        inner = '{"a":1,"A":2}'
    return "[" * depth + inner + "]" * depth


@st.composite
def value(draw: st.DrawFn, t: GoType, clean: bool, top: bool = False) -> str:
    if not top and draw(st.integers(0, 9)) == 0:
        return "null"
    kind = t.kind
    if kind == "ptr":
        assert t.elem is not None
        return draw(value(t.elem, clean))
    if kind == "string":
        return json.dumps(draw(st.sampled_from(WORDS)), ensure_ascii=False)
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    if kind == "strslice" and draw(st.booleans()):
        return json.dumps(draw(st.sampled_from(WORDS)))
    if kind in ("slice", "strslice"):
        elem = t.elem if t.elem is not None else GoType("string")
        items = draw(st.lists(value(elem, clean), max_size=3))
        return "[" + ",".join(items) + "]"
    if kind == "map":
        assert t.elem is not None
        keys = draw(st.lists(st.sampled_from(["a", "A", "host", "Bind\u017f", "o"]), max_size=3))
        return "{" + ",".join(f"{json.dumps(k)}:{draw(value(t.elem, clean))}" for k in keys) + "}"
    if kind == "other":
        return draw(other(clean))
    names = [name for name, _ in promoted(t)]
    names += [name for name in names if name in FAVOURED] * 4
    chosen = draw(st.lists(st.sampled_from(names), max_size=6, unique=clean))
    members = []
    for name in chosen:
        path = next(p for n, p in promoted(t) if n == name)
        members.append((draw(spelling(name, tricky=not clean)), draw(value(_type(t, path), clean))))
    if draw(st.booleans()):
        members.append(("Unknown", draw(other(clean))))
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in members) + "}"


def _type(t: GoType, path: tuple[str, ...]) -> GoType:
    for head in path:
        fld = next(x for x in t.fields if x.name + ("*" if x.embedded else "") == head)
        t = fld.type.elem if fld.embedded and fld.type.kind == "ptr" else fld.type
        assert t is not None
    return t


def go_reading(body: bytes) -> Create | None:
    decoded, error = decode(body, WRAPPER)
    return None if decoded is None or error else create_of(decoded)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_clean_bodies_are_read_as_go_reads_them(data: st.DataObject) -> None:
    body = data.draw(value(WRAPPER, clean=True, top=True)).encode()
    assert read_create(body) == go_reading(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_body_is_read_as_go_reads_it_or_refused(data: st.DataObject) -> None:
    body = data.draw(value(WRAPPER, clean=False, top=True)).encode()
    try:
        reading: Any = read_create(body)
    except Refused:
        return
    assert reading == go_reading(body)
