"""The sans-IO framer: where each message ends, however the bytes are cut.

The data path forwards exactly the bytes ``Body.feed`` says belong to the
current message, so an off-by-one here either truncates a body or glues the
next request onto it. Every test therefore checks exact counts, and the
byte-boundary tests cut the stream at every possible place, because the
network does.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import http1
from proxy.wire.http1 import (
    KNOWN_HEADS,
    KNOWN_SIZE,
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    Body,
    ChunkedBody,
    LengthBody,
    ProtocolError,
    UntilCloseBody,
    dechunk,
    find_head_end,
    known_request_head,
    parse_request_head,
    parse_response_head,
    partial_head_fault,
    request_body,
    response_body,
)

NEXT = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
"""A pipelined next request that must never be counted as part of a body."""


def req(head_lines: str, request_line: str = "POST /build HTTP/1.1") -> bytes:
    return (request_line + "\r\n" + head_lines + "\r\n").encode("latin-1")


def resp(head_lines: str, status_line: str = "HTTP/1.1 200 OK") -> bytes:
    return (status_line + "\r\n" + head_lines + "\r\n").encode("latin-1")


def chunked(body: bytes, sizes: list[int], *, ext: bool = False, trailers: bool = False) -> bytes:
    """``body`` in the chunked coding, cut into chunks of the given sizes (the rest last)."""
    out = bytearray()
    i = 0
    for size in [*sizes, len(body)]:
        piece = body[i : i + size]
        i += len(piece)
        if piece:
            out += b"%x%s\r\n%s\r\n" % (len(piece), b";name=value" if ext else b"", piece)
    out += b"0\r\n"
    if trailers:
        out += b"Trailer-One: 1\r\nTrailer-Two: 2\r\n"
    out += b"\r\n"
    return bytes(out)


def feed_pieces(body: Body, stream: bytes, cuts: list[int]) -> int:
    """Feed ``stream`` cut at ``cuts``; return the offset where the body said it ended.

    Also checks that ``done`` never turns true before the byte that ends the
    body and that nothing is consumed after it.
    """
    consumed = 0
    offset = 0
    for cut in [*sorted(cuts), len(stream)]:
        piece = stream[offset:cut]
        was_done = body.done
        n = body.feed(piece)
        assert 0 <= n <= len(piece)
        if was_done:
            assert n == 0, "a finished body must not consume the next message"
        elif not body.done:
            assert n == len(piece), "an unfinished body consumes all it is offered"
        consumed += n
        offset = max(offset, cut)
    assert body.done
    return consumed


# -- heads ---------------------------------------------------------------------


def test_find_head_end_points_just_past_the_blank_line() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY"
    assert find_head_end(raw) == len(raw) - 4
    assert find_head_end(raw[:-5]) == -1
    assert find_head_end(b"\r\n\r\n" + raw, 4) == len(raw)


def test_request_head_keeps_target_and_raw_bytes_exactly() -> None:
    """Routing reads the target; forwarding uses ``raw``: both must be untouched."""
    target = '/v1.41/containers/json?all=1&filters={"label":["a=b"]}&x=%2F%2f'
    raw = req("Host: docker\r\nX-Odd:   spaced  \r\n", f"GET {target} HTTP/1.1")
    head = parse_request_head(raw)
    assert head.method == "GET"
    assert head.target == target
    assert head.path == "/v1.41/containers/json"
    assert head.query == 'all=1&filters={"label":["a=b"]}&x=%2F%2f'
    assert head.raw is raw
    assert (head.content_length, head.chunked, head.close) == (None, False, False)


@pytest.mark.parametrize(
    ("lines", "version", "close"),
    [
        ("Connection: Upgrade\r\nUpgrade: tcp\r\n", "HTTP/1.1", False),
        ("connection: keep-alive, CLOSE\r\n", "HTTP/1.1", True),
        ("Connection: close\r\n", "HTTP/1.1", True),
        ("", "HTTP/1.0", True),
        ("Connection: keep-alive\r\n", "HTTP/1.0", False),
    ],
)
def test_connection_tokens(lines: str, version: str, close: bool) -> None:
    head = parse_request_head(req(lines, f"POST /containers/x/attach {version}"))
    assert head.close == close


@pytest.mark.parametrize(
    "request_line",
    ["GET /\tHTTP/1.1", "GET / HTTP/2.0", "GET  / HTTP/1.1", "G3T / HTTP/1.1", "garbage"],
)
def test_malformed_request_lines_are_refused(request_line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_request_head(req("Host: x\r\n", request_line))


@pytest.mark.parametrize(
    "lines",
    [
        # Two framings: the proxy and the daemon could disagree on the end.
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        # Two different lengths.
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x10\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        # Go refuses a list even of equal lengths, and reads an empty one as none.
        "Content-Length: 5, 5\r\n",
        "Content-Length: \r\n",
        "Content-Length: 1_0\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 5\r\nContent-Length: 05\r\n",
        "Content-Length: 9223372036854775808\r\n",  # past Go's 63 bits
        "Content-Length: " + "9" * 5000 + "\r\n",  # past int()'s limit on digits
        # Go takes exactly one Transfer-Encoding field, exactly chunked.
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: \r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chun\xe2\x84\xaaed\r\n",  # a Kelvin sign: Unicode folding
    ],
)
def test_conflicting_or_bad_request_framing_is_refused(lines: str) -> None:
    with pytest.raises(ProtocolError):
        parse_request_head(req(lines))


def test_refusals_quote_the_peer_boundedly() -> None:
    """The reason goes back to the client: it names the bytes, but not a megabyte of them."""
    with pytest.raises(ProtocolError) as refused:
        parse_request_head(req("Content-Length: " + "9" * 5000 + "\r\n"))
    assert str(refused.value) == "bad Content-Length '" + "9" * 40 + "'..."
    with pytest.raises(ProtocolError) as refused:
        parse_request_head(req("X" * 5000 + " : 1\r\n"))
    assert str(refused.value) == "whitespace before a colon"
    with pytest.raises(ProtocolError) as refused:
        parse_request_head(req("X" * 5000 + "(: 1\r\n"))
    assert len(str(refused.value)) < 80


def test_transfer_encoding_on_http_1_0_is_refused() -> None:
    """Go ignores it on HTTP/1.0 and frames by length: the chunks would be a next request."""
    head = req("Transfer-Encoding: chunked\r\n", "POST /build HTTP/1.0")
    with pytest.raises(ProtocolError, match=r"HTTP/1\.0"):
        parse_request_head(head)
    with pytest.raises(ProtocolError, match=r"HTTP/1\.0"):
        parse_response_head(resp("Transfer-Encoding: chunked\r\n", "HTTP/1.0 200 OK"))


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", " chunked\t"])
def test_chunked_is_read_case_insensitively_as_go_does(value: str) -> None:
    head = parse_request_head(req(f"Transfer-Encoding:{value}\r\n"))
    assert head.chunked and head.content_length is None


# Each of these is read by Go's net/http, differently from a strict reader or
# in a way a strict reader cannot follow; the message says which rule broke.
AMBIGUOUS_HEADS = [
    (b"GET /_ping HTTP/1.1\r\nHost: d\nX: y\r\n\r\n", "bare LF"),
    (b"GET /_ping HTTP/1.1\nHost: d\r\n\r\n", "bare LF"),
    (b"GET /_ping HTTP/1.1\r\nHost: d\n\r\n", "bare LF"),
    (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: a\r\n b\r\n\r\n", "folded"),
    (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: a\r\n\tb\r\n\r\n", "folded"),
    (b"GET /_ping HTTP/1.1\r\n Host: d\r\n\r\n", "folded"),
    (b"GET /_ping HTTP/1.1\r\nContent-Length : 3\r\n\r\n", "whitespace before a colon"),
    (b"GET /_ping HTTP/1.1\r\nContent-Length\t: 3\r\n\r\n", "whitespace before a colon"),
    (b"GET /_ping HTTP/1.1\r\nX-A(b): 3\r\n\r\n", "invalid header name"),
    (b"GET /_ping HTTP/1.1\r\n: 3\r\n\r\n", "invalid header name"),
    (b"GET /_ping HTTP/1.1\r\nX\x00: 3\r\n\r\n", "invalid header name"),
    (b"GET /_ping HTTP/1.1\r\nNoColon\r\n\r\n", "without a colon"),
    (b"GET /_ping HTTP/1.1\r\nX: a\x01b\r\n\r\n", "control byte"),
    (b"GET /_ping HTTP/1.1\r\nX: a\rb\r\n\r\n", "control byte"),
    (b"GET /_ping HTTP/1.1\r\nX: a\x7f\r\n\r\n", "control byte"),
    (b"GET /_p\x01ing HTTP/1.1\r\nHost: d\r\n\r\n", "malformed request line"),
    (b"GET /_ping\x7f HTTP/1.1\r\nHost: d\r\n\r\n", "malformed request line"),
    (b"GET /_ping HTTP/1.1 \r\nHost: d\r\n\r\n", "malformed request line"),
    (b"GET /_ping HTTP/1.2\r\nHost: d\r\n\r\n", "malformed request line"),
    (b"GET /_ping HTTP/1.10\r\nHost: d\r\n\r\n", "malformed request line"),
    (b"\r\n", "malformed request line"),
]


@pytest.mark.parametrize(("raw", "reason"), AMBIGUOUS_HEADS)
def test_ambiguous_request_heads_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_request_head(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "bare LF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 O\x01K\r\n\r\n", "malformed status line"),
    ],
)
def test_ambiguous_response_heads_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_response_head(raw)


def test_a_head_of_more_fields_than_the_cap_is_refused() -> None:
    """A megabyte of short lines would cost the grammar's regex a tenth of a second."""
    assert parse_request_head(req("X: y\r\n" * MAX_FIELDS)).method == "POST"
    with pytest.raises(ProtocolError, match="header fields"):
        parse_request_head(req("X: y\r\n" * (MAX_FIELDS + 1)))


