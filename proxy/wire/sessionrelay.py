"""The BuildKit session relay, sans I/O: hold back a build's Dockerfile end until its bases heal.

Rules:
- After the 101 of a hijacked ``POST /session`` the connection is h2c, and
  dockerd is the HTTP/2 client: it sends the preface and calls the CLI's
  gRPC services. Bytes pass on at once and unchanged, in order; the relay
  only reads along.
- It decodes frames with ``hyperframe`` and header blocks with ``hpack``,
  one decoder for the blocks each side sends, in order, trailers included,
  each allowed the table size the receiving side announced in its SETTINGS.
  A frame longer than the receiving side announced it takes
  (``SETTINGS_MAX_FRAME_SIZE``, 16 KiB until it says more) is not read: it
  is that side's protocol error, and one of 16 MiB on the Dockerfile's
  stream would be millions of packets decoded in one go.
  It never runs an HTTP/2 connection of its own: it enforces no flow
  control, no stream rules, no limits of the peers.
- Decode only what it must. Only a ``FileSync/DiffCopy`` stream whose
  ``dir-name`` is ``dockerfile`` has its payload read (gRPC messages, then
  fsutil packets): the Dockerfile's own transfer. Context streams, health
  checks and every other call pass without a look at their payloads.
- Hold one frame: the DATA frame of the CLI in which the Dockerfile's end
  packet (an empty DATA packet with the Dockerfile's ID) completes, and any
  later DATA frame of that stream. The Dockerfile's ID is that of the STAT
  whose path is the stream's first ``followpaths`` value (else
  ``Dockerfile``). Until its frame is whole, a DATA frame of that stream
  waits, from either side; every other frame is passed on as its bytes
  come. The held text is capped (the caller's ``limit``); a larger
  Dockerfile fails open. So are a header block (``MAX_BLOCK``) and what is
  held behind an end (``MAX_HELD``: a CLI that ignores flow control could
  send on for as long as a heal takes).
- A Dockerfile the daemon does not ask for: dockerd 20.10 keeps the last
  one of each folder and asks (REQ) only for a file whose listed Stat
  changed, so a repeated build lists it and ends the exchange with the
  daemon's FIN at once. Then the text is the one ``sessionmemory`` kept for
  this session's shared key, file name and Stat, and the frame held is the
  daemon's FIN (the transfer, so the read of the Dockerfile, is not over
  until the CLI answers it). With no such text the relay fails open. Only
  a text the daemon asked for is kept: one sent unasked it refuses, and
  keeps its own.
- A hold ends with ``release`` (the held frames go on unchanged) or
  ``refuse`` (one fsutil ERR packet goes to the daemon in the CLI's name,
  in place of the held end, and the CLI prints its text). The frontend
  reads the Dockerfile, and so resolves its bases, only once the transfer
  is complete, so a held end is a build waiting.
- Fail open. Anything unexpected (a decode error, an unknown frame type or
  packet shape, a compressed gRPC message, HEADERS or RST_STREAM on a held
  stream, an end of file inside a frame or during a hold, a bound passed)
  and the caller's own ``give_up`` (a parse timeout) flush everything held
  or waiting, in order, and the relay becomes a plain splice for the rest
  of the connection. The build then does exactly what it would without the proxy.
- Pure: no I/O, no asyncio. Bytes go in through ``from_client`` and
  ``from_daemon`` and come out of ``data_for_daemon`` and
  ``data_for_client``; holds come out of ``next_hold``.

Theory of operation:
Each direction is a ``_Side``: the preface it still owes (the daemon's), a
frame header still arriving, the frame whose payload is arriving and how it
is read. A frame is *passed* (its bytes are forwarded as they come),
*inspected* (forwarded as they come and copied, to be decoded once whole:
HEADERS, CONTINUATION, SETTINGS) or *collected* (kept until whole, then
forwarded or held: DATA frames of a tracked stream, either side's, and
the daemon's connection WINDOW_UPDATEs while it owes a debt). Forwarded
bytes of one read are runs of that read, so a read that holds nothing comes
out as the very same bytes object.

The daemon's request headers name the streams to track: each becomes a
``_Transfer`` whose machine is the table below. Its deframer cuts the CLI's
DATA payloads into gRPC messages, and each message is one fsutil packet:
STATs give the Dockerfile its ID, DATA packets of that ID add to its text,
the empty one ends it and puts the frame on hold (a ``Hold`` for the
caller). A second deframer reads the daemon's packets: its REQs, and a FIN
that comes with the Dockerfile never asked for, which is then held with
the text remembered for it. Holding reorders only DATA frames of one stream behind the frames
of other streams, which HTTP/2 allows; a header block of that stream would
break the order the hpack tables depend on, so one makes the relay give up.

A replacement ERR packet is sent after the held frame's bytes that precede
the end packet (whole messages of the Dockerfile), in DATA frames of at most
16 KiB (``MAX_FRAME``, the most every peer takes; dockerd's takes no more).
Its text is the reason cut to ``ERR_TEXT`` (its head, what failed, and its
end, the last lines of output): a heal's reason carries up to 20 lines of a
recipe's output, and the ERR may be bytes the CLI never spent, which must
fit the daemon's window. The last frame is padded toward the size of what it
replaces where it can be (up to 255 bytes of padding), so the CLI's
flow-control window stays in step with the daemon's.
Where the two still differ, the connection's window is put right: bytes
the daemon got that the CLI never sent (a longer reason, or the whole ERR
when the hold was the daemon's FIN) are a debt taken out of the daemon's
next connection WINDOW_UPDATEs to the CLI (one that the debt covers whole
is dropped, as an increment of 0 is an error); bytes the CLI sent that the
daemon never got are given back to the CLI in a WINDOW_UPDATE of the
proxy's own. The stream's own window needs nothing: the refusal ends it.
Until the daemon's next update, the CLI may believe in up to that debt
more window than the daemon grants; it sends nothing meanwhile (the build
failed), and the connection's window is far larger.

A frame the relay writes of its own (released, refused, a WINDOW_UPDATE)
goes out at the side's next frame boundary: while a frame is being passed
on as its bytes come, it waits in ``queued`` for that frame's end.

Relay::

    RELAYING   give_up -> SPLICED
    SPLICED

Transfer (one Dockerfile stream)::

    COLLECTING  end -> HELD   absent -> DONE (no such file in the listing)
                cached -> HELD (the daemon's FIN, its Dockerfile unasked for)
                closed -> DONE (the stream ended or was reset)
    HELD        release -> DONE   refuse -> DONE
    DONE
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from hpack import Decoder, HeaderTuple, HPACKError
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from . import fsutil
from .grpcmessages import CARRIED, Deframer, MessageError, message
from .sessionmemory import DockerfileMemory

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DIFFCOPY = b"/moby.filesync.v1.FileSync/DiffCopy"
DOCKERFILE_DIR = b"dockerfile"
DEFAULT_NAME = b"Dockerfile"
MESSAGE_LIMIT = 4 << 20
"""gRPC's default largest message; fsutil sends files in far smaller packets."""
MAX_PADDING = 255
MAX_BLOCK = 64 << 10
"""The longest header block kept: hpack decodes no longer list; gRPC's are a few hundred bytes."""
MAX_HELD = MESSAGE_LIMIT
"""The most kept behind a held end: fsutil sends only the ignore file's rest and its FIN there."""
MAX_FRAME = 16384
"""The least SETTINGS_MAX_FRAME_SIZE: a DATA frame this long every peer takes."""
ERR_TEXT = 8 << 10
"""The most of a refusal's reason sent: well inside a grpc-go peer's first 64 KiB window."""
CUT = "\n[...]\n"

