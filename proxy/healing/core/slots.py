"""Heal slots: at most ``max_parallel`` recipes run at once, clients first.

Rules:
- A slot that is free is taken at once.
- When a slot frees, the client heal that has waited longest gets it; a
  background (proactive) heal gets one only when no client heal waits, so a
  background heal is never queued ahead of a client.
- Whether a waiter is background is asked when a slot frees, not when it
  began to wait: a proactive heal that a client joined meanwhile is a
  client's heal now.
- A new limit (a reload) applies to the next grants; heals holding a slot
  keep it. A waiter cancelled just after it was granted a slot passes it on.

Theory of operation: a list of waiters, each a question (is it background?)
and a future; ``_grant`` resolves futures while slots are free. Everything
runs on one event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class Slots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiting: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @property
    def free(self) -> bool:
        """Would a heal asking now get a slot at once?"""
        return self.busy < self.limit

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._grant()

    @contextlib.asynccontextmanager
    async def take(self, background: Callable[[], bool]) -> AsyncIterator[None]:
        """Hold one slot; ``background`` says, when asked, whether this heal is one."""
        if self.busy < self.limit:
            self.busy += 1
        else:
            await self._wait(background)
        try:
            yield
        finally:
            self.busy -= 1
            self._grant()

    async def _wait(self, background: Callable[[], bool]) -> None:
        entry = (background, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif not entry[1].cancelled():  # granted, then cancelled: pass it on
                self.busy -= 1
                self._grant()
            raise

    def _grant(self) -> None:
        while self.busy < self.limit and self._waiting:
            clients = [entry for entry in self._waiting if not entry[0]()]
            entry = clients[0] if clients else self._waiting[0]
            self._waiting.remove(entry)
            self.busy += 1
            entry[1].set_result(None)