def test_a_response_head_is_checked_only_where_it_frames() -> None:
    """dockerd writes its own field lines; only what frames the body is checked."""
    head = parse_response_head(resp("X: a\x01b\r\nContent-Length: 3\r\n"))
    assert (head.content_length, head.chunked, head.close) == (3, False, False)


def test_status_line_reason_is_optional_and_free_text() -> None:
    assert parse_response_head(b"HTTP/1.1 204\r\n\r\n").status == 204
    assert parse_response_head(b"HTTP/1.1 400 Bad Request: invalid \xff\r\n\r\n").status == 400


@pytest.mark.parametrize(
    ("stream", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", 27),
        # Go ends a head at the first empty line, CRLF or not: so does the framer,
        # and the parser then refuses it instead of waiting for a CRLF CRLF.
        (b"GET / HTTP/1.1\r\nHost: x\n\nPOST / HTTP/1.1\r\n\r\n", 25),
        (b"GET / HTTP/1.1\nHost: x\n\r\nPOST / HTTP/1.1\r\n\r\n", 25),
        (b"GET / HTTP/1.1\n\n", 16),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 2),  # an empty request line: Go refuses at once
        (b"\nGET / HTTP/1.1\r\n\r\n", 1),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", -1),
        (b"GET / HTTP/1.1\r\nHost: x\r\r\n", -1),
    ],
)
def test_head_ends_at_the_first_empty_line_as_go_reads_lines(stream: bytes, end: int) -> None:
    assert find_head_end(stream) == end
    if end > 0 and stream[:end] != b"GET / HTTP/1.1\r\nHost: x\r\n\r\n":
        with pytest.raises(ProtocolError):
            parse_request_head(stream[:end])


