"""Flow control: why a side is not read, and bytes held with high and low water marks.

Rules:
- Flow control is end to end and per side: a side whose outgoing buffer is
  full pauses reading on the other side. A side is paused while it has any
  reason to be, and the reasons outlive the transport, so a replacement
  daemon connection starts paused when the client is not reading.
- Bytes held for later pause the side they come from at a high water mark
  and resume it only below a low one, so reading does not flap around one
  threshold. There are three such holds, all on the client side and all a
  ``Held``: a pipelined request held while an exchange is under way
  ("hold"), requests written while the daemon connection is still being
  opened ("connecting"), and a body a local handler reads as a stream and
  has not read yet ("stream").
- Pure logic over a transport's ``pause_reading``/``resume_reading``; it
  never reads or writes.

Theory of operation:
A ``Flow`` is a side's set of reasons. ``Held`` is one reason with its marks:
whoever holds the bytes tells it their size after each change (``update``),
and it pauses or resumes the ``Flow`` with its reason. Emptying a hold is an
``update(0)``.
"""

from __future__ import annotations

import asyncio

HOLD_HIGH = 1 << 18
"""Client bytes held (pipelined, or waiting for a daemon connection) before reading pauses."""
HOLD_LOW = HOLD_HIGH // 2
"""Held bytes below which a client paused for holding reads again."""

STREAM_LIMIT = 1 << 20
"""Request body bytes a handler reading a stream may fall behind before reading pauses."""


class Flow:
    """Why one side's reading is paused; outlives the transport it applies to."""

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.reasons: set[str] = set()
        self.transport: asyncio.Transport | None = None

    def attach(self, transport: asyncio.Transport | None) -> None:
        """A new transport (or none) for this side; it starts paused if reasons remain."""
        self.transport = transport
        if transport is not None and self.reasons:
            transport.pause_reading()

    def pause(self, reason: str) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None:
            self.transport.resume_reading()


class Held:
    """Bytes held for later, pausing ``flow`` above ``high`` until they fall below ``low``."""

    __slots__ = ("flow", "high", "low", "reason")

    def __init__(self, flow: Flow, reason: str, high: int, low: int) -> None:
        self.flow = flow
        self.reason = reason
        self.high = high
        self.low = low

    def update(self, size: int) -> None:
        """``size`` bytes are held now."""
        if size > self.high:
            self.flow.pause(self.reason)
        elif size < self.low and self.flow.reasons:
            self.flow.resume(self.reason)
