"""A hijacked BuildKit ``/session``: a splice that holds a build's Dockerfile end until healed.

Rules:
- Used for the 101 of ``POST /session`` when the hub has a ``BuildSessions``
  (the healing part's); every other upgrade is a plain ``Splice``.
- Everything ``sessionrelay`` lets through is written at once; what it
  holds waits for the healing part's verdict on the held Dockerfile (its
  ``held``, told the connection's policy, since a heal it starts must be
  one the caller could ask for): None releases it, a message refuses it
  (the build fails with that message), an exception gives up (flush and
  splice). Other streams
  keep flowing meanwhile, BuildKit's health checks among them.
- The relay remembers each Dockerfile the daemon asked for in the hub's
  ``dockerfiles`` under the session's shared key (the ``/session`` request's
  ``X-Docker-Expose-Session-Sharedkey``), for a later build of the same
  folder whose daemon does not ask for the unchanged file (dockerd 20.10).
- Giving up is counted (``Observer.session_gave_up``) and logged at debug,
  with the relay's reason; the build then does what it would without the
  proxy.
- A verdict still pending when the connection goes is cancelled with it;
  a heal it waits for goes on (the healer shields it).

Theory of operation:
``BuildSession`` replaces ``Splice``'s two byte paths: each read goes
through the relay, then both of the relay's outboxes are written. A new
hold starts a task that awaits the verdict and applies it, then writes
what it let go. Half-closes go through the relay first (an end of file
during a hold gives up) and then are passed on as a splice does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .http1 import field_values
from .sessionrelay import SPLICED, Hold, SessionRelay
from .splice import Splice

if TYPE_CHECKING:
    from .connection import Connection
    from .hub import BuildSessions

log = logging.getLogger(__name__)


def _allowed(method: str, target: str) -> None:
    """The refusals of a connection without a policy: none."""
    return None


SHARED_KEY = b"x-docker-expose-session-sharedkey"
"""The session's shared key: the folder's, under which the relay remembers its Dockerfile."""


class BuildSession(Splice):
    """The splice of one ``/session`` connection, read along by a ``SessionRelay``."""

    __slots__ = ("relay", "sessions", "tasks", "told")

    def __init__(self, conn: Connection, sessions: BuildSessions) -> None:
        super().__init__(conn)
        self.sessions = sessions
        head = conn.head
        key = field_values(head, SHARED_KEY)[:1] if head is not None else []
        self.relay = SessionRelay(sessions.limit, conn.hub.dockerfiles, key[0] if key else b"")
        self.tasks: set[asyncio.Task[None]] = set()
        self.told = False
        """Whether giving up was counted and logged."""

    def from_client(self, data: bytes) -> None:
        self.relay.from_client(data)
        self._write()

    def from_daemon(self, data: bytes) -> None:
        self.relay.from_daemon(data)
        self._write()

    def client_eof(self) -> bool:
        self.relay.client_eof()
        self._write()
        return super().client_eof()

    def daemon_eof(self) -> bool:
        self.relay.daemon_eof()
        self._write()
        return super().daemon_eof()

    def lost(self) -> None:
        for task in self.tasks:
            task.cancel()

    def _write(self) -> None:
        relay = self.relay
        up = relay.data_for_daemon()
        if up:
            self.conn._to_upstream(up)
        down = relay.data_for_client()
        transport = self.conn.transport
        if down and transport is not None:
            transport.write(down)
        while (hold := relay.next_hold()) is not None:
            task = asyncio.get_running_loop().create_task(self._verdict(hold))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if relay.state is SPLICED and not self.told:
            self.told = True
            log.debug("build session spliced without reading along: %s", relay.reason)
            observer = self.conn.hub.observer
            if observer is not None:
                observer.session_gave_up()

    async def _verdict(self, hold: Hold) -> None:
        try:
            gate = self.conn.gate
            reason = await self.sessions.held(hold.text, _allowed if gate is None else gate.refuses)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.relay.state is not SPLICED:
                self.relay.give_up(f"no verdict on the Dockerfile: {exc!r}")
        else:
            if reason is None:
                self.relay.release(hold.stream)
            else:
                self.relay.refuse(hold.stream, reason)
        if self.conn.transport is not None and not self.conn.transport.is_closing():
            self._write()