RELAYING = "RELAYING"
SPLICED = "SPLICED"
COLLECTING = "COLLECTING"
HELD = "HELD"
DONE = "DONE"

Table = dict[str, dict[str, str]]

RELAY: Table = {RELAYING: {"give_up": SPLICED}, SPLICED: {}}
TRANSFER: Table = {
    COLLECTING: {"end": HELD, "cached": HELD, "absent": DONE, "closed": DONE},
    HELD: {"release": DONE, "refuse": DONE},
    DONE: {},
}

_PASS = 0
_INSPECT = 1
_COLLECT = 2


class _Unexpected(Exception):
    """Something the relay does not read: give up and splice."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A Dockerfile whose end is held: heal what it needs, then ``release`` or ``refuse``."""

    stream: int
    name: str
    text: bytes


class _Outbox:
    """Bytes for one side, as runs of the read being relayed where possible."""

    __slots__ = ("end", "pieces", "start", "view")

    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.view = memoryview(b"")
        self.start = self.end = 0

    def begin(self, view: memoryview) -> None:
        self.view = view
        self.start = self.end = 0

    def span(self, a: int, b: int) -> None:
        if a != self.end:
            self.cut()
            self.start = a
        self.end = b

    def add(self, data: bytes) -> None:
        self.cut()
        if data:
            self.pieces.append(data)

    def cut(self) -> None:
        if self.end > self.start:
            self.pieces.append(self.view[self.start : self.end])
        self.start = self.end

    def finish(self) -> None:
        self.cut()
        self.view = memoryview(b"")
        self.start = self.end = 0

    def take(self) -> bytes:
        pieces, self.pieces = self.pieces, []
        if len(pieces) == 1:
            piece = pieces[0]
            if isinstance(piece, bytes):
                return piece
            whole = piece.obj
            if isinstance(whole, bytes) and len(whole) == len(piece):
                return whole
        return b"".join(pieces)