def test_repeated_equal_content_length_is_one_length() -> None:
    assert parse_request_head(req("Content-Length: 7\r\ncontent-length: 7\r\n")).content_length == 7


def test_header_names_match_whole_names_only() -> None:
    """``X-Content-Length`` is not ``Content-Length``; a suffix match would mis-frame."""
    head = parse_request_head(req("X-Content-Length: 9\r\nX-Transfer-Encoding: chunked\r\n"))
    assert (head.content_length, head.chunked) == (None, False)
    assert request_body(head).done


def test_response_head_fields() -> None:
    head = parse_response_head(resp("Content-Length: 12\r\nConnection: close\r\n"))
    assert (head.status, head.content_length, head.chunked, head.close) == (200, 12, False, True)
    assert parse_response_head(resp("", "HTTP/1.0 200 OK")).close
    with pytest.raises(ProtocolError):
        parse_response_head(b"garbage\r\n\r\n")
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n")


def test_response_chunked_wins_over_content_length() -> None:
    """RFC 9112 6.3: with both, Transfer-Encoding frames the message."""
    head = parse_response_head(resp("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"))
    assert head.chunked and head.content_length is None
    assert isinstance(response_body(head, "GET"), ChunkedBody)


# -- which body ------------------------------------------------------------------


def test_request_bodies() -> None:
    assert request_body(parse_request_head(req(""))).done
    assert request_body(parse_request_head(req("Content-Length: 0\r\n"))).done
    length = request_body(parse_request_head(req("Content-Length: 10\r\n")))
    assert isinstance(length, LengthBody) and not length.done
    chunk = request_body(parse_request_head(req("Transfer-Encoding: chunked\r\n")))
    assert isinstance(chunk, ChunkedBody) and not chunk.done


