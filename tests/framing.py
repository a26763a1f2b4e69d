"""Request streams for framing tests, and how the proxy's framer cuts them.

Rules:
- Shared by the framer's unit tests and the differential test against
  dockerd, so both judge the same inputs the same way.
- The inputs are what a smuggler or a sloppy client sends: valid heads, and
  heads with one of the ambiguities Go's net/http reads leniently
  (bare LF, folds, control bytes, spaces before a colon, lists and repeats of
  Content-Length, odd Transfer-Encodings, HTTP/1.0 and HTTP/1.2) and bodies in
  both framings, well and badly formed.

Theory of operation:
``requests()`` draws one request (head and body): well-formed, or with
exactly one ambiguity, so that no ambiguity hides behind another the proxy
refuses first. About two thirds of the draws are framed by the proxy and so
judged by dockerd. Some bodies hold a complete request of their own: a
reader that ends the body early runs it, and its answer shows.

``frame`` replays the data path's consumption loop (``Connection._consume``)
on a whole stream: find the head, parse it, feed its body, next; it stops
at the first refusal, at bytes that do not finish a message, or after a
request that asks to close, as the proxy does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from proxy.wire import http1
from proxy.wire.http1 import ProtocolError, RequestHead, ResponseHead

PING_CLOSE = b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
"""A harmless last request: its answer, then dockerd's close, mark the end."""

SENTINEL = b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
"""Sent right after the bytes the proxy frames as one request: an answer that
no request drawn here gets (see ``is_sentinel``), then dockerd's close, so an
answer to anything in between is a request the proxy did not see."""

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


SMUGGLED_PAYLOADS = [
    b"GET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n",
    b"GET /v1.41/info HTTP/1.1\nHost: d\n\n",
    b"0\r\n\r\nGET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n",
]
"""Bodies that hold a complete request: where a reader ends the body too early,
it runs that request too, and its extra answer gives the disagreement away."""

_PAYLOADS = st.sampled_from([b"", b"abc", b"0123456789", b"\r\n", *SMUGGLED_PAYLOADS])
_REQUEST_LINES = [
    b"GET /_ping HTTP/1.1",
    b"POST /_ping HTTP/1.1",
    b"GET /v1.41/_ping HTTP/1.1",
    b"POST /v1.41.0/_ping HTTP/1.1",
    b"POST /nothing-here HTTP/1.1",
]
_HTTP10_LINES = [b"GET /_ping HTTP/1.0", b"POST /_ping HTTP/1.0"]
_ODD_REQUEST_LINES = [b"GET /_ping HTTP/1.2", b"GET  /_ping HTTP/1.1", b"GET /_p\x01ing HTTP/1.1"]
_ODD_REQUEST_LINES += [b"GET /_ping HTTP/1.1 ", b"get /_ping HTTP/1.1"]
_LENGTHS = [b"05", b" %d ", b"%d, %d", b"", b"x", b"1_0", b"+%d", b"-1", b"%d\t", b"0x%d"]
_CODINGS = [b"Chunked", b" chunked ", b"chunked, chunked", b"gzip", b"identity", b""]
_CODINGS += [b"gzip, chunked", b"chunked\x0b"]
_ODD_LINES = [b"X: a\x01b", b"X : y", b" folded", b"\tfolded", b"X-A(b): 1", b": v", b"NoColon"]
_ODD_LINES += [b"X: \xff", b"X: a\rb", b"Content-Length : 3", b"Transfer-Encoding : chunked"]
_ODD_LINES += [b"X:\t", b"Content-Length:\t3", b" 0", b"Host: e", b"Content_Length: 3"]
_ODD_LINES += [b"Expect-Nothing: 1", b"Expect: nothing", b"Content-Length: 3"]
_ODD_LINES += [b"Transfer-Encoding: chunked"]
_BAD_CHUNKS = [b"0x3\r\nabc\r\n0\r\n\r\n", b"3\nabc\n0\n\n", b"3\r\nabc\n0\r\n\r\n"]
_BAD_CHUNKS += [b"3 \r\nabc\r\n0\r\n\r\n", b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"]
_BAD_CHUNKS += [b"3 ;x\r\nabc\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n", b"\r\n"]
_BAD_CHUNKS += [b"3\r\nabcd\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\n", b"abc\r\n"]
_BAD_CHUNKS += [b"3\r\nabc\r\n0\r\nX: y\n\r\n", b"3\r\nabc\r\n0\r\nX : y\r\n\r\n"]


def _chunked(payload: bytes, odd: bool) -> bytes:
    """A well-formed chunked body: plain, or with an extension, upper-case hex and a trailer."""
    if not payload:
        return b"0\r\n\r\n"
    if odd:
        return b"%X;ext=1\r\n%s\r\n00\r\nX: y\r\n\r\n" % (len(payload), payload)
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)


