"""sessionrelay: bytes pass unchanged, only the Dockerfile's end is held, and failure flushes.

The sessions are generated (``tests/h2session.py``) and recorded from a real
dockerd 26 with buildx 0.13 (``tests/unit/wire/sessions/``), and cut at
random points on both sides.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import fsutil, grpcmessages
from proxy.wire.sessionmemory import DockerfileMemory
from proxy.wire.sessionrelay import (
    HELD,
    MAX_PADDING,
    RELAY,
    RELAYING,
    SPLICED,
    TRANSFER,
    Hold,
    SessionRelay,
)
from tests import h2session
from tests.h2session import CLIENT, CONTEXT_STREAM, DAEMON, DOCKERFILE_STREAM, Session
from tests.unit.wire.test_states import diagram_of

LIMIT = 256 << 10
RECORDED = Path(__file__).parent / "sessions"


class Run:
    """A relay fed read by read, with everything it let through."""

    def __init__(self) -> None:
        self.relay = SessionRelay(LIMIT)
        self.fed = {CLIENT: bytearray(), DAEMON: bytearray()}
        self.out = {CLIENT: bytearray(), DAEMON: bytearray()}
        self.holds: list[Hold] = []

    def feed(self, side: str, chunk: bytes) -> None:
        self.fed[side] += chunk
        if side == CLIENT:
            self.relay.from_client(chunk)
        else:
            self.relay.from_daemon(chunk)
        self.drain()

    def drain(self) -> None:
        self.out[CLIENT] += self.relay.data_for_daemon()
        self.out[DAEMON] += self.relay.data_for_client()


def frames(raw: bytes, preface: bool) -> list[bytes]:
    """``raw`` cut into whole frames (header and payload), after the preface."""
    pos = len(h2session.PREFACE) if preface else 0
    out = []
    while pos < len(raw):
        length = int.from_bytes(raw[pos : pos + 3], "big")
        out.append(raw[pos : pos + 9 + length])
        pos += 9 + length
    return out


def by_stream(raw: bytes, preface: bool) -> dict[int, list[bytes]]:
    """Frames per stream, in order; header blocks, whose order hpack needs, under -1 too."""
    out: dict[int, list[bytes]] = defaultdict(list)
    for f in frames(raw, preface):
        frame, _ = Frame.parse_frame_header(memoryview(f[:9]))
        out[frame.stream_id].append(f)
        if f[3] in (1, 9):
            out[-1].append(f)
    return out


def relay_session(s: Session, cuts: list[tuple[str, bytes]], release_at: int | None) -> Run:
    """Feed ``cuts``; release each hold after ``release_at`` more reads (None: at once)."""
    run = Run()
    waiting: list[tuple[int, int]] = []
    for side, chunk in cuts:
        run.feed(side, chunk)
        while (hold := run.relay.next_hold()) is not None:
            run.holds.append(hold)
            waiting.append((hold.stream, 0 if release_at is None else release_at))
        for i, (stream, left) in enumerate(waiting):
            if left == 0:
                run.relay.release(stream)
                run.drain()
            waiting[i] = (stream, left - 1)
        waiting = [(st_, left) for st_, left in waiting if left >= 0]
    for stream, _ in waiting:
        run.relay.release(stream)
        run.drain()
    return run


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_released_at_once_the_bytes_out_are_the_bytes_in(data: st.DataObject) -> None:
    s = data.draw(h2session.session())
    cuts = data.draw(h2session.deliveries(s))
    run = relay_session(s, cuts, release_at=None)
    assert run.relay.state is RELAYING, run.relay.reason
    assert len(run.holds) == 1
    hold = run.holds[0]
    assert hold.stream == DOCKERFILE_STREAM
    assert hold.name == s.name
    assert hold.text == s.dockerfile
    # Per stream, in order, and every header block in order: nothing lost, added or moved
    # where HTTP/2 would notice; and byte for byte when nothing came after the end's read.
    assert run.out[DAEMON] == run.fed[DAEMON] == s.stream(DAEMON)
    assert by_stream(bytes(run.out[CLIENT]), False) == by_stream(s.stream(CLIENT), False)
    if _nothing_passed_the_end(s, cuts):
        assert run.out[CLIENT] == s.stream(CLIENT)


def _nothing_passed_the_end(s: Session, cuts: list[tuple[str, bytes]]) -> bool:
    """Whether the read that completed the end frame brought nothing after it but its stream's."""
    stream = s.stream(CLIENT)
    end_at = stream.index(s.tagged("end")) + len(s.tagged("end"))
    pos = 0
    for side, chunk in cuts:
        pos += len(chunk) if side == CLIENT else 0
        if pos >= end_at:
            rest = stream[end_at:pos]
            whole = frames(rest[: _whole_prefix(rest)], False)
            return _whole_prefix(rest) == len(rest) and all(_on_held(f) for f in whole)
    return False


