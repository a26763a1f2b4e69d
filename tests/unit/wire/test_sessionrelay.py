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
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import fsutil, grpcmessages
from proxy.wire.sessionrelay import (
    HELD,
    RELAY,
    RELAYING,
    SPLICED,
    TRANSFER,
    Hold,
    SessionRelay,
)
from tests import h2session
from tests.h2session import CLIENT, DAEMON, DOCKERFILE_STREAM, Session
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
