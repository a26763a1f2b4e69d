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
  HEAD, 1xx, 204 and 304.
- Agree with dockerd, or refuse. The proxy claims some requests and passes the
  rest on, so a request it frames differently from dockerd (Go's net/http)
  would let a second request ride inside the first one's body, past the
  proxy. Go is lenient where a proxy cannot afford to be: it ends lines at a
  bare LF, folds continuation lines, ignores ``Transfer-Encoding`` on
  HTTP/1.0, lets chunked win over ``Content-Length``, reads an empty
  ``Content-Length`` as none and takes ``Transfer-Encoding``
  case-insensitively. Whitespace before a colon Go refuses itself (since
  1.13.1; dockerd answers 400 "invalid header name"), but Go before that and
  other readers trimmed it, so the proxy does not lean on which Go dockerd
  was built with. A head is accepted only in the strict grammar where every
  reading is the same, and refused otherwise (``ProtocolError``, which the
  connection answers with a 400 and a close):
  every line ends in CRLF; a field is a token, a colon and a value of visible
  bytes, spaces, tabs or obs-text; no control byte but HT anywhere; the
  request line is ``METHOD SP target SP HTTP/1.0|1.1``; ``Content-Length`` is
  digits only, once or repeated with the same value, never a list, never with
  ``Transfer-Encoding``; a request's ``Transfer-Encoding`` is one field whose
  value is ``chunked`` (any case, as Go compares it) and only on HTTP/1.1.
- Chunked bodies the same way: a size line is 1 to 16 hex digits (Go's limit),
  optionally ``;`` and an extension of visible bytes, then CRLF; chunk data
  ends in exactly CRLF, as Go insists; trailer fields follow the head's field
  grammar and, like Go's, are bounded.
- Refusing more than dockerd is fine: it costs a client an error it would
  have had anyway, or a request no Docker client sends. Framing differently
  is not.

Theory of operation:
``find_head_end`` finds where a head ends the way Go reads lines, at the first
empty line whether it ends in CRLF or a bare LF, so a head that Go would end
early is cut at the same place and then refused as a whole instead of waiting
for a CRLF CRLF that may never come; ``partial_head_fault`` judges the whole
lines of a head still arriving, so a bad line is refused once it is whole, no
later than Go refuses it (Go sometimes reads a byte of the next line first,
and accepts bare LFs and folds, which the proxy refuses), and not at an empty
line that may never come either.
``parse_request_head`` checks a request head against the strict grammar with
one regular expression (after capping its number of fields, which bounds the
regex's cost) and turns it into a small, frozen record. Docker clients send the
same heads again and again (every CLI command starts with the same ``/_ping``,
runners poll the same paths), so a parsed head is remembered by its exact
bytes: the same bytes are the same head, and ``known_request_head`` lets the
connection recognise a whole head in a fresh read without searching for its
end. A daemon's answers are not remembered, since their ``Date`` changes every
second.
``parse_response_head`` trusts dockerd's own field lines and checks only what
frames the body, since it runs for every answer. The caller then asks
``request_body`` or ``response_body`` for a ``Body``: a tiny state machine fed
with successive chunks of the byte stream. ``Body.feed`` answers how many of
the offered bytes belong to this body, so the caller can forward exactly those
and keep the rest for the next message. A body of ``UNTIL_CLOSE`` never ends
by itself: the caller treats it (and any 101 Switching Protocols) as the point
where the connection stops being HTTP and becomes a raw byte splice.

Once a head has passed the grammar, the three fields that frame a message
(``Content-Length``, ``Transfer-Encoding``, ``Connection``) are picked out of a
lower-cased copy of it by one regular-expression scan, which is several times
cheaper in CPython than splitting every line or searching once per name, and
this runs for every request and every answer on the hot path. The grammar
makes the scan exact: every line starts after a CRLF and has its colon right
after the name. A daemon's answer is not held to the field grammar, but its
CRs and LFs must pair up as line ends, since a line ended by a bare LF could
hide the field after it from the scan while Go's client reads it. The scan is
linear in the head: a value is one lazy run that stops at the first CRLF,
with nothing after it to backtrack into.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 1 << 20
"""Largest head accepted: dockerd (Go's default) takes 1 MiB of headers, and
``X-Registry-Config`` can approach that."""

MAX_CHUNK_LINE = 1024
"""Chunk size and trailer lines must be shorter than this. Go refuses lines of
4 KiB; a size line is at most 16 digits and an extension nobody sends."""

MAX_TRAILER = 2048
"""Largest trailer section. Go reads trailers only if their end is in sight
within its 4 KiB read buffer; half of that is safely inside its limit."""

MAX_FIELDS = 2000
"""Most header fields in a request head. Go sets no count, but matching the
grammar's repeated group costs far more per field than per byte, so a head of
a megabyte of ``X: y`` lines is refused at once; Docker clients send about ten."""

KNOWN_HEADS = 256
"""Request heads remembered by their bytes; past this many the memo starts over."""
KNOWN_SIZE = 4096
"""Longest head remembered, which bounds the memo to about 3 MiB: each head, and
the target and path decoded from it."""

MAX_LENGTH = (1 << 63) - 1
"""Largest ``Content-Length``: Go parses it as a 63-bit unsigned number."""

# The strict grammar (RFC 9112 sections 3 to 5 and 7.1, less what Go is lenient about).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TEXT = rb"[\t\x20-\x7e\x80-\xff]*"  # HT, SP, visible bytes, obs-text: no CTL
_FIELD = _TOKEN + rb":" + _TEXT
_FIELDS = rb"(?:" + _FIELD + rb"\r\n)*\r\n"
_REQUEST_LINE = rb"([A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])"
_STATUS_LINE = rb"HTTP/1\.([01]) ([0-9]{3})(?: " + _TEXT + rb")?"
_REQUEST = re.compile(_REQUEST_LINE + rb"\r\n" + _FIELDS)
_STATUS = re.compile(_STATUS_LINE + rb"\r\n")
_FIELD_LINE = re.compile(_FIELD + rb"\r\n")
_FIELD_LINES = re.compile(rb"(?:" + _FIELD + rb"\r\n)*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;" + _TEXT + rb")?\r\n")
_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection):(.*?)(?=\r\n)", re.DOTALL
)
"""The framing fields of a lower-cased head, values unstripped: spaces around a
value, matched here, would make the scan quadratic in a value of many spaces."""
_HEAD_END = re.compile(rb"\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


_known: dict[bytes, RequestHead] = {}
"""Request heads already parsed, by their exact bytes (``KNOWN_HEADS`` at most)."""


class ProtocolError(ValueError):
    """The peer sent bytes that cannot be framed as HTTP/1.1.

    A ``ValueError``, so a caller that decodes peer bytes (``dechunk`` on a
    captured body) treats it like any other undecodable input.
    """


def _shown(data: bytes) -> str:
    """Peer bytes quoted in an error message: enough to recognise, bounded."""
    return repr(data[:40].decode("latin-1")) + ("..." if len(data) > 40 else "")


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the first empty line, as Go reads lines, or -1 if none yet.

    An empty first line ends the head at once: Go refuses it rather than wait.
    """
    if buf.startswith((b"\n", b"\r\n"), start):
        return buf.index(b"\n", start) + 1
    m = _HEAD_END.search(buf, start)
    return -1 if m is None else m.end()


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


def field_values(head: RequestHead, name: bytes) -> list[bytes]:
    """The values of one field of a parsed head, lower-cased, in order; ``name`` is lower-case.

    For the rare request whose meaning depends on a field (a pull's form body),
    so the hot path never pays for it.
    """
    return _values(head.raw.lower(), name)


def _framing(fields: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The values of ``Content-Length``, ``Transfer-Encoding`` and ``Connection``, in order."""
    length: list[bytes] = []
    coding: list[bytes] = []
    connection: list[bytes] = []
    for name, raw in fields:
        value = raw.strip(b" \t")
        if name == b"content-length":
            length.append(value)
        elif name == b"transfer-encoding":
            coding.append(value)
        else:
            connection.append(value)
    return length, coding, connection


def _tokens(values: list[bytes]) -> set[bytes]:
    return {t.strip(b" \t") for v in values for t in v.split(b",") if t.strip(b" \t")}


def _content_length(values: list[bytes]) -> int | None:
    """Go's reading: repeats of one value are that value; anything else is refused."""
    if not values:
        return None
    text = values[0]
    if len(values) > 1 and values.count(text) != len(values):
        raise ProtocolError("conflicting Content-Length headers")
    return _length(text)


def _length(text: bytes) -> int:
    # isdigit is ASCII-only for bytes; the length check keeps int() from huge inputs.
    if not text.isdigit() or len(text) > 19 or (length := int(text)) > MAX_LENGTH:
        raise ProtocolError(f"bad Content-Length {_shown(text)}")
    return length


def _chunked(values: list[bytes], minor: bytes) -> bool:
    """Whether ``Transfer-Encoding`` frames the message; refused where Go would differ."""
    if not values:
        return False
    if minor == b"0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
    if values != [b"chunked"]:
        raise ProtocolError("Transfer-Encoding other than one chunked")
    return True


@dataclass(frozen=True, slots=True)
class RequestHead:
    """Frozen: one parsed head serves every request of the same bytes (``known_request_head``)."""

    method: str
    target: str
    """The request target exactly as sent, query string included."""
    path: str
    """The target up to its query string."""
    raw: bytes
    content_length: int | None
    chunked: bool
    close: bool
    """The client asked to close after this exchange."""

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


def _closes(values: list[bytes], minor: bytes) -> bool:
    if not values:  # the common case
        return minor == b"0"
    connection = _tokens(values)
    return b"close" in connection or (minor == b"0" and b"keep-alive" not in connection)


def known_request_head(data: bytes) -> RequestHead | None:
    """The head that ``data`` is, whole, if the same bytes were parsed as a head before."""
    return _known.get(data) if len(data) <= KNOWN_SIZE else None  # a big read is a body


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a complete request head (ending in the blank line), or refuse it."""
    head = _known.get(raw)
    if head is None:
        head = _parse_request_head(raw)
        if len(raw) <= KNOWN_SIZE:
            if len(_known) >= KNOWN_HEADS:
                _known.clear()  # a working set this large is not one of repeats
            _known[raw] = head
    return head


def _parse_request_head(raw: bytes) -> RequestHead:
    if raw.count(b"\n") > MAX_FIELDS + 2:
        raise ProtocolError(f"more than {MAX_FIELDS} header fields")
    m = _REQUEST.fullmatch(raw)
    if m is None:
        raise ProtocolError(_grammar_fault(raw, _REQUEST_LINE, "request line"))
    method, target, minor = m.groups()
    text = target.decode("latin-1")
    path = text.partition("?")[0]
    fields = _FRAMING.findall(raw.lower())
    if not fields:  # a GET of a keep-alive HTTP/1.1 client: nothing to frame
        return RequestHead(method.decode("ascii"), text, path, raw, None, False, minor == b"0")
    lengths, codings, connection = _framing(fields)
    length = _content_length(lengths)
    chunked = _chunked(codings, minor)
    if chunked and length is not None:
        raise ProtocolError("both Transfer-Encoding and Content-Length")
    return RequestHead(
        method.decode("ascii"), text, path, raw, length, chunked, _closes(connection, minor)
    )


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse a complete response head (ending in the blank line), or refuse it.

    Responses come from dockerd, whose Go server writes well-formed field
    lines, and this runs for every answer: so only the status line, the line
    ends and the framing fields are checked, not the whole grammar.
    With both framings the chunked coding wins (RFC 9112 6.3), as in Go's
    client, which is what reads these bytes after the proxy.
    """
    m = _STATUS.match(raw)
    if m is None:
        raise ProtocolError(_grammar_fault(raw, _STATUS_LINE, "status line"))
    minor, status = m.groups()
    if raw.count(b"\n") != raw.count(b"\r"):  # cheaper than counting CRLFs
        raise ProtocolError("a bare CR or LF in the head")
    fields = _FRAMING.findall(raw.lower())
    if len(fields) == 1 and fields[0][0] == b"content-length":  # nearly every answer
        length = _length(fields[0][1].strip(b" \t"))
        return ResponseHead(int(status), raw, length, False, minor == b"0")
    lengths, codings, connection = _framing(fields)
    chunked = _chunked(codings, minor)
    return ResponseHead(
        int(status),
        raw,
        None if chunked else _content_length(lengths),
        chunked,
        _closes(connection, minor),
    )


def partial_head_fault(buf: bytes | bytearray, start: int, stop: int) -> str | None:
    """Why lines of a head still arriving already break the grammar, or None.

    ``buf[start:stop]`` are whole lines, not yet judged, of a head whose empty
    line has not come: the request line first when ``start`` is 0. Go answers
    a bad line once it has read it (or a byte past it); judging only whole
    heads, the proxy would wait for an empty line a client may never send.
    Every verdict here is the one the whole head would get.
    """
    if stop <= start:
        return None  # no line ended since the last look
    if buf.count(b"\n", 0, stop) > MAX_FIELDS + 1:  # and the empty line still to come
        return f"more than {MAX_FIELDS} header fields"
    chunk = bytes(buf[start:stop])
    if start == 0:  # the request line and what followed it: a whole head but its empty line
        head = chunk + b"\r\n"
        if _REQUEST.fullmatch(head):
            return None
        return _grammar_fault(head, _REQUEST_LINE, "request line")
    return None if _FIELD_LINES.fullmatch(chunk) else _fields_fault(chunk)


def _grammar_fault(raw: bytes, first_line: bytes, what: str) -> str:
    """Name what is wrong with a head the grammar refused: the peer reads this."""
    if _BARE_LF.search(raw):
        return "a line ends in a bare LF"
    first, _, fields = raw.partition(b"\r\n")
    if not re.fullmatch(first_line, first):
        return f"malformed {what}"
    return _fields_fault(fields[:-2])  # less the empty line


def _fields_fault(fields: bytes) -> str:
    """Name what is wrong with field lines, each ending in CRLF, the grammar refused."""
    if _BARE_LF.search(fields):
        return "a line ends in a bare LF"
    for line in fields.split(b"\r\n")[:-1]:
        if not _FIELD_LINE.fullmatch(line + b"\r\n"):
            return _field_fault(line)
    return "malformed head"


def _field_fault(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete folded header line"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without a colon"
    if name.rstrip(b" \t") != name:
        return "whitespace before a colon"
    if not re.fullmatch(_TOKEN, name):
        return f"invalid header name {_shown(name)}"
    return "control byte in a header value"


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
    are carried over in ``line`` so a chunk boundary may fall anywhere; the
    CRLF after chunk data is checked byte by byte, so data that overruns its
    size is refused at once, as Go refuses it, rather than at the next LF.
    """

    __slots__ = ("line", "remaining", "state", "trailer")

    def __init__(self) -> None:
        self.done = False
        self.state = _SIZE
        self.remaining = 0
        self.trailer = 0
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
            if len(self.line) >= MAX_CHUNK_LINE:
                raise ProtocolError("chunk line too long")
            if self.state == _DATA_END and not b"\r\n".startswith(self.line):
                raise ProtocolError("chunk data not followed by CRLF")
            if nl >= 0:
                self._line_complete(bytes(self.line))
                self.line.clear()
        return i - start

    def _line_complete(self, line: bytes) -> None:
        if self.state == _SIZE:
            self.remaining = _chunk_size(line, 0)
            self.state = _DATA if self.remaining else _TRAILER
        elif self.state == _DATA_END:
            self.state = _SIZE
        else:  # _TRAILER: fields until the empty line that ends the message
            self.trailer += len(line)
            if self.trailer > MAX_TRAILER:
                raise ProtocolError("chunked trailer too large")
            if line == b"\r\n":
                self.done = True
            elif _FIELD_LINE.fullmatch(line) is None:
                raise ProtocolError(f"malformed trailer line {_shown(line)}")


def _chunk_size(data: bytes, start: int) -> int:
    m = _CHUNK_SIZE.match(data, start)
    if m is None:
        line = data[start : data.find(b"\n", start) + 1 or len(data)]
        raise ProtocolError(f"bad chunk size line {_shown(line)}")
    return int(m[1], 16)


def request_body(head: RequestHead) -> Body:
    if head.chunked:
        return ChunkedBody()
    if head.content_length:
        return LengthBody(head.content_length)
    return Body()


def response_length(head: ResponseHead, request_method: str) -> int | None:
    """The body's length when the head alone fixes it; None for chunked or until close."""
    if request_method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return 0
    if head.chunked:
        return None
    return head.content_length


def response_body(head: ResponseHead, request_method: str) -> Body:
    length = response_length(head, request_method)
    if length is not None:
        return LengthBody(length) if length else Body()
    return ChunkedBody() if head.chunked else UntilCloseBody()


def dechunk(raw: bytes) -> bytes:
    """Decode a complete chunked body; the create interception reads JSON from it."""
    out = bytearray()
    i = 0
    while True:
        size = _chunk_size(raw, i)
        if size == 0:
            return bytes(out)
        data = raw.index(b"\n", i) + 1
        out += raw[data : data + size]
        i = data + size + 2
