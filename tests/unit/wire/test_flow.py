"""flow: a side's pause reasons, and held bytes' high and low water marks, without a loop."""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.wire.flow import Flow, Held


class Reading:
    """A transport that records how its reading is switched."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def attached() -> tuple[Flow, Reading]:
    flow, transport = Flow(), Reading()
    flow.attach(cast(asyncio.Transport, transport))
    return flow, transport


def test_a_side_is_paused_while_any_reason_remains() -> None:
    flow, transport = attached()
    flow.pause("hold")
    flow.pause("daemon-full")
    flow.resume("hold")
    assert transport.calls == ["pause"]
    flow.resume("stream")  # not a reason it had
    flow.resume("daemon-full")
    assert transport.calls == ["pause", "resume"]


def test_a_new_transport_starts_paused_when_reasons_remain() -> None:
    flow = Flow()
    flow.pause("client-full")
    transport = Reading()
    flow.attach(cast(asyncio.Transport, transport))
    assert transport.calls == ["pause"]


def test_held_bytes_pause_above_high_and_resume_only_below_low() -> None:
    flow, transport = attached()
    held = Held(flow, "hold", high=100, low=50)
    for size, calls in [
        (100, []),  # at the mark: still read
        (101, ["pause"]),
        (200, ["pause"]),
        (60, ["pause"]),  # between the marks: no flapping
        (100, ["pause"]),
        (49, ["pause", "resume"]),
        (0, ["pause", "resume"]),
    ]:
        held.update(size)
        assert transport.calls == calls, size
    assert flow.reasons == set()


def test_holds_pause_for_their_own_reasons() -> None:
    flow, transport = attached()
    hold = Held(flow, "hold", high=10, low=5)
    stream = Held(flow, "stream", high=10, low=5)
    hold.update(11)
    stream.update(11)
    hold.update(0)
    assert flow.reasons == {"stream"}
    assert transport.calls == ["pause"]
    stream.update(0)
    assert transport.calls == ["pause", "resume"]
