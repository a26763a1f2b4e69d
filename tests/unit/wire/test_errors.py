"""The proxy's own answers must look like dockerd's, or clients lose the message.

The docker CLI and the SDKs turn ``{"message": ...}`` with
``Content-Type: application/json`` into "Error response from daemon: ...";
any other shape reaches the user as a bare status code. And since these bytes
are written straight onto the client socket, their framing must be exact.
"""

from __future__ import annotations

import json

import pytest

from proxy.wire import errors
from proxy.wire.http1 import find_head_end, parse_response_head, response_body


def split(raw: bytes) -> tuple[list[bytes], bytes]:
    end = find_head_end(raw)
    assert end > 0, "a complete head ending in a blank line"
    return raw[: end - 4].split(b"\r\n"), raw[end:]


@pytest.mark.parametrize("status", [400, 404, 431, 500, 502, 503])
def test_error_is_dockerd_shaped_json(status: int) -> None:
    raw = errors.error(status, 'cannot reach "the daemon": ünïcode')
    lines, body = split(raw)
    assert lines[0].startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Content-Type: application/json" in lines[1:]
    assert f"Content-Length: {len(body)}".encode() in lines[1:]
    assert json.loads(body) == {"message": 'cannot reach "the daemon": ünïcode'}


def test_error_frames_exactly_so_keep_alive_works() -> None:
    """A client reading by Content-Length must land exactly on the next response."""
    raw = errors.error(502, "down")
    head = parse_response_head(raw[: find_head_end(raw)])
    body = response_body(head, "GET")
    assert body.feed(raw + b"HTTP/1.1 200 OK\r\n", find_head_end(raw)) == len(raw) - find_head_end(
        raw
    )
    assert body.done and not head.close


def test_head_only_has_the_same_head_and_no_body() -> None:
    full = errors.error(502, "down")
    head_only = errors.error(502, "down", head_only=True)
    assert head_only == full[: find_head_end(full)]
    assert b"Content-Length: " + str(len(full) - len(head_only)).encode() in head_only


def test_close_announces_connection_close() -> None:
    raw = errors.error(400, "bad request", close=True)
    lines, _ = split(raw)
    assert b"Connection: close" in lines
    assert parse_response_head(raw[: find_head_end(raw)]).close
    assert b"Connection: close" not in errors.error(400, "bad request")