class _Side:
    """One direction's reading position in the HTTP/2 byte stream."""

    __slots__ = (
        "block", "body", "decoder", "frame", "head", "max_frame", "mode", "out", "pos", "preface",
        "queued", "remaining",
    )  # fmt: skip

    def __init__(self, preface: bytes) -> None:
        self.preface = preface
        self.head = bytearray()
        self.frame: Frame | None = None
        self.mode = _PASS
        self.remaining = 0
        self.body = bytearray()
        """An inspected frame's payload, or a collected frame's header and payload."""
        self.decoder = Decoder()
        self.max_frame = MAX_FRAME
        """The longest frame this side may send: the other side's SETTINGS_MAX_FRAME_SIZE."""
        self.block: tuple[int, bytearray, bool] | None = None
        """A header block still arriving: its stream, its fragments so far, END_STREAM."""
        self.out = _Outbox()
        """Bytes this side sent, for the other side."""
        self.pos = 0
        """How far the read being relayed is consumed (forwarded, kept or held)."""
        self.queued: list[bytes] = []
        """Frames of the relay's own for the other side, waiting for this frame's end."""

    @property
    def between_frames(self) -> bool:
        """Whether a whole frame can go out now: nothing of the current one has."""
        return self.frame is None or self.mode == _COLLECT

    def pending(self) -> bytes:
        """What this side sent that is neither forwarded nor held: a header or collected frame."""
        if self.mode == _COLLECT and self.body:
            return bytes(self.body)
        return bytes(self.head)


class _Transfer:
    """One Dockerfile stream: its file's ID and text, and what is held of it."""

    __slots__ = (
        "by_daemon", "deframer", "end_stream", "file", "flow", "held", "name", "prefix", "replies",
        "requested", "stat", "state", "text",
    )  # fmt: skip

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.state = COLLECTING
        self.deframer = Deframer(MESSAGE_LIMIT)
        self.replies = Deframer(MESSAGE_LIMIT)
        """The daemon's messages on the stream: its REQs and its FIN."""
        self.file: int | None = None
        self.stat = b""
        """The Dockerfile's Stat as listed."""
        self.requested = False
        """Whether the daemon asked for the Dockerfile (else it has it already)."""
        self.by_daemon = False
        """Whether the held frames are the daemon's (its FIN), not the CLI's (the end)."""
        self.text = bytearray()
        self.held: list[bytes] = []
        self.flow = 0
        """Flow-controlled bytes held: the held DATA frames' lengths."""
        self.prefix: bytes | None = None
        """The held frame's data before the end packet, or None if that packet began earlier."""
        self.end_stream = False