def _on_held(frame: bytes) -> bool:
    return frame[5:9] == DOCKERFILE_STREAM.to_bytes(4, "big")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), wait=st.integers(0, 30))
def test_only_the_dockerfile_end_frame_is_ever_held(data: st.DataObject, wait: int) -> None:
    s = data.draw(h2session.session())
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    stream = s.stream(CLIENT)
    end_at = stream.index(s.tagged("end"))
    hold = None
    released = False
    for side, chunk in cuts:
        run.feed(side, chunk)
        hold = hold or run.relay.next_hold()
        if hold is not None and not released:
            if wait == 0:
                run.relay.release(hold.stream)
                run.drain()
                released = True
            wait -= 1
        # What the daemon has not seen yet: a frame still arriving (its header, or a
        # DATA frame of the Dockerfile's stream), or the held end and what followed it
        # on that stream.
        missing = _missing(bytes(run.fed[CLIENT]), bytes(run.out[CLIENT]))
        for at, f in missing:
            if at < 0:
                continue  # a frame still arriving
            assert _on_held(f) and f[3] == 0, "a frame other than the Dockerfile's held"
            assert not released, "held after the release"
            assert hold is not None, "held before the end arrived"
            assert at >= end_at, "a frame before the end held"
    assert hold is not None
    if not released:
        run.relay.release(hold.stream)
        run.drain()
    assert by_stream(bytes(run.out[CLIENT]), False) == by_stream(stream, False)


def _missing(fed: bytes, out: bytes) -> list[tuple[int, bytes]]:
    """The frames of ``fed`` (with their offsets) that ``out`` lacks; -1 for one still arriving.

    Per stream, what went out must be what came in, in order, so what is missing is
    the tail of each stream's frames.
    """
    came: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    pos = 0
    for f in frames(fed[: _whole_prefix(fed)], False):
        came[int.from_bytes(f[5:9], "big")].append((pos, f))
        pos += len(f)
    went = by_stream(out[: _whole_prefix(out)], False)
    missing = []
    for stream, arrived in came.items():
        sent = went.get(stream, [])
        assert sent == [f for _, f in arrived[: len(sent)]], "a stream out of order"
        missing += arrived[len(sent) :]
    if pos < len(fed):
        missing.append((-1, fed[pos:]))
    return missing


def _whole_prefix(raw: bytes) -> int:
    pos = 0
    while pos + 9 <= len(raw):
        length = int.from_bytes(raw[pos : pos + 3], "big")
        if pos + 9 + length > len(raw):
            break
        pos += 9 + length
    return pos


@settings(max_examples=60, deadline=None)
@given(s=h2session.session(ignore=True), data=st.data())
def test_the_ignore_file_end_passes(s: Session, data: st.DataObject) -> None:
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    ignore_end = s.tagged("ignore_end")
    for side, chunk in cuts:
        run.feed(side, chunk)
        if run.relay.next_hold() is not None:
            if s.stream(CLIENT).index(ignore_end) < s.stream(CLIENT).index(s.tagged("end")):
                assert ignore_end in run.out[CLIENT]
            return
    raise AssertionError("no hold")


