"""HTTP/1.1 message framing for a proxy that forwards bytes as they came.

Rules:
- Everything that decides where one HTTP/1.1 message ends and the next
  begins lives here, and nothing else does. No I/O, no asyncio.
- Bytes are never rewritten. The proxy forwards the client's and the daemon's
  bytes verbatim; this module only reads heads far enough to frame bodies and
  to route, so a header the proxy does not understand still reaches the other
  side exactly as sent.
- Framing follows RFC 9112 section 6: a request body is framed by
  ``Transfer-Encoding: chunked`` or ``Content-Length`` or is empty; a response
  body additionally may run until the connection closes, and is empty for
  HEAD, 1xx, 204 and 304. A request carrying both framings is refused, since
  the proxy and the daemon could disagree about where it ends.

Theory of operation:
``parse_request_head`` and ``parse_response_head`` turn one complete head
(everything up to and including the blank line) into a small record. The
caller then asks ``request_body`` or ``response_body`` for a ``Body``: a tiny
state machine fed with successive chunks of the byte stream. ``Body.feed``
answers how many of the offered bytes belong to this body, so the caller can
forward exactly those and keep the rest for the next message. A body of
``UNTIL_CLOSE`` never ends by itself: the caller treats it (and any 101
Switching Protocols) as the point where the connection stops being HTTP and
becomes a raw byte splice.

Header names are matched by searching a lower-cased copy of the head, which
is several times cheaper in CPython than splitting every line, and this runs
for every request on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 1 << 20
"""Largest head accepted: dockerd (Go's default) takes 1 MiB of headers, and
``X-Registry-Config`` can approach that."""

MAX_CHUNK_LINE = 4096


class ProtocolError(Exception):
    """The peer sent bytes that cannot be framed as HTTP/1.1."""


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line that ends a head, or -1 if incomplete."""
    i = buf.find(b"\r\n\r\n", start)
    return -1 if i < 0 else i + 4


def _values(lower: bytes, name: bytes) -> list[bytes]:
    key = b"\r\n" + name + b":"
    out: list[bytes] = []
    i = lower.find(key)
    while i >= 0:
        start = i + len(key)
        end = lower.find(b"\r\n", start)
        out.append(lower[start:end].strip(b" \t"))
        i = lower.find(key, end)
    return out


def _tokens(values: list[bytes]) -> set[bytes]:
    return {t.strip(b" \t") for v in values for t in v.split(b",") if t.strip(b" \t")}


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    lengths = {v.strip(b" \t") for value in values for v in value.split(b",")}
    if len(lengths) != 1:
        raise ProtocolError("conflicting Content-Length headers")
    (text,) = lengths
    if not text.isdigit():
        raise ProtocolError(f"bad Content-Length {text!r}")
    return int(text)


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    """The request target exactly as sent, query string included."""
    raw: bytes
    content_length: int | None
    chunked: bool
    close: bool
    """The client asked to close after this exchange."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(slots=True)
class ResponseHead:
    status: int
    raw: bytes
    content_length: int | None
    chunked: bool
    close: bool


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a complete request head (ending in the blank line)."""
    line_end = raw.find(b"\r\n")
    parts = raw[:line_end].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ProtocolError("malformed request line")
    method, target, version = parts
    if not method.isalpha() or not target:
        raise ProtocolError("malformed request line")
    lower = raw.lower()
    te = _tokens(_values(lower, b"transfer-encoding"))
    length = _content_length(_values(lower, b"content-length"))
    if te and length is not None:
        raise ProtocolError("both Transfer-Encoding and Content-Length")
    if te and te != {b"chunked"}:
        raise ProtocolError("unsupported Transfer-Encoding")
    connection = _tokens(_values(lower, b"connection"))
    return RequestHead(
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        raw=raw,
        content_length=length,
        chunked=bool(te),
        close=b"close" in connection
        or (version == b"HTTP/1.0" and b"keep-alive" not in connection),
    )


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse a complete response head (ending in the blank line)."""
    line_end = raw.find(b"\r\n")
    parts = raw[:line_end].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError("malformed status line")
    lower = raw.lower()
    te = _tokens(_values(lower, b"transfer-encoding"))
    return ResponseHead(
        status=int(parts[1]),
        raw=raw,
        content_length=None if te else _content_length(_values(lower, b"content-length")),
        chunked=b"chunked" in te,
        close=b"close" in _tokens(_values(lower, b"connection")) or parts[0] == b"HTTP/1.0",
    )


class Body:
    """Where a body ends, learned incrementally from the bytes that carry it.

    ``feed`` returns how many bytes of ``data[start:]`` belong to the body;
    ``done`` turns true once its last byte has been seen. Subclasses are the
    framings of RFC 9112; ``Body`` itself is the empty body.
    """

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = True

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        return 0


class LengthBody(Body):
    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        n = min(self.remaining, len(data) - start)
        self.remaining -= n
        self.done = self.remaining == 0
        return n


class UntilCloseBody(Body):
    """A response body that ends when the daemon closes the connection."""

    __slots__ = ()

    def __init__(self) -> None:
        self.done = False

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        return len(data) - start


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedBody(Body):
    """Chunked transfer coding, tracked without decoding.

    States: reading a size line, skipping chunk data, expecting the CRLF that
    closes a chunk, reading trailer lines until the empty one. Partial lines
    are carried over in ``line`` so a chunk boundary may fall anywhere.
    """

    __slots__ = ("line", "remaining", "state")

    def __init__(self) -> None:
        self.done = False
        self.state = _SIZE
        self.remaining = 0
        self.line = bytearray()

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        i = start
        end = len(data)
        while i < end and not self.done:
            if self.state == _DATA:
                n = min(self.remaining, end - i)
                i += n
                self.remaining -= n
                if self.remaining == 0:
                    self.state = _DATA_END
                continue
            nl = data.find(b"\n", i, end)
            stop = end if nl < 0 else nl + 1
            self.line += data[i:stop]
            i = stop
            if len(self.line) > MAX_CHUNK_LINE:
                raise ProtocolError("chunk line too long")
            if nl >= 0:
                self._line_complete(bytes(self.line).rstrip(b"\r\n"))
                self.line.clear()
        return i - start

    def _line_complete(self, line: bytes) -> None:
        if self.state == _SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            try:
                self.remaining = int(size, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size!r}") from None
            if self.remaining < 0:
                raise ProtocolError("negative chunk size")
            self.state = _DATA if self.remaining else _TRAILER
        elif self.state == _DATA_END:
            if line:
                raise ProtocolError("chunk data longer than its size")
            self.state = _SIZE
        elif not line:  # _TRAILER: the empty line ends the message
            self.done = True


def request_body(head: RequestHead) -> Body:
    if head.chunked:
        return ChunkedBody()
    if head.content_length:
        return LengthBody(head.content_length)
    return Body()


def response_body(head: ResponseHead, request_method: str) -> Body:
    if request_method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return Body()
    if head.chunked:
        return ChunkedBody()
    if head.content_length is not None:
        return LengthBody(head.content_length)
    return UntilCloseBody()


def dechunk(raw: bytes) -> bytes:
    """Decode a complete chunked body; the create interception reads JSON from it."""
    out = bytearray()
    i = 0
    while True:
        nl = raw.index(b"\r\n", i)
        size = int(raw[i:nl].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[nl + 2 : nl + 2 + size]
        i = nl + 2 + size + 2
