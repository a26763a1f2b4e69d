"""intercept: reading a create body, recognising "No such image", progress lines."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.healing.claims.intercept import image_from_create_body, is_missing_image, progress_line
from proxy.wire.gojson import TooDeep
from proxy.wire.http1 import parse_response_head


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_image_from_plain_and_chunked_bodies() -> None:
    body = json.dumps({"Image": "app:1", "Cmd": ["true"]}).encode()
    assert image_from_create_body(body, chunked=False) == "app:1"
    assert image_from_create_body(chunked(body, 5), chunked=True) == "app:1"


@pytest.mark.parametrize(
    ("body", "image"),
    [
        (b'{"image": "app:1"}', "app:1"),
        (b'{"IMAGE": "app:1", "Cmd": []}', "app:1"),
        (b'{"Image": "app:1", "HostConfig": {"Privileged": null}}', "app:1"),
        (b'{"Image": 3}', None),  # Go refuses the type
        (b'{"Images": "app:1", "Config": {"Image": "x:1"}}', None),
    ],
)
def test_image_is_read_as_go_decodes_it(body: bytes, image: str | None) -> None:
    """dockerd's JSON decoder matches keys in any case."""
    assert image_from_create_body(body, chunked=False) == image


@pytest.mark.parametrize(
    "body",
    [
        b'{"Image": "old:1", "iMaGe": "app:1"}',
        b'{"Image": "app:1", "image": null}',
        b'{"Image": "app:1", "Image": "app:1"}',
        b'{"Image": "app:1", "HostConfig": {"Binds": [], "binds": []}}',
    ],
)
def test_keys_that_are_one_to_go_are_read_as_go_reads_them(body: bytes) -> None:
    """The last key folding to ``Image`` wins and a null keeps the one before: a
    create dockerd runs from a missing image heals, whatever the body checks
    (which refuse such bodies on a listener whose policy reads them) make of it."""
    assert image_from_create_body(body, chunked=False) == "app:1"


def test_an_image_beside_nesting_as_deep_as_go_reads_is_found() -> None:
    """dockerd takes a create nested 10,000 deep; Python's json raised RecursionError
    at ~1,000, a 500 and a traceback. One level more is refused, as Go refuses it."""
    deep = "[" * 9_999 + "]" * 9_999  # with the object around it: 10,000 levels
    body = f'{{"Image": "app:1", "X": {deep}}}'.encode()
    assert image_from_create_body(body, chunked=False) == "app:1"
    assert image_from_create_body(chunked(body, 4096), chunked=True) == "app:1"
    deeper = f'{{"Image": "app:1", "X": [{deep}]}}'.encode()
    with pytest.raises(TooDeep):
        image_from_create_body(deeper, chunked=False)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'{"Cmd": []}', b'{"Image": 3}', b'{"Image": ""}', b"\xff\xfe"],
)
def test_bad_bodies_are_left_to_the_daemon(body: bytes) -> None:
    assert image_from_create_body(body, chunked=False) is None


@pytest.mark.parametrize("body", [b"zz\r\n{}\r\n0\r\n\r\n", b"0x2\r\n{}\r\n0\r\n\r\n"])
def test_a_badly_chunked_body_is_left_to_the_daemon(body: bytes) -> None:
    """The framer refuses such a body first; if one got here, it is not ours to judge."""
    assert image_from_create_body(body, chunked=True) is None


@given(st.binary(max_size=300), st.booleans())
def test_any_body_never_raises(body: bytes, is_chunked: bool) -> None:
    if is_chunked:
        body = chunked(body, 7)
    result = image_from_create_body(body, chunked=is_chunked)
    assert result is None or isinstance(result, str)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=10,
    )
)
def test_any_json_never_raises(value: object) -> None:
    body = json.dumps({"Image": value}).encode()
    result = image_from_create_body(body, chunked=False)
    assert result == (value if isinstance(value, str) and value else None)


def response(status: int, body: bytes, extra: str = "") -> tuple[bytes, bytes]:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()
    return head, head + body


def test_no_such_image_is_missing() -> None:
    head, raw = response(404, b'{"message":"No such image: app:1"}\n')
    assert is_missing_image(parse_response_head(head), raw)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b'{"message":"No such container: x"}'),
        (404, b"not json"),
        (404, b"[1]"),
        (201, b'{"Id":"abc","Warnings":[]}'),
        (500, b'{"message":"No such image: app:1"}'),
    ],
)
def test_other_answers_are_not_missing(status: int, body: bytes) -> None:
    head, raw = response(status, body)
    assert not is_missing_image(parse_response_head(head), raw)


def test_a_badly_chunked_404_is_not_missing() -> None:
    head = b"HTTP/1.1 404 X\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not is_missing_image(parse_response_head(head), head + b"zz\r\n{}\r\n0\r\n\r\n")


def test_progress_line_is_one_chunk_of_one_json_line() -> None:
    chunk = progress_line({"status": "x"})
    size, _, rest = chunk.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2
    assert json.loads(rest[:-2]) == {"status": "x"}