@settings(max_examples=40, deadline=None)
@given(s=h2session.session(), data=st.data())
def test_a_refused_hold_ends_in_one_err_packet(s: Session, data: st.DataObject) -> None:
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    reason = "the base image accmod:latest could not be rebuilt: recipe failed"
    held = None
    for side, chunk in cuts:
        run.feed(side, chunk)
        if (hold := run.relay.next_hold()) is not None:
            held = len(run.out[CLIENT])
            run.relay.refuse(hold.stream, reason)
            run.drain()
            break
    assert held is not None
    replaced = bytes(run.out[CLIENT][held:])
    (frame_raw,) = frames(replaced, False)
    frame, _ = Frame.parse_frame_header(memoryview(frame_raw[:9]))
    frame.parse_body(memoryview(frame_raw[9:]))
    assert isinstance(frame, DataFrame) and frame.stream_id == DOCKERFILE_STREAM
    (_, packet), *_ = grpcmessages.Deframer(1 << 20).feed(frame.data)
    err = fsutil.read_packet(packet)
    assert (err.type, err.data) == (fsutil.ERR, reason.encode())
    # Nothing else of the stream is held afterwards; the rest passes.
    assert not run.relay.holding


def _session_until_hold(s: Session, cuts: list[tuple[str, bytes]]) -> tuple[Run, int]:
    run = Run()
    for i, (side, chunk) in enumerate(cuts):
        run.feed(side, chunk)
        if run.relay.next_hold() is not None:
            return run, i + 1
    raise AssertionError("no hold")


def _gives_up_and_flushes(
    run: Run, rest: list[tuple[str, bytes]], cause: tuple[str, bytes]
) -> None:
    side, raw = cause
    run.feed(side, raw)
    assert run.relay.state is SPLICED
    assert run.relay.reason
    for side_, chunk in rest:
        run.feed(side_, chunk)
    run.drain()
    assert run.out[CLIENT] == run.fed[CLIENT] or by_stream(
        bytes(run.out[CLIENT]), False
    ) == by_stream(bytes(run.fed[CLIENT]), False)
    assert run.out[DAEMON] == run.fed[DAEMON]
    assert len(run.out[CLIENT]) == len(run.fed[CLIENT])


FAULTS = {
    "headers on the held stream": (CLIENT, "headers"),
    "rst_stream on the held stream": (DAEMON, RstStreamFrame(DOCKERFILE_STREAM, 8).serialize()),
    "a header block hpack cannot decode": (
        DAEMON,
        HeadersFrame(11, b"\xff\xff\xff\x7f", flags=["END_HEADERS"]).serialize(),
    ),
    "an unknown frame type": (DAEMON, b"\x00\x00\x01\xee\x00\x00\x00\x00\x00\x00"),
    "a frame header that breaks a rule": (DAEMON, b"\x00\x00\x00\x04\x00\x00\x00\x00\x03"),
}


@pytest.mark.parametrize("fault", FAULTS.keys())
@settings(max_examples=15, deadline=None)
@given(s=h2session.session(), data=st.data())
def test_every_fail_open_path_flushes(fault: str, s: Session, data: st.DataObject) -> None:
    """Whole segments up to the hold, so the fault starts a frame; then random cuts."""
    run, n = _session_until_hold(s, [(seg.side, seg.raw) for seg in s.segments])
    rest = Session(s.segments[n:])
    side, raw = FAULTS[fault]
    if raw == "headers":
        raw = HeadersFrame(DOCKERFILE_STREAM, b"\x88", flags=["END_HEADERS"]).serialize()
    assert run.relay.holding
    _gives_up_and_flushes(run, data.draw(h2session.deliveries(rest)), (side, raw))


@settings(max_examples=30, deadline=None)
@given(
    s=h2session.session(), data=st.data(), kind=st.sampled_from(["packet", "compressed", "timeout"])
)
def test_a_fault_while_collecting_flushes_the_frame_in_progress(
    s: Session, data: st.DataObject, kind: str
) -> None:
    """The Dockerfile's stream fails before its end: what was waiting goes on, then everything."""
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    bad = {
        "packet": DataFrame(DOCKERFILE_STREAM, grpcmessages.message(b"\x08\x09")).serialize(),
        "compressed": DataFrame(DOCKERFILE_STREAM, b"\x01\x00\x00\x00\x00").serialize(),
    }
    stream = s.stream(CLIENT)
    listing_end = stream.index(s.tagged("end"))
    fed = 0
    for side, chunk in cuts:
        if side == CLIENT and fed < listing_end <= fed + len(chunk):
            cut = listing_end - fed
            run.feed(CLIENT, chunk[:cut])
            if kind == "timeout":
                run.relay.give_up("parse timeout")
                run.drain()
            else:
                run.feed(CLIENT, bad[kind])
            assert run.relay.state is SPLICED
            run.feed(CLIENT, chunk[cut:])
            fed += len(chunk)
            continue
        if side == CLIENT:
            fed += len(chunk)
        run.feed(side, chunk)
    assert run.relay.next_hold() is None
    assert run.out[CLIENT] == run.fed[CLIENT]
    assert run.out[DAEMON] == run.fed[DAEMON]


