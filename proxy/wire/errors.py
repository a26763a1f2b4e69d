"""Answers the proxy writes itself, shaped the way dockerd shapes them.

Rules:
- Every error the proxy originates is ``{"message": "..."}`` with
  ``Content-Type: application/json``, because that is what the docker CLI
  and the SDKs parse into "Error response from daemon: ...". Anything else
  reaches the user as an opaque status code.
- A HEAD request gets the same head and no body.
- These are complete HTTP/1.1 responses as bytes, so the data path can write
  them without any framework in between.
"""

from __future__ import annotations

import json
from http import HTTPStatus


def response(
    status: int,
    body: bytes,
    *,
    head_only: bool = False,
    close: bool = False,
) -> bytes:
    reason = HTTPStatus(status).phrase
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error(status: int, message: str, *, head_only: bool = False, close: bool = False) -> bytes:
    body = json.dumps({"message": message}).encode() + b"\n"
    return response(status, body, head_only=head_only, close=close)
