"""Request streams for framing tests, and how the proxy's framer cuts them.

Rules:
- Shared by the framer's unit tests and the differential test against
  dockerd, so both judge the same inputs the same way.
- The inputs are what a smuggler or a sloppy client sends: valid heads, and
  heads with one or more of the ambiguities Go's net/http reads leniently
  (bare LF, folds, control bytes, spaces before a colon, lists and repeats of
  Content-Length, odd Transfer-Encodings, HTTP/1.0 and HTTP/1.2) and bodies in
  both framings, well and badly formed.

Theory of operation:
``requests()`` draws one request (head and body) from small pools of lines
and bodies, each pool mostly valid so that a fair share of examples reaches
the daemon at all. ``frame`` replays the data path's consumption loop
(``Connection._consume``) on a whole stream: find the head, parse it, feed
its body, next; it stops at the first refusal, at bytes that do not finish a
message, or after a request that asks to close, as the proxy does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from proxy.wire import http1
from proxy.wire.http1 import ProtocolError, RequestHead, ResponseHead

PING_CLOSE = b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
"""A harmless last request: its answer, then dockerd's close, mark the end."""

SMUGGLED = (
    b"GET /_ping HTTP/1.1\r\nHost: d\nX: y\n\n"
    b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
)
"""The issue's example: one GET with a body to a CRLF-only reader, a GET and a
create to Go. Fill in a create body's length and the body."""


@dataclass
class Framing:
    heads: list[RequestHead] = field(default_factory=list)
    """The complete requests the proxy passes on, in order."""
    ends: list[int] = field(default_factory=list)
    """Offset just past each of them."""
    refused: str | None = None
    """Why the proxy refused the request after the last complete one."""
    complete: bool = False
    """Whether the stream ended at a message boundary (or a request's close)."""


def frame(stream: bytes) -> Framing:
    out = Framing()
    i = 0
    while i < len(stream):
        end = http1.find_head_end(stream, i)
        if end < 0:
            return out
        try:
            head = http1.parse_request_head(stream[i:end])
            body = http1.request_body(head)
            n = body.feed(stream, end)
        except ProtocolError as exc:
            out.refused = str(exc)
            return out
        if not body.done:
            return out
        i = end + n
        out.heads.append(head)
        out.ends.append(i)
        if head.close:
            break
    out.complete = True
    return out


_CRLF = b"\r\n"
_LINE_ENDS = st.sampled_from([_CRLF] * 7 + [b"\n", b"\r\r\n"])
_REQUEST_LINES = st.sampled_from(
    [b"GET /_ping HTTP/1.1"] * 4
    + [b"POST /_ping HTTP/1.1", b"GET /v1.41/_ping HTTP/1.1", b"GET /v1.41.0/_ping HTTP/1.1"]
    + [b"POST /nothing-here HTTP/1.1", b"GET /_ping HTTP/1.0", b"POST /_ping HTTP/1.0"]
    + [b"GET /_ping HTTP/1.2", b"GET  /_ping HTTP/1.1", b"GET /_p\x01ing HTTP/1.1"]
    + [b"GET /_ping HTTP/1.1 ", b"get /_ping HTTP/1.1"]
)
_LENGTHS = [b"0", b"3", b"5", b"05", b" 3 ", b"3, 3", b"", b"x", b"1_0", b"+3", b"-1", b"3\t"]
_CODINGS = [b"chunked", b"Chunked", b" chunked ", b"chunked, chunked", b"gzip", b"identity", b""]
_CODINGS += [b"gzip, chunked", b"chunked\x0b"]
_ODD_LINES = [b"X: a\x01b", b"X : y", b" folded", b"\tfolded", b"X-A(b): 1", b": v", b"NoColon"]
_ODD_LINES += [b"X: \xff", b"X: a\rb", b"Content-Length : 3", b"Transfer-Encoding : chunked"]
_ODD_LINES += [b"X:\t", b"Content-Length:\t3", b" 0", b"Connection: close", b"Host: e"]
_ODD_LINES += [b"Connection: keep-alive", b"Content_Length: 3", b"Expect-Nothing: 1"]
_FIELDS = st.one_of(
    st.sampled_from(_LENGTHS).map(lambda v: b"Content-Length: " + v),
    st.sampled_from(_CODINGS).map(lambda v: b"Transfer-Encoding: " + v),
    st.sampled_from(_ODD_LINES),
    st.just(b"User-Agent: test"),
)
_BODIES = st.sampled_from(
    [b"", b"", b"abc", b"abcde", b"abc\r\n"]
    + [b"3\r\nabc\r\n0\r\n\r\n"] * 3
    + [b"3;ext=1\r\nabc\r\n0\r\n\r\n", b"03\r\nabc\r\n00\r\n\r\n", b"A\r\n0123456789\r\n0\r\n\r\n"]
    + [b"3\r\nabc\r\n0\r\nX: y\r\n\r\n", b"3\r\nabc\r\n0\r\nX: y\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n"]
    + [
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\n0\n\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"3 \r\nabc\r\n0\r\n\r\n",
    ]
    + [b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", b"\r\n", b"3 ;x\r\nabc\r\n0\r\n\r\n"]
    + [b"-3\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\n"]
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, head and body, valid or not in any of the ways above."""
    line_end = draw(_LINE_ENDS)
    lines = [draw(_REQUEST_LINES)]
    if draw(st.integers(0, 9)):
        lines.append(b"Host: d")
    lines += draw(st.lists(_FIELDS, max_size=4))
    head = b"".join(line + (draw(_LINE_ENDS) if i else line_end) for i, line in enumerate(lines))
    return head + draw(_LINE_ENDS) + draw(_BODIES)


@dataclass
class Answer:
    head: ResponseHead
    raw: bytes
    """The whole answer, head and body."""


def answers(stream: bytes) -> list[Answer]:
    """The complete answers in a server's response stream (to requests other than HEAD).

    An answer without a length (Go's own refusals) runs to the end of the stream.
    """
    out = []
    i = 0
    while (end := http1.find_head_end(stream, i)) > 0:
        head = http1.parse_response_head(stream[i:end])
        body = http1.response_body(head, "GET")
        n = body.feed(stream, end)
        if not body.done and not isinstance(body, http1.UntilCloseBody):
            break
        out.append(Answer(head, stream[i : end + n]))
        i = end + n
    return out


def go_refusal(answer: Answer) -> bool:
    """Whether Go's server itself refused the request (before any handler) and closed.

    Its refusals are plain text and close the connection; dockerd's own
    errors are JSON.
    """
    head = answer.head
    lower = head.raw.lower()
    return head.status in (400, 431, 501, 505) and head.close and b"text/plain" in lower