@settings(max_examples=10, deadline=None)
@given(s=h2session.session())
def test_an_end_of_file_during_a_hold_flushes(s: Session) -> None:
    run, _ = _session_until_hold(s, [(seg.side, seg.raw) for seg in s.segments])
    assert run.relay.holding
    run.relay.client_eof()
    run.drain()
    assert run.relay.state is SPLICED
    assert run.out[CLIENT] == run.fed[CLIENT]


def test_a_read_that_holds_nothing_comes_out_as_the_same_object() -> None:
    relay = SessionRelay(LIMIT)
    relay.from_daemon(h2session.PREFACE)
    assert relay.data_for_client() is not None
    chunk = DataFrame(1, b"x" * 1000).serialize() * 4
    relay.from_daemon(chunk)
    assert relay.data_for_client() is chunk


@settings(max_examples=10, deadline=None)
@given(s=h2session.session())
def test_a_dockerfile_over_the_limit_fails_open(s: Session) -> None:
    run = Run()
    run.relay = SessionRelay(limit=len(s.dockerfile) - 1)
    for seg in s.segments:
        run.feed(seg.side, seg.raw)
    assert run.relay.state is SPLICED
    assert "over" in run.relay.reason
    assert run.out[CLIENT] == run.fed[CLIENT]


@settings(max_examples=10, deadline=None)
@given(s=h2session.session(listed=False))
def test_no_such_file_in_the_listing_stops_reading_the_stream(s: Session) -> None:
    run = Run()
    for seg in s.segments:
        run.feed(seg.side, seg.raw)
    assert run.relay.next_hold() is None
    assert run.relay.state is RELAYING
    assert run.out[CLIENT] == run.fed[CLIENT]


@pytest.mark.parametrize("path", sorted(RECORDED.glob("*.json")), ids=lambda p: p.stem)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_recorded_sessions(path: Path, data: st.DataObject) -> None:
    """Sessions recorded from dockerd 26.1.5 and buildx 0.13.1: reads as they came, then re-cut."""
    record = json.loads(path.read_text())
    reads = [(r["side"], bytes.fromhex(r["hex"])) for r in record["reads"]]
    s = Session()
    for side, raw in reads:
        s.add(side, raw)
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    holds = []
    for side, chunk in cuts:
        run.feed(side, chunk)
        while (hold := run.relay.next_hold()) is not None:
            holds.append(hold)
            run.relay.release(hold.stream)
            run.drain()
    assert run.relay.state is RELAYING, run.relay.reason
    assert [h.text.decode() for h in holds] == record["dockerfiles"]
    assert run.out[DAEMON] == run.fed[DAEMON]
    assert by_stream(bytes(run.out[CLIENT]), False) == by_stream(bytes(run.fed[CLIENT]), False)


@pytest.mark.parametrize(
    ("title", "table"),
    [("Relay", RELAY), ("Transfer (one Dockerfile stream)", TRANSFER)],
)
def test_each_diagram_is_its_table(title: str, table: dict[str, dict[str, str]]) -> None:
    from proxy.wire import sessionrelay

    drawn = diagram_of(sessionrelay.__doc__ or "", title)
    rows = [(state, event, target) for state, row in table.items() for event, target in row.items()]
    assert sorted(drawn) == sorted(rows)
    assert HELD in table or RELAYING in table


KEY = b"ctx:65e6234cef8e64dd"


def listed_stat(s: Session) -> bytes:
    """The Stat the generated sessions list the Dockerfile with (the ID is not part of it)."""
    return fsutil.read_packet(h2session.stat(s.name, 0, 10)).stat


