"""Client JSON read as Go reads it: to 10,000 levels, one more refused, and the
same values as Python's own reader wherever that one can read at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.gojson import MAX_DEPTH, Members, TooDeep, _read, loads


def nested(depth: int, inner: str = "1") -> str:
    """Arrays and objects alternating, ``depth`` of them around ``inner``."""
    opens = "".join('{"k":' if level % 2 else "[" for level in range(depth))
    closes = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opens + inner + closes


def plain(value: Any) -> Any:
    """Members as lists of pairs, arrays as lists: a comparable shape."""
    if isinstance(value, Members):
        return ("object", [(key, plain(item)) for key, item in value])
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@pytest.mark.parametrize("reader", [loads, _read])
def test_go_depth_is_read_and_one_more_is_refused(reader: Any) -> None:
    """Python's json gives up near 1,000 levels; Go reads 10,000."""
    value = reader(nested(MAX_DEPTH))
    for _ in range(MAX_DEPTH - 1):
        value = value[0][1] if isinstance(value, Members) else value[0]
    assert value == [1] or value == Members([("k", 1)])
    with pytest.raises(TooDeep):
        reader(nested(MAX_DEPTH + 1))
    with pytest.raises(TooDeep):
        reader("[" * 50_000)  # refused as deep before its missing end matters


def test_depth_counts_containers_only() -> None:
    assert _read('[[["a", {"b": []}]]]', max_depth=5) is not None
    with pytest.raises(TooDeep):
        _read('[[["a", {"b": [[]]}]]]', max_depth=5)


def test_members_keep_order_and_duplicates() -> None:
    value = loads('{"Image": "a", "image": "b", "IMAGE": null, "x": {}}')
    assert isinstance(value, Members)
    assert plain(value) == (
        "object",
        [("Image", "a"), ("image", "b"), ("IMAGE", None), ("x", ("object", []))],
    )


def test_invalid_utf8_becomes_the_replacement_character() -> None:
    assert loads(b'"a\xffb"') == "a\ufffdb"


def test_a_lone_surrogate_escape_becomes_the_replacement_character() -> None:
    """As in Go; Python's ``json`` keeps it, and ``os`` writes ``\\udcff`` as the byte 0xff."""
    assert loads(rb'"\udcff"') == "\ufffd"
    deep = "[" * 2_000 + r'{"a\ud800b":"\udfff","p":"\ud83d\ude00"}' + "]" * 2_000
    value = loads(deep)
    for _ in range(2_000):
        value = value[0]
    assert value == Members([("a\ufffdb", "\ufffd"), ("p", "\U0001f600")])


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "{",
        "[1,]",
        '{"a":1,}',
        "NaN",
        "[Infinity]",
        "-Infinity",
        "[1 2]",
        '{"a" 1}',
        "{1:2}",
        '"\x01"',
        "01",
        "1.",
        "-",
        "[}",
        "{]",
        '{"a":1]',
        '["a":1]',
        "1 x",
        "{} {}",
        "\u00a0{}",
        "'a'",
        "tru",
    ],
)
def test_what_go_refuses_is_refused_by_both_readers(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
    with pytest.raises(ValueError):
        _read(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.lists(st.tuples(st.text(), inner)).map(Members),
)


def dump(value: Any, spaces: str) -> str:
    if isinstance(value, Members):
        members = (f"{json.dumps(key)}{spaces}:{spaces}{dump(item, spaces)}" for key, item in value)
        return "{" + spaces + f",{spaces}".join(members) + spaces + "}"
    if isinstance(value, list):
        return "[" + spaces + f",{spaces}".join(dump(item, spaces) for item in value) + "]"
    return json.dumps(value)


@given(json_values, st.sampled_from(["", " ", "\n\t", "\r\n "]))
def test_the_iterative_reader_gives_what_json_gives(value: Any, spaces: str) -> None:
    text = spaces + dump(value, spaces) + spaces
    assert plain(_read(text)) == plain(loads(text)) == plain(value)


@given(st.text(alphabet='{}[],:"0123456789.-+eE truefalsn\\u', max_size=40))
def test_the_readers_agree_on_any_text(text: str) -> None:
    """Same value, or both refuse: which reader reads a body never changes its meaning."""
    try:
        expected = plain(loads(text))
    except ValueError:
        with pytest.raises(ValueError):
            _read(text)
    else:
        assert plain(_read(text)) == expected
