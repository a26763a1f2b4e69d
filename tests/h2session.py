"""BuildKit ``/session`` connections for the session relay's tests, written frame by frame.

Rules:
- A session is what dockerd 26 and buildx 0.13 exchange after the 101: the
  daemon's preface and calls, the CLI's answers, and the fsutil packets of a
  Dockerfile's DiffCopy and of a context's, with health checks between.
- The shapes vary where the real ones may: files interleave, a message may
  span frames, a frame may carry several, the ignore file may end before or
  after the Dockerfile, the context may itself hold a ``Dockerfile`` and
  payloads the relay must never read.

Theory of operation:
``session()`` draws a ``Session``: an ordered list of segments, each the
bytes one side sends next, tagged when they matter to a test (the frame of
the Dockerfile's end). ``deliveries()`` then cuts both byte streams at
random points and orders the pieces causally: before a side sends, what the
other side sent before has arrived (a side only answers what it has seen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import strategies as st

from proxy.wire import fsutil
from proxy.wire.fsutil import varint
from proxy.wire.grpcmessages import message
from proxy.wire.sessionrelay import PREFACE

CLIENT = "client"
DAEMON = "daemon"
DOCKERFILE_STREAM = 3
CONTEXT_STREAM = 5
DIFFCOPY = "/moby.filesync.v1.FileSync/DiffCopy"


def field_bytes(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def stat(path: str | None, ident: int, size: int = 0) -> bytes:
    """A STAT packet as fsutil writes it (proto3: zero fields left out)."""
    if path is None:
        return b""
    body = field_bytes(1, path.encode()) + field_int(2, 0o100644) + field_int(5, size)
    body += field_int(6, 1_700_000_000_000_000_000)  # mod time: a field the relay skips
    return field_bytes(2, body) + field_int(3, ident)


def data(ident: int, chunk: bytes) -> bytes:
    return (
        field_int(1, fsutil.DATA) + field_int(3, ident) + (field_bytes(4, chunk) if chunk else b"")
    )


def req(ident: int) -> bytes:
    return field_int(1, fsutil.REQ) + field_int(3, ident)


FIN = field_int(1, fsutil.FIN)


@dataclass
class Segment:
    side: str
    raw: bytes
    tag: str = ""


@dataclass
class Session:
    segments: list[Segment] = field(default_factory=list)
    dockerfile: bytes = b""
    name: str = "Dockerfile"

    def add(self, side: str, raw: bytes, tag: str = "") -> None:
        self.segments.append(Segment(side, raw, tag))

    def stream(self, side: str) -> bytes:
        return b"".join(s.raw for s in self.segments if s.side == side)

    def tagged(self, tag: str) -> bytes:
        (segment,) = [s for s in self.segments if s.tag == tag]
        return segment.raw


class Writer:
    """Both peers' HTTP/2 encoders."""

    def __init__(self, session: Session, table: int | None) -> None:
        self.session = session
        self.encoders = {CLIENT: Encoder(), DAEMON: Encoder()}
        settings = SettingsFrame(0)
        if table is not None:
            settings.settings[SettingsFrame.HEADER_TABLE_SIZE] = table
            self.encoders[DAEMON].header_table_size = table
        session.add(DAEMON, PREFACE + SettingsFrame(0).serialize())
        session.add(CLIENT, settings.serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
        session.add(DAEMON, SettingsFrame(0, flags=["ACK"]).serialize())

    def headers(
        self,
        side: str,
        stream: int,
        fields: list[tuple[str, str]],
        end: bool = False,
        split: int = 0,
    ) -> None:
        block = self.encoders[side].encode(fields)
        if split and len(block) > split:
            first = HeadersFrame(stream, block[:split], flags=["END_STREAM"] if end else [])
            rest = ContinuationFrame(stream, block[split:], flags=["END_HEADERS"])
            self.session.add(side, first.serialize() + rest.serialize())
            return
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        self.session.add(side, HeadersFrame(stream, block, flags=flags).serialize())

    def call(self, stream: int, path: str, extra: list[tuple[str, str]], split: int = 0) -> None:
        fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "d")]
        fields += [("content-type", "application/grpc"), *extra]
        self.headers(DAEMON, stream, fields, split=split)
        self.headers(CLIENT, stream, [(":status", "200"), ("content-type", "application/grpc")])

    def messages(
        self, side: str, stream: int, packets: list[bytes], cut: int, tag: str = ""
    ) -> None:
        """The packets as gRPC messages, in frames of at most ``cut`` bytes (0: one frame each)."""
        raw = b"".join(message(p) for p in packets)
        if not cut:
            frames = [DataFrame(stream, message(p)).serialize() for p in packets]
        else:
            frames = [
                DataFrame(stream, raw[i : i + cut]).serialize() for i in range(0, len(raw), cut)
            ]
        self.session.add(side, b"".join(frames), tag)

    def health(self, stream: int) -> None:
        self.call(stream, "/grpc.health.v1.Health/Check", [])
        self.session.add(DAEMON, DataFrame(stream, message(b""), flags=["END_STREAM"]).serialize())
        self.session.add(CLIENT, DataFrame(stream, message(b"\x08\x01")).serialize())
        self.headers(CLIENT, stream, [("grpc-status", "0")], end=True)