def remembering(s: Session, text: bytes, stat: bytes | None = None) -> DockerfileMemory:
    memory = DockerfileMemory()
    memory.remember(KEY, s.name.encode(), listed_stat(s) if stat is None else stat, text)
    return memory


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=h2session.session(cached=True), data=st.data())
def test_an_unasked_dockerfile_holds_the_daemons_fin(s: Session, data: st.DataObject) -> None:
    """dockerd 20.10's repeated build: the text is the one remembered, the FIN waits for it."""
    cuts = data.draw(h2session.deliveries(s))
    run = Run()
    run.relay = SessionRelay(LIMIT, remembering(s, b"FROM kept\n"), KEY)
    hold = None
    for side, chunk in cuts:
        run.feed(side, chunk)
        if (new := run.relay.next_hold()) is not None:
            hold = new
            assert s.tagged("fin") not in run.out[DAEMON]
            skip = len(h2session.PREFACE)
            missing = _missing(bytes(run.fed[DAEMON][skip:]), bytes(run.out[DAEMON][skip:]))
            assert [f for at, f in missing if at >= 0] == [s.tagged("fin")]
            run.relay.release(hold.stream)
            run.drain()
    assert run.relay.state is RELAYING, run.relay.reason
    assert hold == Hold(DOCKERFILE_STREAM, s.name, b"FROM kept\n")
    assert by_stream(bytes(run.out[DAEMON]), False) == by_stream(bytes(run.fed[DAEMON]), False)
    assert run.out[CLIENT] == run.fed[CLIENT]


@pytest.mark.parametrize("memory", ["empty", "another stat", "another key"])
@settings(max_examples=15, deadline=None)
@given(s=h2session.session(cached=True), data=st.data())
def test_an_unasked_dockerfile_never_seen_fails_open(
    memory: str, s: Session, data: st.DataObject
) -> None:
    run = Run()
    kept = {
        "empty": DockerfileMemory(),
        "another stat": remembering(s, b"FROM old\n", listed_stat(s) + b"\x18\x01"),
        "another key": remembering(s, b"FROM other\n"),
    }[memory]
    run.relay = SessionRelay(LIMIT, kept, b"ctx:another" if memory == "another key" else KEY)
    for side, chunk in data.draw(h2session.deliveries(s)):
        run.feed(side, chunk)
    assert run.relay.next_hold() is None
    assert run.relay.state is SPLICED
    assert "never saw" in run.relay.reason
    assert run.out[CLIENT] == run.fed[CLIENT]
    assert run.out[DAEMON] == run.fed[DAEMON]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=h2session.session(), data=st.data())
def test_a_dockerfile_seen_whole_serves_the_next_build_of_its_folder(
    first: Session, data: st.DataObject
) -> None:
    memory = DockerfileMemory()
    run = Run()
    run.relay = SessionRelay(LIMIT, memory, KEY)
    for side, chunk in data.draw(h2session.deliveries(first)):
        run.feed(side, chunk)
        while (hold := run.relay.next_hold()) is not None:
            run.relay.release(hold.stream)
    again = Run()
    again.relay = SessionRelay(LIMIT, memory, KEY)
    holds = []
    for seg in data.draw(h2session.session(cached=True, name=first.name)).segments:
        again.feed(seg.side, seg.raw)
        while (hold := again.relay.next_hold()) is not None:
            holds.append(hold.text)
            again.relay.release(hold.stream)
    assert holds == [first.dockerfile], again.relay.reason


def _window_increments(raw: bytes, preface: bool) -> int:
    total = 0
    for f in frames(raw, preface):
        if f[3] == 8 and f[5:9] == b"\x00\x00\x00\x00":
            total += int.from_bytes(f[9:13], "big") & 0x7FFFFFFF
    return total


def _data_payloads(raw: bytes) -> int:
    return sum(len(f) - 9 for f in frames(raw, False) if f[3] == 0)


