"""Follow the daemon's image events, and come back when the daemon does.

Rules:
- Events are a trigger only (see ``reconcile``): each one that may mean an
  image went away is passed to ``on_trigger`` with no name attached.
- The stream is (re)opened with ``since`` set to just before the daemon was
  found, so an event between that check and the stream is replayed, not lost.
- Every time the daemon answers again, ``on_connected`` runs: whatever was
  pruned while nobody was listening (a dockerd restart forgets its events)
  is found by the reconcile it asks for.
- A lost stream is retried forever, every ``RETRY`` seconds at most; while
  it is down ``up`` is False and ``detail`` says why, for ``/healthz``,
  ``status`` and the ``events_stream_up`` gauge. Only changes are logged.

Theory of operation: one task loops over ping, stream, wait. aiodocker reads
the stream (``Engine.image_events``); this module only decides what to do
with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .engine import Engine, EngineError
from .reconcile import is_trigger

log = logging.getLogger(__name__)

RETRY = 5.0
"""The longest wait between two attempts to reach a daemon that went away."""
FIRST_RETRY = 0.5


class EventWatcher:
    def __init__(
        self, engine: Engine, on_trigger: Callable[[], None], on_connected: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.on_trigger = on_trigger
        self.on_connected = on_connected
        self.up = False
        self.detail = "not connected yet"

    def view(self) -> dict[str, object]:
        return {"up": self.up, "detail": self.detail}

    async def run(self) -> None:
        delay = FIRST_RETRY
        while True:
            since = time.time() - 1  # dockerd's clock has whole-second events
            problem = await self.engine.ping()
            if problem is None:
                delay = FIRST_RETRY
                self._state(True, "following image events")
                self.on_connected()
                try:
                    async for event in self.engine.image_events(since):
                        if is_trigger(event):
                            self.on_trigger()
                    problem = "the daemon closed the event stream"
                except EngineError as exc:
                    problem = f"the event stream failed: {exc}"
            self._state(False, f"reconnecting: {problem}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY)

    def _state(self, up: bool, detail: str) -> None:
        if up != self.up:
            if up:
                log.info("image events: connected")
            else:
                log.warning("image events: %s", detail)
        self.up, self.detail = up, detail