@st.composite
def session(
    draw: st.DrawFn,
    ignore: bool | None = None,
    listed: bool = True,
    context_dockerfile: bool = True,
    cached: bool = False,
    name: str | None = None,
) -> Session:
    """A build's session: a Dockerfile DiffCopy and a context DiffCopy, health checks between.

    ``listed=False``: the file the daemon asks for (``followpaths``) is not in the listing.
    ``cached=True``: dockerd 20.10's repeated build: the daemon has the listed Dockerfile
    already, asks only for the ignore file (if any), and sends its FIN (tagged ``fin``).
    """
    s = Session()
    s.name = name or draw(st.sampled_from(["Dockerfile", "build.Dockerfile", "dockerfile"]))
    s.dockerfile = draw(st.binary(max_size=300)) or b"FROM base\n"
    with_ignore = draw(st.booleans()) if ignore is None else ignore
    w = Writer(s, draw(st.sampled_from([None, 0, 1024, 8192])))
    cut = draw(st.sampled_from([0, 0, 3, 7, 64]))
    w.health(1)
    follow = [("dir-name", "dockerfile"), ("followpaths", s.name),
              ("followpaths", s.name + ".dockerignore"), ("followpaths", "dockerfile")]  # fmt: skip
    w.call(DOCKERFILE_STREAM, DIFFCOPY, follow, split=draw(st.sampled_from([0, 0, 5])))
    sent = s.name if listed else "Containerfile"
    entries = [sent] + ([s.name + ".dockerignore"] if with_ignore else [])
    entries.sort()
    ids = {name: i for i, name in enumerate(entries)}
    listing = [stat(name, i, 10) for i, name in enumerate(entries)] + [stat(None, 0)]
    w.messages(CLIENT, DOCKERFILE_STREAM, listing, cut)
    if cached:
        cached_rest(w, s, ids, with_ignore, cut)
        return s
    w.session.add(
        DAEMON,
        DataFrame(DOCKERFILE_STREAM, b"".join(message(req(i)) for i in ids.values())).serialize(),
    )
    # The files' packets, interleaved: each file's own packets stay in order.
    chunks = [s.dockerfile[i : i + 100] for i in range(0, len(s.dockerfile), 100)]
    queues = {s.name: [data(ids[sent], c) for c in chunks]}
    if with_ignore:
        queues[s.name + ".dockerignore"] = [data(ids[s.name + ".dockerignore"], b"*.log\n")]
    order = draw(st.permutations([n for n, q in queues.items() for _ in q]))
    for name in order:
        w.messages(CLIENT, DOCKERFILE_STREAM, [queues[name].pop(0)], cut)
    ignore_last = with_ignore and draw(st.booleans())
    if with_ignore and not ignore_last:
        w.messages(
            CLIENT, DOCKERFILE_STREAM, [data(ids[s.name + ".dockerignore"], b"")], cut, "ignore_end"
        )
    if draw(st.booleans()):
        w.health(7)
    w.messages(CLIENT, DOCKERFILE_STREAM, [data(ids[sent], b"")], 0, "end")
    if ignore_last:
        w.messages(
            CLIENT, DOCKERFILE_STREAM, [data(ids[s.name + ".dockerignore"], b"")], cut, "ignore_end"
        )
    w.session.add(DAEMON, DataFrame(DOCKERFILE_STREAM, message(FIN)).serialize(), "fin")
    w.messages(CLIENT, DOCKERFILE_STREAM, [FIN], 0)
    w.headers(CLIENT, DOCKERFILE_STREAM, [("grpc-status", "0")], end=True)
    # The context: files the relay never reads, a Dockerfile among them.
    w.call(CONTEXT_STREAM, DIFFCOPY, [("dir-name", "context")])
    names = ["Dockerfile", "app.py"] if context_dockerfile else ["app.py"]
    w.messages(
        CLIENT, CONTEXT_STREAM, [stat(n, i) for i, n in enumerate(names)] + [stat(None, 0)], cut
    )
    w.session.add(
        DAEMON,
        DataFrame(CONTEXT_STREAM, b"".join(message(req(i)) for i in range(len(names)))).serialize(),
    )
    for i in range(len(names)):
        w.messages(CLIENT, CONTEXT_STREAM, [data(i, b"x" * 50), data(i, b"")], cut)
    # A payload no fsutil packet is: a compressed message, and garbage.
    w.session.add(CLIENT, DataFrame(CONTEXT_STREAM, b"\x01\x00\x00\x00\x02\xff\xff").serialize())
    w.session.add(
        CLIENT, DataFrame(CONTEXT_STREAM, b"\x00\x00\x00\x00\x03\xff\xff\xff").serialize()
    )
    w.headers(CLIENT, CONTEXT_STREAM, [("grpc-status", "0")], end=True)
    w.health(9)
    return s