_AMBIGUITIES = ["line end", "request line", "field", "length", "coding", "chunks", "no host"]
_AMBIGUITIES += ["http/1.0 coding", "short length", "long length"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: well-formed, or with exactly one of the ambiguities above.

    One at a time, so each is judged on its own rather than hidden behind
    another that the proxy refuses first; about half of the examples are
    well-formed, and several ambiguities are ones the proxy passes on, so most
    examples are judged by dockerd.
    """
    ambiguity = draw(st.sampled_from([None] * len(_AMBIGUITIES) + _AMBIGUITIES))
    payload = draw(_PAYLOADS)
    request_line = draw(st.sampled_from(_REQUEST_LINES + _HTTP10_LINES))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if request_line.endswith(b"1.0") and framing == "chunked":
        framing = "length"
    extra = draw(st.lists(st.sampled_from([b"User-Agent: test", b"Connection: close"]), max_size=2))
    if request_line.endswith(b"1.0") and draw(st.booleans()):
        extra.append(b"Connection: keep-alive")
    lines = [request_line, b"Host: d", *extra]
    body = b""
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(payload))
        body = payload
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = _chunked(payload, draw(st.booleans()))
    if ambiguity == "request line":
        lines[0] = draw(st.sampled_from(_ODD_REQUEST_LINES))
    elif ambiguity == "field":
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(_ODD_LINES)))
    elif ambiguity == "length":
        value = draw(st.sampled_from(_LENGTHS))
        lines.append(b"Content-Length: " + (value.replace(b"%d", b"%d" % len(payload))))
        body = payload
    elif ambiguity == "coding":
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(_CODINGS)))
        body = _chunked(payload, draw(st.booleans()))
    elif ambiguity == "chunks":
        if framing != "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        body = draw(st.sampled_from(_BAD_CHUNKS))
    elif ambiguity == "no host":
        del lines[1]
    elif ambiguity == "http/1.0 coding":
        lines = [draw(st.sampled_from(_HTTP10_LINES)), b"Host: d", b"Connection: keep-alive"]
        lines.append(b"Transfer-Encoding: chunked")
        body = _chunked(payload, draw(st.booleans()))
    elif ambiguity in ("short length", "long length") and framing == "length":
        lines[-1] = b"Content-Length: %d" % (len(payload) + (2 if "long" in ambiguity else -1))
    ends = [b"\r\n"] * (len(lines) + 1)
    if ambiguity == "line end":
        ends[draw(st.integers(0, len(lines)))] = draw(st.sampled_from([b"\n", b"\r\r\n"]))
    return b"".join(line + end for line, end in zip(lines, ends, strict=False)) + ends[-1] + body


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

    Its refusals of a malformed request are plain text; a 417 answers an
    ``Expect`` it does not know, with an empty body. Both close the connection;
    dockerd's own errors are JSON.
    """
    head = answer.head
    if not head.close:
        return False
    return head.status == 417 or (
        head.status in (400, 431, 501, 505) and b"text/plain" in head.raw.lower()
    )


def is_sentinel(answer: Answer) -> bool:
    """Whether this is dockerd's answer to ``SENTINEL``."""
    return answer.head.status == 200 and b'"ApiVersion"' in answer.raw