@pytest.mark.parametrize("cached", [False, True])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), reason=st.sampled_from(["", "x", "broke " * 5, "a long reason " * 80]))
def test_a_refusal_keeps_the_connection_window_in_step(
    cached: bool, data: st.DataObject, reason: str
) -> None:
    """However long the ERR frame is against what it replaces, once the daemon has given back
    every byte it received, the CLI has been given back every byte it sent: no more (it would
    overflow the daemon's window), no less (it would shrink for good)."""
    s = data.draw(h2session.session(cached=cached))
    run = Run()
    run.relay = SessionRelay(LIMIT, remembering(s, b"FROM kept\n"), KEY)
    for side, chunk in data.draw(h2session.deliveries(s)):
        run.feed(side, chunk)
        if (hold := run.relay.next_hold()) is not None:
            run.relay.refuse(hold.stream, reason)
            run.drain()
    assert run.relay.state is RELAYING, run.relay.reason
    received = _data_payloads(bytes(run.out[CLIENT]))
    sent = _data_payloads(bytes(run.fed[CLIENT]))
    _gives_back(run, received, sent, data.draw(st.lists(st.integers(1, 40), max_size=5)))


def _gives_back(run: Run, received: int, sent: int, pieces: list[int]) -> None:
    """The daemon gives back ``received`` in updates of ``pieces`` and the rest: the CLI
    must get ``sent`` back in all."""
    given = _window_increments(bytes(run.fed[DAEMON]), True)  # the daemon's own, before
    for size in pieces:
        if received > size:
            run.feed(DAEMON, WindowUpdateFrame(0, size).serialize())
            received -= size
    run.feed(DAEMON, WindowUpdateFrame(0, received).serialize())
    assert _window_increments(bytes(run.out[DAEMON]), True) - given == sent


def _held_with_more(after: int) -> tuple[Run, Hold]:
    """A Dockerfile's end held, and ``after`` bytes of another file's data held behind it."""
    s = Session()
    w = h2session.Writer(s, None)
    w.call(DOCKERFILE_STREAM, h2session.DIFFCOPY, [("dir-name", "dockerfile")])
    listing = [h2session.stat("Dockerfile", 0, 10), h2session.stat("big", 1, after)]
    w.messages(CLIENT, DOCKERFILE_STREAM, [*listing, h2session.stat(None, 0)], 0)
    ask = grpcmessages.message(h2session.req(0)) + grpcmessages.message(h2session.req(1))
    s.add(DAEMON, DataFrame(DOCKERFILE_STREAM, ask).serialize())
    file = [h2session.data(0, b"FROM base\n"), h2session.data(0, b"")]
    w.messages(CLIENT, DOCKERFILE_STREAM, file, 0)
    w.messages(CLIENT, DOCKERFILE_STREAM, [h2session.data(1, b"x" * after)], 0)
    run = Run()
    for seg in s.segments:
        run.feed(seg.side, seg.raw)
    hold = run.relay.next_hold()
    assert hold is not None and run.relay.holding
    return run, hold


@pytest.mark.parametrize("end", ["release", "refuse", "give_up"])
def test_what_the_relay_writes_waits_for_the_frame_passing_through(end: str) -> None:
    """A frame of another stream half passed on when the hold ends: the held frames (or the
    ERR) go out after it, not inside it."""
    run, hold = _held_with_more(10)
    other = DataFrame(CONTEXT_STREAM, b"y" * 300).serialize()
    run.feed(CLIENT, other[:100])
    {
        "release": lambda: run.relay.release(hold.stream),
        "refuse": lambda: run.relay.refuse(hold.stream, "no"),
        "give_up": lambda: run.relay.give_up("parse timeout"),
    }[end]()
    run.drain()
    run.feed(CLIENT, other[100:])
    out = bytes(run.out[CLIENT])
    assert _whole_prefix(out) == len(out)
    assert frames(out, False)[-1] != other
    assert out.index(other) < len(out) - len(other)  # it went out whole, before what waited


def test_a_refusal_gives_back_the_window_of_held_bytes_the_daemon_never_gets() -> None:
    """More held after the end than padding can stand for: the CLI gets it back from the proxy."""
    run, hold = _held_with_more(600)
    assert hold is not None and run.relay.holding
    run.relay.refuse(hold.stream, "no")
    run.drain()
    received = _data_payloads(bytes(run.out[CLIENT]))
    sent = _data_payloads(bytes(run.fed[CLIENT]))
    assert sent - received > MAX_PADDING
    _gives_back(run, received, sent, [])


def _refused(run: Run, at: int) -> list[bytes]:
    """The Dockerfile stream's DATA frames the daemon got from offset ``at`` on, whole."""
    return [
        raw for raw in frames(bytes(run.out[CLIENT][at:]), False) if raw[3] == 0 and _on_held(raw)
    ]