class SessionRelay:
    """Both directions of one ``/session`` connection after its 101."""

    __slots__ = (
        "_client", "_daemon", "_debt", "_holds", "_key", "_limit", "_memory", "_transfers",
        "reason", "state",
    )  # fmt: skip

    def __init__(
        self, limit: int, memory: DockerfileMemory | None = None, key: bytes = b""
    ) -> None:
        """``memory`` is shared by every session; ``key`` is this one's shared key."""
        self._limit = limit
        self._memory = memory if memory is not None else DockerfileMemory()
        self._key = key
        self._debt = 0
        """Connection window the daemon's updates owe back: bytes the CLI never sent."""
        self._client = _Side(b"")
        self._daemon = _Side(PREFACE)
        self._transfers: dict[int, _Transfer] = {}
        self._holds: deque[Hold] = deque()
        self.state = RELAYING
        self.reason = ""
        """Why the relay gave up, once it has."""

    # -- the caller's side ----------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self._feed(self._client, data)

    def from_daemon(self, data: bytes) -> None:
        self._feed(self._daemon, data)

    def data_for_daemon(self) -> bytes:
        return self._client.out.take()

    def data_for_client(self) -> bytes:
        return self._daemon.out.take()

    def next_hold(self) -> Hold | None:
        return self._holds.popleft() if self._holds else None

    @property
    def holding(self) -> bool:
        return any(t.state is HELD for t in self._transfers.values())

    def release(self, stream: int) -> None:
        """Let a held Dockerfile's end go on to the daemon, unchanged."""
        transfer = self._end_hold(stream, "release")
        if transfer is not None:
            self._emit(self._daemon if transfer.by_daemon else self._client, *transfer.held)

    def refuse(self, stream: int, reason: str) -> None:
        """Fail the Dockerfile's transfer with ``reason`` instead of its end."""
        transfer = self._end_hold(stream, "refuse")
        if transfer is None:
            return
        err = message(fsutil.err_packet(_shortened(reason)))
        if transfer.by_daemon:
            # The daemon waits for the CLI's FIN: the ERR comes first, and the
            # CLI's answer to the FIN that now goes on finds the stream failed.
            self._replace(stream, err, False, 0)
            self._emit(self._daemon, *transfer.held)
        elif transfer.prefix is None:
            self._emit(self._client, *transfer.held)
            self._replace(stream, err, transfer.end_stream, 0)
        else:
            self._replace(stream, transfer.prefix + err, transfer.end_stream, transfer.flow)

    def _replace(self, stream: int, data: bytes, end: bool, spent: int) -> None:
        """Send the daemon ``data`` in the CLI's name, for ``spent`` held bytes of window:
        in frames of at most ``MAX_FRAME``, the last one padded toward ``spent``."""
        cuts = range(0, len(data), MAX_FRAME)
        last = data[cuts[-1] :]
        padding = min(spent - len(data) - 1, MAX_PADDING, MAX_FRAME - len(last) - 1)
        frames = [_data_frame(stream, data[at : at + MAX_FRAME], 0, False) for at in cuts[:-1]]
        frames.append(_data_frame(stream, last, padding, end))
        self._emit(self._client, *frames)
        sent = sum(len(frame) - FRAME_HEADER for frame in frames)
        if sent > spent:
            self._debt += sent - spent
        elif spent > sent:
            self._emit(self._daemon, WindowUpdateFrame(0, spent - sent).serialize())

    def _emit(self, side: _Side, *frames: bytes) -> None:
        """Frames in ``side``'s name: out now, or at the end of the frame being passed on."""
        if side.between_frames and not side.queued:
            for frame in frames:
                side.out.add(frame)
        else:
            side.queued += frames

    def client_eof(self) -> None:
        self._eof(self._client)

    def daemon_eof(self) -> None:
        self._eof(self._daemon)

    def give_up(self, reason: str) -> None:
        """Flush everything held or waiting, in order, and splice from now on."""
        self.state = _fire(RELAY, self.state, "give_up")
        self.reason = reason
        for transfer in self._transfers.values():
            self._emit(self._daemon if transfer.by_daemon else self._client, *transfer.held)
        self._transfers.clear()
        self._holds.clear()
        for side in (self._client, self._daemon):
            side.out.add(side.pending())
            side.head.clear()
            side.body.clear()

    # -- reading --------------------------------------------------------------

    def _end_hold(self, stream: int, event: str) -> _Transfer | None:
        """The held transfer on ``stream``, now done; None once the relay has given up."""
        if self.state is SPLICED:
            return None
        transfer = self._transfers.pop(stream)
        transfer.state = _fire(TRANSFER, transfer.state, event)
        return transfer

    def _eof(self, side: _Side) -> None:
        if self.state is RELAYING and (side.pending() or self.holding):
            self.give_up("an end of file inside a frame, or during a hold")

    def _feed(self, side: _Side, data: bytes) -> None:
        out = side.out
        view = memoryview(data)
        out.begin(view)
        side.pos = 0
        try:
            while side.pos < len(view) and self.state is RELAYING:
                try:
                    self._step(side, view)
                except (_Unexpected, HyperframeError, HPACKError, MessageError) as exc:
                    self.give_up(str(exc) or type(exc).__name__)
                except fsutil.PacketError as exc:
                    self.give_up(f"an fsutil packet: {exc}")
            if side.pos < len(view) and side.queued:  # spliced while a frame was passing
                end = side.pos + min(side.remaining, len(view) - side.pos)
                out.span(side.pos, end)
                side.remaining -= end - side.pos
                side.pos = end
                if not side.remaining:
                    self._flush_queued(side)
            if side.pos < len(view):
                out.span(side.pos, len(view))
        finally:
            out.finish()

    def _step(self, side: _Side, view: memoryview) -> None:
        """Read what comes next on ``side``, consuming it (``side.pos``) before decoding it."""
        pos = side.pos
        if side.preface:
            take = min(len(side.preface), len(view) - pos)
            if view[pos : pos + take] != side.preface[:take]:
                raise _Unexpected("no HTTP/2 preface")
            side.preface = side.preface[take:]
            side.out.span(pos, pos + take)
            side.pos = pos + take
            return
        if side.frame is None:
            self._header(side, view)
            return
        end = pos + min(side.remaining, len(view) - pos)
        if side.mode == _COLLECT:
            side.body += view[pos:end]
        else:
            side.out.span(pos, end)
            if side.mode == _INSPECT:
                side.body += view[pos:end]
        side.remaining -= end - pos
        side.pos = end
        if not side.remaining:
            self._complete(side)

    def _header(self, side: _Side, view: memoryview) -> None:
        pos = side.pos
        start = -1 if side.head else pos
        take = min(FRAME_HEADER - len(side.head), len(view) - pos)
        side.head += view[pos : pos + take]
        pos = side.pos = pos + take
        if len(side.head) < FRAME_HEADER:
            return
        frame, length = Frame.parse_frame_header(memoryview(bytes(side.head)))
        if length > side.max_frame:
            raise _Unexpected(f"a frame of {length} bytes, over the receiver's {side.max_frame}")
        mode = self._mode(side, frame)
        if mode == _COLLECT:
            side.body[:] = side.head
        elif start >= 0:
            side.out.span(start, pos)
        else:
            side.out.add(bytes(side.head))
        side.head.clear()
        side.frame, side.mode, side.remaining = frame, mode, length
        if not length:
            self._complete(side)

    def _mode(self, side: _Side, frame: Frame) -> int:
        """How a frame is read, from its header alone."""
        if isinstance(frame, ExtensionFrame):
            raise _Unexpected(f"frame type {frame.type}")
        if side.block is not None and not isinstance(frame, ContinuationFrame):
            raise _Unexpected("a header block interrupted")
        transfer = self._transfers.get(frame.stream_id)
        if isinstance(frame, HeadersFrame | ContinuationFrame | RstStreamFrame):
            if transfer is not None and transfer.state is HELD:
                raise _Unexpected(f"{type(frame).__name__} on the held stream")
            if isinstance(frame, RstStreamFrame):
                self._close(frame.stream_id)
                return _PASS
            return _INSPECT
        if isinstance(frame, SettingsFrame):
            return _INSPECT
        if transfer is not None and isinstance(frame, DataFrame):
            return _COLLECT
        if self._debt and side is self._daemon and isinstance(frame, WindowUpdateFrame):
            return _COLLECT if frame.stream_id == 0 else _PASS
        return _PASS

    def _complete(self, side: _Side) -> None:
        """A frame is whole: decode it if it is read."""
        frame, mode = side.frame, side.mode
        side.frame = None
        assert frame is not None
        self._flush_queued(side)
        if mode == _PASS:
            return
        if mode == _INSPECT:
            frame.parse_body(memoryview(bytes(side.body)))
            side.body.clear()
            if isinstance(frame, SettingsFrame):
                self._settings(side, frame)
            else:
                self._fragment(side, frame)
            return
        raw = bytes(side.body)
        frame.parse_body(memoryview(raw)[FRAME_HEADER:])
        if isinstance(frame, WindowUpdateFrame):
            self._window(frame, raw)
        elif side is self._client:
            assert isinstance(frame, DataFrame)
            self._data(frame, raw)
        else:
            assert isinstance(frame, DataFrame)
            self._reply(frame, raw)
        side.body.clear()

    def _flush_queued(self, side: _Side) -> None:
        for frame in side.queued:
            side.out.add(frame)
        side.queued.clear()

    def _window(self, frame: WindowUpdateFrame, raw: bytes) -> None:
        """The daemon's connection WINDOW_UPDATE, less what it owes for bytes the CLI never sent."""
        paid = min(self._debt, frame.window_increment)
        self._debt -= paid
        if paid == 0:
            self._daemon.out.add(raw)
        elif frame.window_increment > paid:
            self._daemon.out.add(WindowUpdateFrame(0, frame.window_increment - paid).serialize())

    def _settings(self, side: _Side, frame: SettingsFrame) -> None:
        """What ``side`` takes bounds what the other side sends: its header table, its frames."""
        if "ACK" in frame.flags:
            return
        peer = self._daemon if side is self._client else self._client
        size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
        if size is not None:
            peer.decoder.max_allowed_table_size = size
        peer.max_frame = frame.settings.get(SettingsFrame.MAX_FRAME_SIZE, peer.max_frame)

    def _fragment(self, side: _Side, frame: Frame) -> None:
        assert isinstance(frame, HeadersFrame | ContinuationFrame)
        if isinstance(frame, HeadersFrame):
            side.block = (frame.stream_id, bytearray(), "END_STREAM" in frame.flags)
        elif side.block is None or side.block[0] != frame.stream_id:
            raise _Unexpected("a CONTINUATION outside its header block")
        assert side.block is not None
        side.block[1].extend(frame.data)
        if len(side.block[1]) > MAX_BLOCK:
            raise _Unexpected(f"a header block over {MAX_BLOCK} bytes")
        if "END_HEADERS" not in frame.flags:
            return
        stream, block, end_stream = side.block
        side.block = None
        fields = side.decoder.decode(bytes(block), raw=True)
        if side is self._daemon:
            self._request(stream, fields)
        elif end_stream:
            self._close(stream)

    def _request(self, stream: int, fields: Iterable[HeaderTuple]) -> None:
        """A call the daemon opens: track it if it is a Dockerfile's DiffCopy."""
        path = directory = name = None
        for key, value in fields:
            if key == b":path":
                path = value
            elif key == b"dir-name":
                directory = value
            elif key == b"followpaths" and name is None:
                name = value
        if path == DIFFCOPY and directory == DOCKERFILE_DIR:
            self._transfers[stream] = _Transfer(name or DEFAULT_NAME)

    def _close(self, stream: int) -> None:
        transfer = self._transfers.pop(stream, None)
        if transfer is not None:
            transfer.state = _fire(TRANSFER, transfer.state, "closed")

    def _data(self, frame: DataFrame, raw: bytes) -> None:
        """A whole DATA frame of a tracked stream from the CLI: forward, hold or read on."""
        transfer = self._transfers.get(frame.stream_id)
        if transfer is None:  # released or refused while this frame arrived
            self._client.out.add(raw)
            return
        if transfer.state is COLLECTING:
            for start, packet in transfer.deframer.feed(frame.data):
                self._packet(frame.stream_id, transfer, fsutil.read_packet(packet), start, frame)
                if transfer.state is not COLLECTING:
                    break
        if transfer.state is HELD and not transfer.by_daemon:
            if transfer.flow > MAX_HELD:  # kept so far: this frame goes on with them
                raise _Unexpected(f"over {MAX_HELD} bytes behind the Dockerfile's end")
            transfer.held.append(raw)
            transfer.flow += len(raw) - FRAME_HEADER
            transfer.end_stream = transfer.end_stream or "END_STREAM" in frame.flags
            return
        self._client.out.add(raw)
        if transfer.state is COLLECTING and "END_STREAM" in frame.flags:
            self._close(frame.stream_id)

    def _packet(
        self, stream: int, transfer: _Transfer, packet: fsutil.Packet, start: int, frame: DataFrame
    ) -> None:
        if packet.type == fsutil.STAT:
            if packet.path == transfer.name:
                transfer.file = packet.id
                transfer.stat = packet.stat
            elif packet.path is None and transfer.file is None:
                self._transfers.pop(stream)
                transfer.state = _fire(TRANSFER, transfer.state, "absent")
            return
        if packet.type != fsutil.DATA or packet.id != transfer.file:
            return
        if packet.data:
            transfer.text += packet.data
            if len(transfer.text) > self._limit:
                raise _Unexpected(f"a Dockerfile over {self._limit} bytes")
            return
        transfer.state = _fire(TRANSFER, transfer.state, "end")
        transfer.prefix = None if start == CARRIED else bytes(frame.data[:start])
        text = bytes(transfer.text)
        if transfer.requested:  # else the daemon refuses it and keeps what it had
            self._memory.remember(self._key, transfer.name, transfer.stat, text)
        self._holds.append(Hold(stream, transfer.name.decode(errors="replace"), text))

    def _reply(self, frame: DataFrame, raw: bytes) -> None:
        """A whole DATA frame of a tracked stream from the daemon: its REQs, then its FIN."""
        stream = frame.stream_id
        transfer = self._transfers.get(stream)
        if transfer is not None and transfer.state is COLLECTING:
            for _, packet in transfer.replies.feed(frame.data):
                self._asked(stream, transfer, fsutil.read_packet(packet))
                if transfer.state is not COLLECTING:
                    break
        if transfer is not None and transfer.state is HELD and transfer.by_daemon:
            transfer.held.append(raw)
            return
        self._daemon.out.add(raw)

    def _asked(self, stream: int, transfer: _Transfer, packet: fsutil.Packet) -> None:
        """A packet of the daemon's: a REQ of the Dockerfile, or a FIN that never asked for it."""
        if packet.type == fsutil.REQ and packet.id == transfer.file:
            transfer.requested = True
        if packet.type != fsutil.FIN:
            return
        if transfer.requested or transfer.file is None:
            raise _Unexpected("the daemon's FIN before the Dockerfile's end")
        text = self._memory.recall(self._key, transfer.name, transfer.stat)
        if text is None:
            raise _Unexpected("an unchanged Dockerfile the daemon kept and the proxy never saw")
        transfer.state = _fire(TRANSFER, transfer.state, "cached")
        transfer.by_daemon = True
        self._holds.append(Hold(stream, transfer.name.decode(errors="replace"), text))


def _fire(table: Table, state: str, event: str) -> str:
    """The state ``event`` leads to; a missing row is a bug in the relay (KeyError)."""
    return table[state][event]


def _shortened(reason: str) -> str:
    """``reason`` in at most ``ERR_TEXT`` bytes: its head and its end, the cut marked."""
    text = reason.encode()
    if len(text) <= ERR_TEXT:
        return reason
    head = ERR_TEXT // 4
    tail = ERR_TEXT - head - len(CUT)
    return text[:head].decode(errors="ignore") + CUT + text[-tail:].decode(errors="ignore")


def _data_frame(stream: int, data: bytes, padding: int, end_stream: bool) -> bytes:
    frame = DataFrame(stream, data)
    if padding > 0:
        frame.flags.add("PADDED")
        frame.pad_length = padding
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()