def cached_rest(w: Writer, s: Session, ids: dict[str, int], with_ignore: bool, cut: int) -> None:
    """The Dockerfile stream after its listing when the daemon keeps the Dockerfile: its FIN."""
    ignore = s.name + ".dockerignore"
    if with_ignore:
        w.session.add(DAEMON, DataFrame(DOCKERFILE_STREAM, message(req(ids[ignore]))).serialize())
        w.messages(
            CLIENT, DOCKERFILE_STREAM, [data(ids[ignore], b"*.log\n"), data(ids[ignore], b"")], cut
        )
    w.health(7)
    w.session.add(DAEMON, DataFrame(DOCKERFILE_STREAM, message(FIN)).serialize(), "fin")
    w.messages(CLIENT, DOCKERFILE_STREAM, [FIN], 0)
    w.headers(CLIENT, DOCKERFILE_STREAM, [("grpc-status", "0")], end=True)
    w.session.add(CLIENT, RstStreamFrame(DOCKERFILE_STREAM, 0).serialize())
    w.session.add(DAEMON, RstStreamFrame(DOCKERFILE_STREAM, 0).serialize())
    w.health(9)


@st.composite
def deliveries(draw: st.DrawFn, s: Session) -> list[tuple[str, bytes]]:
    """The session's bytes as reads of the relay: random cuts, causal order."""
    out: list[tuple[str, bytes]] = []
    pending = {CLIENT: b"", DAEMON: b""}

    def deliver(side: str, everything: bool) -> None:
        while pending[side]:
            size = draw(st.integers(1, max(1, len(pending[side]))))
            out.append((side, pending[side][:size]))
            pending[side] = pending[side][size:]
            if not everything and draw(st.booleans()):
                return

    for segment in s.segments:
        other = DAEMON if segment.side == CLIENT else CLIENT
        deliver(other, everything=True)
        pending[segment.side] += segment.raw
        deliver(segment.side, everything=False)
    deliver(CLIENT, everything=True)
    deliver(DAEMON, everything=True)
    return out