@pytest.mark.parametrize(
    ("status_line", "lines", "method"),
    [
        ("HTTP/1.1 200 OK", "Content-Length: 100\r\n", "HEAD"),
        ("HTTP/1.1 200 OK", "Transfer-Encoding: chunked\r\n", "HEAD"),
        ("HTTP/1.1 204 No Content", "", "DELETE"),
        ("HTTP/1.1 304 Not Modified", "Content-Length: 10\r\n", "POST"),
        ("HTTP/1.1 100 Continue", "", "POST"),
        ("HTTP/1.1 101 Switching Protocols", "Upgrade: tcp\r\n", "POST"),
    ],
)
def test_responses_without_a_body(status_line: str, lines: str, method: str) -> None:
    """HEAD, 1xx, 204 and 304 end at the head whatever they announce."""
    body = response_body(parse_response_head(resp(lines, status_line)), method)
    assert body.done
    assert body.feed(NEXT) == 0


def test_response_without_length_runs_until_close() -> None:
    body = response_body(parse_response_head(resp("Content-Type: x\r\n")), "POST")
    assert isinstance(body, UntilCloseBody)
    assert body.feed(NEXT) == len(NEXT) and not body.done
    assert body.feed(NEXT, 5) == len(NEXT) - 5 and not body.done


def test_100_continue_then_final_response() -> None:
    """An interim 100 has no body, so the final head that follows is read as a head."""
    stream = resp("", "HTTP/1.1 100 Continue") + resp("Content-Length: 2\r\n") + b"ok" + NEXT
    first_end = find_head_end(stream)
    first = parse_response_head(stream[:first_end])
    assert first.status == 100 and response_body(first, "POST").done
    second_end = find_head_end(stream, first_end)
    second = parse_response_head(stream[first_end:second_end])
    body = response_body(second, "POST")
    assert body.feed(stream, second_end) == 2 and body.done


# -- Content-Length ----------------------------------------------------------------


def test_length_body_at_every_split() -> None:
    payload = bytes(range(40))
    stream = payload + NEXT
    for cut in range(len(stream) + 1):
        assert feed_pieces(LengthBody(len(payload)), stream, [cut]) == len(payload)


def test_length_body_with_start_offset() -> None:
    body = LengthBody(3)
    assert body.feed(b"HEADabcdef", 4) == 3 and body.done
    assert body.feed(b"more") == 0


# -- chunked -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "trailers"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_chunked_body_at_every_split(ext: bool, trailers: bool) -> None:
    """Cut once and twice at every position: size lines, CRLFs, data and trailers."""
    encoded = chunked(b"hello, chunked world\r\n0\r\n", [1, 3, 16], ext=ext, trailers=trailers)
    stream = encoded + NEXT
    for cut in range(len(stream) + 1):
        assert feed_pieces(ChunkedBody(), stream, [cut]) == len(encoded)
    for a in range(0, len(encoded) + 1, 3):
        for b in range(a, len(encoded) + 2):
            assert feed_pieces(ChunkedBody(), stream, [a, b]) == len(encoded)


def test_chunked_body_byte_by_byte() -> None:
    encoded = chunked(b"x" * 300, [255, 1])
    stream = encoded + NEXT
    assert feed_pieces(ChunkedBody(), stream, list(range(len(stream)))) == len(encoded)