@pytest.mark.parametrize("cached", [False, True])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), line=st.sampled_from([100, 900, 1 << 20]))
def test_a_long_reason_goes_out_in_frames_and_a_window_the_daemon_takes(
    cached: bool, data: st.DataObject, line: int
) -> None:
    """A failed recipe's reason carries its last 20 output lines, each up to 1 MiB. No frame
    may pass 16 KiB (the largest every peer takes; dockerd's grpc takes no more) and the
    text must stay within what the daemon's stream window can take: its head and its end
    (the last lines, where the error is) are kept."""
    s = data.draw(h2session.session(cached=cached))
    reason = "docker-heal-proxy: cannot heal base: exit 1\n" + "\n".join(
        f"  {i:02} " + "x" * line for i in range(20)
    )
    run = Run()
    run.relay = SessionRelay(LIMIT, remembering(s, b"FROM kept\n"), KEY)
    at = None
    for side, chunk in data.draw(h2session.deliveries(s)):
        run.feed(side, chunk)
        if (hold := run.relay.next_hold()) is not None:
            at = len(run.out[CLIENT])
            run.relay.refuse(hold.stream, reason)
            run.drain()
    assert at is not None and run.relay.state is RELAYING, run.relay.reason
    refused = _refused(run, at)
    assert refused and all(len(raw) - 9 <= 16384 for raw in refused)
    payloads = []
    for raw in refused:
        frame = DataFrame(DOCKERFILE_STREAM)
        frame.parse_flags(raw[4])
        frame.parse_body(memoryview(raw[9:]))
        payloads.append(frame.data)
    # The ERR's message starts a frame of its own (the held end packet had one); frames of
    # the stream after it may carry the rest of a message begun before the hold.
    first = next(i for i, data in enumerate(payloads) if data[5:7] == b"\x08\x04")
    deframer = grpcmessages.Deframer(1 << 30)
    (_, message), *_ = next(m for data in payloads[first:] if (m := deframer.feed(data)))
    err = fsutil.read_packet(message)
    assert err.type == fsutil.ERR
    assert len(err.data) <= 8 << 10  # well inside a grpc-go peer's first 64 KiB window
    assert err.data.startswith(reason[:40].encode())
    assert err.data.endswith(reason[-200:].encode())
    received = _data_payloads(bytes(run.out[CLIENT]))
    sent = _data_payloads(bytes(run.fed[CLIENT]))
    _gives_back(run, received, sent, [])


def _one_file(text: bytes, asked: bool, cut: int) -> Session:
    """A Dockerfile transfer up to the file's end: listed, asked for (or not), sent in frames
    of ``cut`` bytes (0: a frame per packet)."""
    s = Session()
    w = h2session.Writer(s, None)
    w.call(DOCKERFILE_STREAM, h2session.DIFFCOPY, [("dir-name", "dockerfile")])
    listing = [h2session.stat("Dockerfile", 0, 10), h2session.stat(None, 0)]
    w.messages(CLIENT, DOCKERFILE_STREAM, listing, 0)
    if asked:
        ask = grpcmessages.message(h2session.req(0))
        s.add(DAEMON, DataFrame(DOCKERFILE_STREAM, ask).serialize())
    w.messages(CLIENT, DOCKERFILE_STREAM, [h2session.data(0, text), h2session.data(0, b"")], cut)
    return s


@pytest.mark.parametrize("asked", [True, False])
def test_only_a_dockerfile_the_daemon_asked_for_is_remembered(asked: bool) -> None:
    """The memory must mirror what the daemon keeps. A text the CLI sends unasked the daemon
    refuses ("invalid file request") and never keeps; remembered under the folder's key and
    the listed Stat, it would be served to the next unchanged build of that folder in place
    of the Dockerfile the daemon really has (any caller can name any shared key)."""
    memory = DockerfileMemory()
    run = Run()
    run.relay = SessionRelay(LIMIT, memory, KEY)
    for seg in _one_file(b"FROM planted\n", asked, 0).segments:
        run.feed(seg.side, seg.raw)
    stat = fsutil.read_packet(h2session.stat("Dockerfile", 0, 10)).stat
    assert memory.recall(KEY, b"Dockerfile", stat) == (b"FROM planted\n" if asked else None)


