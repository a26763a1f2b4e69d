"""Follow the daemon's image events, and come back when the daemon does.

Rules:
- Events are a trigger only (see ``reconcile``): each one that may mean an
  image went away is passed to ``on_trigger`` with no name attached. Every
  event also goes to ``on_event`` whole: stale mode keeps its tag map
  from them (``stale.tagmap``).
- The stream is (re)opened with ``since`` set to just before the attempt, so
  an event between the last one seen and the new stream is replayed, not lost.
- The stream is up, and ``on_connected`` runs, only once ``/events`` answered
  200: whatever was pruned while nobody was listening (a dockerd restart
  forgets its events) is found by the reconcile it asks for. A daemon that
  answers ``/_ping`` but refuses ``/events`` (a socket proxy forbidding it)
  is down, and asks for no reconcile.
- A lost stream is retried forever. The wait starts at ``first_retry`` and
  doubles after each attempt, up to ``retry``; it starts over only after a
  stream stayed open ``stable`` seconds, so a stream refused or closed at
  once is not reopened (nor reconciled) in a tight loop.
- While it is down ``up`` is False and ``detail`` says why, for ``/healthz``,
  ``status`` and the ``events_stream_up`` gauge. Only changes are logged.

Theory of operation: one task loops over stream and wait; the backoff is a
plain number carried from one attempt to the next. ``Engine.image_events``
reads the stream; this module only decides what to do with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..sources.engine import Engine, EngineError
from .reconcile import is_trigger

log = logging.getLogger(__name__)

FIRST_RETRY = 0.5
RETRY = 30.0
"""The longest wait between two attempts to open the stream."""
STABLE = 30.0
"""A stream open this long was a real connection: the wait starts over."""


class EventWatcher:
    def __init__(
        self,
        engine: Engine,
        on_trigger: Callable[[], None],
        on_connected: Callable[[], None],
        *,
        on_event: Callable[[Mapping[str, Any]], None] = lambda event: None,
        first_retry: float = FIRST_RETRY,
        retry: float = RETRY,
        stable: float = STABLE,
    ) -> None:
        self.engine = engine
        self.on_trigger = on_trigger
        self.on_connected = on_connected
        self.on_event = on_event
        self.first_retry, self.retry, self.stable = first_retry, retry, stable
        self.up = False
        self.detail = "not connected yet"
        self._opened_at: float | None = None

    def view(self) -> dict[str, object]:
        return {"up": self.up, "detail": self.detail}

    async def run(self) -> None:
        try:
            await self._follow()
        except Exception:
            self._state(False, "the watcher failed (see the log); it starts again")
            raise

    async def _follow(self) -> None:
        delay = self.first_retry
        while True:
            self._opened_at = None
            since = time.time() - 1  # dockerd's clock has whole-second events
            try:
                async for event in self.engine.image_events(since, self._opened):
                    self.on_event(event)
                    if is_trigger(event):
                        self.on_trigger()
                problem = "the daemon closed the event stream"
            except EngineError as exc:
                problem = f"the event stream failed: {exc}"
            opened = self._opened_at
            if opened is not None and time.monotonic() - opened >= self.stable:
                delay = self.first_retry
            self._state(False, f"reconnecting: {problem}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry)

    def _opened(self) -> None:
        self._opened_at = time.monotonic()
        self._state(True, "following image events")
        self.on_connected()

    def _state(self, up: bool, detail: str) -> None:
        if up != self.up:
            if up:
                log.info("image events: connected")
            else:
                log.warning("image events: %s", detail)
        self.up, self.detail = up, detail