def test_chunked_uppercase_hex_and_zero_padding() -> None:
    body = ChunkedBody()
    encoded = b"A\r\nabcdefghij\r\n000\r\n\r\n"
    assert body.feed(encoded + NEXT) == len(encoded) and body.done


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        (b"zz\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"2\r\nabc\r\n0\r\n\r\n", "not followed by CRLF"),  # data longer than its size
        (b"-2\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"1" * (MAX_CHUNK_LINE + 10), "too long"),  # a size line that never ends
        # int(x, 16) reads these; Go does not.
        (b"0x2\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", "bad chunk size"),
        (b" 2\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"2 \r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"2 ;x\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"+2\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"\r\n", "bad chunk size"),  # Go reads an empty size as 0
        (b"1" * 17 + b"\r\n", "bad chunk size"),  # more than Go's 16 digits
        (b"2;a\x01b\r\nab\r\n0\r\n\r\n", "bad chunk size"),  # CTL in an extension
        # Bare LF: Go ends a size line there but insists on CRLF after data.
        (b"2\nab\r\n0\r\n\r\n", "bad chunk size"),
        (b"2\r\nab\n0\r\n\r\n", "not followed by CRLF"),
        (b"2\r\nab\r\r\n", "not followed by CRLF"),
        (b"0\r\n\n", "malformed trailer"),
        (b"0\r\nX: y\n\r\n", "malformed trailer"),
        (b"0\r\nX : y\r\n\r\n", "malformed trailer"),
        (b"0\r\n folded\r\n\r\n", "malformed trailer"),
        (b"0\r\n" + b"X: y\r\n" * 400 + b"\r\n", "trailer too large"),
    ],
)
def test_bad_chunked_bodies_are_refused(encoded: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        ChunkedBody().feed(encoded)


def test_chunk_overrun_is_refused_before_the_next_lf() -> None:
    """Go reads exactly two bytes after chunk data; so does the framer, not a whole line."""
    body = ChunkedBody()
    with pytest.raises(ProtocolError):
        body.feed(b"2\r\nabX")


def test_dechunk_decodes_extensions_and_trailers() -> None:
    encoded = chunked(b'{"Image": "busybox"}', [3, 5], ext=True, trailers=True)
    assert dechunk(encoded) == b'{"Image": "busybox"}'


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=2000),
    sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    ext=st.booleans(),
    trailers=st.booleans(),
    tail=st.binary(max_size=64),
)
def test_any_chunked_body_in_any_pieces_ends_exactly_at_its_end(
    body: bytes, sizes: list[int], cuts: list[int], ext: bool, trailers: bool, tail: bytes
) -> None:
    """Whatever the chunking and however the stream is cut, the end is exact."""
    encoded = chunked(body, sizes, ext=ext, trailers=trailers)
    stream = encoded + tail
    cuts = [c for c in cuts if c <= len(stream)]
    assert feed_pieces(ChunkedBody(), stream, cuts) == len(encoded)
    assert dechunk(encoded) == body


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
)
def test_any_length_body_in_any_pieces_ends_exactly_at_its_end(
    length: int, cuts: list[int]
) -> None:
    stream = b"b" * length + NEXT
    cuts = [c for c in cuts if c <= len(stream)]
    body = LengthBody(length)
    if length == 0:
        assert body.done and body.feed(stream) == 0
        return
    assert feed_pieces(body, stream, cuts) == length


# -- any head: strict ones frame exactly, any ambiguity is refused -----------------

_FRAMING_NAMES = (b"content-length", b"transfer-encoding", b"connection")
_NAMES = st.from_regex(rb"\A[A-Za-z][-A-Za-z0-9_.!#$%&'*+^`|~]{0,12}\Z").filter(
    lambda n: n.lower() not in _FRAMING_NAMES
)
_VALUE_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
_VALUES = st.lists(st.sampled_from(_VALUE_BYTES), max_size=24).map(bytes)
_CTLS = [*range(0, 9), *range(0x0B, 0x20), 0x7F]