@pytest.mark.parametrize("side", [CLIENT, DAEMON])
def test_a_header_block_that_never_ends_gives_up_before_it_grows_without_bound(
    side: str,
) -> None:
    """CONTINUATION frames without END_HEADERS, a megabyte of them: the relay must not keep
    the block for ever (a caller speaking h2c itself can send them as long as it likes)."""
    run = Run()
    s = Session()
    h2session.Writer(s, None)  # the preface and both SETTINGS
    for seg in s.segments:
        run.feed(seg.side, seg.raw)
    run.feed(side, HeadersFrame(11, b"\x82").serialize())
    for _ in range(64):
        run.feed(side, ContinuationFrame(11, b"\x00" * 16384).serialize())
    assert run.relay.state is SPLICED
    assert run.out[side] == run.fed[side]


def test_frames_held_behind_the_end_are_bounded() -> None:
    """A CLI that ignores flow control and keeps sending on the held stream: past a bound the
    relay flushes and splices (the daemon then sees what it would without the proxy)."""
    run, _ = _held_with_more(10)
    chunk = DataFrame(DOCKERFILE_STREAM, b"z" * 16384).serialize()
    for _ in range(320):  # 5 MiB
        run.feed(CLIENT, chunk)
    assert run.relay.state is SPLICED
    assert run.out[CLIENT] == run.fed[CLIENT]


def test_a_refused_end_that_began_in_an_earlier_frame_goes_on_and_then_the_err() -> None:
    """The end packet's message cut across frames: the frame that completes it cannot be
    replaced without the start the daemon has, so it goes on, and the ERR follows at once,
    before the FIN the transfer waits for."""
    run = Run()
    for seg in _one_file(b"FROM base\n", True, 3).segments:
        run.feed(seg.side, seg.raw)
    hold = run.relay.next_hold()
    assert hold is not None and hold.text == b"FROM base\n"
    run.relay.refuse(hold.stream, "no")
    run.drain()
    payloads = []
    for raw in frames(bytes(run.out[CLIENT]), False):
        if raw[3] == 0 and _on_held(raw):
            payloads.append(raw[9:])
    messages = grpcmessages.Deframer(1 << 20).feed(b"".join(payloads))
    packets = [fsutil.read_packet(m) for _, m in messages]
    assert [(p.type, p.data) for p in packets[-2:]] == [(fsutil.DATA, b""), (fsutil.ERR, b"no")]
    received = _data_payloads(bytes(run.out[CLIENT]))
    sent = _data_payloads(bytes(run.fed[CLIENT]))
    _gives_back(run, received, sent, [])


def _listing_then(frame_data: bytes, max_frame: int | None) -> Run:
    """The Dockerfile's stream opened and listed in part, then one DATA frame of ``frame_data``."""
    s = Session()
    w = h2session.Writer(s, None)
    if max_frame is not None:
        settings_ = SettingsFrame(0)
        settings_.settings[SettingsFrame.MAX_FRAME_SIZE] = max_frame
        s.add(DAEMON, settings_.serialize())
    w.call(DOCKERFILE_STREAM, h2session.DIFFCOPY, [("dir-name", "dockerfile")])
    s.add(CLIENT, DataFrame(DOCKERFILE_STREAM, frame_data).serialize())
    run = Run()
    for seg in s.segments:
        run.feed(seg.side, seg.raw)
    return run


@pytest.mark.parametrize("announced", [None, 1 << 20])
def test_a_frame_longer_than_the_receiver_takes_is_not_read(announced: int | None) -> None:
    """A frame over the receiver's SETTINGS_MAX_FRAME_SIZE (16 KiB unless it says more) is
    the receiver's protocol error, and must not be read: 16 MiB of 9-byte packets on the
    Dockerfile's stream cost a list of two million and seconds of the event loop."""
    other = grpcmessages.message(h2session.stat("other", 1))
    run = _listing_then(other * (16384 // len(other) + 1), announced)
    assert run.relay.state is (SPLICED if announced is None else RELAYING), run.relay.reason
    assert run.out[CLIENT] == run.fed[CLIENT]