@st.composite
def strict_requests(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Field lines of a strict head (request line first) and a body framed by them."""
    lines = [b"POST /v1.41/containers/create HTTP/1.1", b"Host: docker"]
    lines += [n + b":" + v for n, v in draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))]
    payload = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        lines.insert(draw(st.integers(1, len(lines))), b"Content-Length: %d" % len(payload))
        return lines, payload
    if framing == "chunked":
        lines.insert(draw(st.integers(1, len(lines))), b"Transfer-Encoding: chunked")
        return lines, chunked(payload, [])
    return lines, b""


def head_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(request=strict_requests())
def test_any_strict_head_parses_and_frames_its_body_exactly(
    request: tuple[list[bytes], bytes],
) -> None:
    lines, body = request
    head = head_of(lines)
    stream = head + body + NEXT
    assert find_head_end(stream) == len(head)
    parsed = parse_request_head(head)
    assert feed_pieces(request_body(parsed), stream[len(head) :], []) == len(body)


def _mutations(line: bytes, draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Ways to make one field line ambiguous, as (where it goes, the new line)."""
    name, _, value = line.partition(b":")
    at = draw(st.integers(0, len(value)))
    ctl = bytes([draw(st.sampled_from(_CTLS))])
    return [
        ("replace", line + b"\n"),  # a bare LF ends it; its CRLF is dropped below
        ("replace", name + draw(st.sampled_from([b" ", b"\t", b"  "])) + b":" + value),
        ("replace", name + b":" + value[:at] + ctl + value[at:]),
        ("replace", name[:1] + draw(st.sampled_from([b"(", b" ", b"@", b"\x00"])) + line[1:]),
        ("after", draw(st.sampled_from([b" ", b"\t"])) + draw(_VALUES)),  # obs-fold
        ("after", draw(st.sampled_from(_CONFLICTS))),
    ]


_CONFLICTS = [
    b"Content-Length: 1000",  # bodies here are shorter: never a harmless repeat
    b"Content-Length: 1, 1",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, chunked",
    b"Content-Length:",
]


@settings(max_examples=500, deadline=None)
@given(request=strict_requests(), data=st.data())
def test_any_ambiguity_anywhere_in_a_head_is_refused(
    request: tuple[list[bytes], bytes], data: st.DataObject
) -> None:
    """One ambiguity in any field line, and the head that Go would end is refused."""
    lines, body = request
    framing = any(line.lower().startswith(_FRAMING_NAMES[:2]) for line in lines)
    i = data.draw(st.integers(1, len(lines) - 1))
    options = _mutations(lines[i], data.draw)
    how, line = data.draw(st.sampled_from(options if framing else options[:-1]))
    if how == "replace":
        head = head_of(lines[:i])[:-2] + line + (b"" if line.endswith(b"\n") else b"\r\n")
        head += head_of(lines[i + 1 :]) if i + 1 < len(lines) else b"\r\n"
    else:
        head = head_of([*lines[: i + 1], line, *lines[i + 1 :]])
    stream = head + body + NEXT
    end = find_head_end(stream)
    assert 0 < end <= len(head)
    with pytest.raises(ProtocolError):
        parse_request_head(stream[:end])


# -- framing fields and remembered heads ----------------------------------------

_FIELD_NAMES = st.sampled_from(
    ["Content-Length", "content-length", "CONTENT-LENGTH", "Transfer-Encoding",
     "transfer-encoding", "Connection", "CONNECTION", "X-Content-Length", "Content-Type",
     "Host", "Connection-Extra"]
)  # fmt: skip
_FIELD_VALUES = st.text(alphabet=" \t\r0123456789abcCKLOSE,-", max_size=40)


def _reading_by_lines(raw: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The framing fields as a reader that splits every line would find them."""
    found: dict[bytes, list[bytes]] = {
        b"content-length": [],
        b"transfer-encoding": [],
        b"connection": [],
    }
    for line in raw.lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name in found:
            found[name].append(value.strip(b" \t"))
    return found[b"content-length"], found[b"transfer-encoding"], found[b"connection"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=8))
def test_the_framing_scan_reads_what_splitting_every_line_reads(
    fields: list[tuple[str, str]],
) -> None:
    raw = resp("".join(f"{name}:{value}\r\n" for name, value in fields))
    assert http1._framing(http1._FRAMING.findall(raw.lower())) == _reading_by_lines(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r3\r\n\r\n", "bare CR or LF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\n3\r\n\r\n", "bare CR or LF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\n", "bare CR or LF"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\n\n",
            "bare CR or LF",
        ),
        # Go's client reads the length after the bare LF; a scan for CRLF would not.
        (b"HTTP/1.1 200 OK\r\nX: y\nContent-Length: 5\r\n\r\n", "bare CR or LF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\r\n\r\n", "bare CR or LF"),
    ],
)
def test_a_daemon_head_a_crlf_scan_could_misread_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_response_head(raw)


def test_the_framing_scan_is_linear_in_a_value_of_spaces() -> None:
    """A bound on a hang, not a timing: a quadratic scan takes hours on this head."""
    raw = b"GET / HTTP/1.1\r\nConnection: a" + b" " * 1_000_000 + b"b\r\n\r\n"
    started = time.perf_counter()
    assert not parse_request_head(raw).close
    assert time.perf_counter() - started < 5


def test_a_head_parsed_before_is_known_by_its_bytes_and_frozen() -> None:
    raw = b"GET /_ping?remembered HTTP/1.1\r\nHost: docker\r\n\r\n"
    http1._known.clear()
    assert known_request_head(raw) is None
    head = parse_request_head(raw)
    assert known_request_head(raw) is head and parse_request_head(raw) is head
    assert (head.path, head.query) == ("/_ping", "remembered")
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.method = "POST"  # type: ignore[misc]
    assert known_request_head(raw[:-2]) is None, "only the whole head"


def test_refused_and_long_heads_are_never_remembered() -> None:
    http1._known.clear()
    refused = b"GET / HTTP/1.1\r\nHost : d\r\n\r\n"
    for _ in range(2):
        with pytest.raises(ProtocolError, match="whitespace before a colon"):
            parse_request_head(refused)
    long = req("X-Registry-Config: " + "a" * KNOWN_SIZE + "\r\n", "GET /info HTTP/1.1")
    assert parse_request_head(long).path == "/info"
    assert known_request_head(long) is None and not http1._known


def test_the_memo_stays_bounded() -> None:
    http1._known.clear()
    for i in range(KNOWN_HEADS * 3):
        parse_request_head(b"GET /containers/%d/json HTTP/1.1\r\n\r\n" % i)
        assert len(http1._known) <= KNOWN_HEADS


# -- a head still arriving ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(strict_requests(), st.data())
def test_no_line_of_a_head_the_grammar_takes_is_refused_early(
    request: tuple[list[bytes], bytes], data: st.DataObject
) -> None:
    lines, _ = request
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    prefix = raw[: data.draw(st.integers(0, len(raw) - 1))]  # the empty line not yet whole
    stop = prefix.rfind(b"\n") + 1
    assert partial_head_fault(prefix, 0, stop) is None
    middle = data.draw(st.integers(0, stop))
    middle = prefix.rfind(b"\n", 0, middle) + 1  # judged in two looks, each of whole lines
    assert partial_head_fault(prefix, 0, middle) is None
    assert partial_head_fault(prefix, middle, stop) is None


@pytest.mark.parametrize(
    ("partial", "reason"),
    [
        (b"GARBAGE\r\n", "malformed request line"),
        (b"GET / HTTP/1.1\r\nNo colon\r\n", "without a colon"),
        (b"GET / HTTP/1.1\r\nHost : d\r\n", "whitespace before a colon"),
        (b"GET / HTTP/1.1\r\n folded\r\n", "folded"),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\nY: ", "control byte"),
        (b"GET / HTTP/1.1\nHost: d\n", "bare LF"),
    ],
)
def test_a_bad_whole_line_of_a_head_still_arriving_is_named(partial: bytes, reason: str) -> None:
    fault = partial_head_fault(partial, 0, partial.rfind(b"\n") + 1)
    assert fault is not None and reason in fault
    with pytest.raises(ProtocolError, match=reason):  # the same verdict, whole
        parse_request_head(partial[: partial.rfind(b"\n") + 1] + b"\r\n")


def test_a_head_still_arriving_is_held_to_the_field_count() -> None:
    partial = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_FIELDS + 1)
    assert partial_head_fault(partial, 0, len(partial)) == f"more than {MAX_FIELDS} header fields"
    with pytest.raises(ProtocolError, match="header fields"):  # the same verdict, whole
        parse_request_head(partial + b"\r\n")
    assert partial_head_fault(partial[:-6], 0, len(partial) - 6) is None
