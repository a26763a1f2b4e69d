"""What every connection of one listener shares, and the two ways the rest plugs in.

Rules:
- The healing part plugs into the data path only through ``Interceptor``
  (which requests it takes over, and the ``Handler`` that runs them),
  ``BuildSessions`` (the verdict on a BuildKit build's held Dockerfile) and
  ``Observer`` (what the data path saw, for the metrics), so the wire never
  calls upward.
- Shutting down stops new exchanges: idle and hijacked connections close
  at once, busy ones after their exchange (``rules.close_when_idle``).
- Access control plugs in the same way: a listener's ``Judge`` (its policy,
  or one a client rule picks by peer) and its ``Auditor`` (the audit log).
  A hub with neither is ``gated`` False, and its connections pay nothing
  for them (see ``gate``).

Theory of operation:
A listener makes one ``Hub`` and hands it to each ``Connection`` it accepts;
connections register themselves, so shutdown can reach them all and wait
until none is left (``idle``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .access import AccessRecord, Peer, Verdict
from .bodychecks import CreateRules, Resolver
from .http1 import RequestHead
from .peer import ClientRule, choose
from .sessionmemory import DockerfileMemory

if TYPE_CHECKING:
    from .connection import Connection
    from .local import Handler


class Interceptor(Protocol):
    def claim(self, head: RequestHead) -> Handler | None:
        """The coroutine that takes this request over, or None to forward it."""


class BuildSessions(Protocol):
    """Where the Dockerfile a BuildKit session holds goes (``buildsession``)."""

    limit: int
    """The largest Dockerfile read along, in bytes; a larger one is not held."""

    async def held(self, text: bytes, refusal: Callable[[str, str], str | None]) -> str | None:
        """None lets the build read its Dockerfile; a message fails the build with it.

        ``refusal`` is the caller's policy (``Gate.refuses``): a heal the build
        would start must be one it could ask for."""


class Observer(Protocol):
    """Where the data path reports what it saw; the metrics module implements it."""

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None: ...
    def upstream_error(self, kind: str) -> None: ...
    def hijacked(self, delta: int) -> None: ...
    def h2_spliced(self) -> None: ...
    def session_gave_up(self) -> None: ...
    def policy_denied(self, listener: str, policy: str, route: str) -> None: ...


class Judge(Protocol):
    """A listener's policy: what it makes of one request line (``policy.Policy``)."""

    @property
    def name(self) -> str: ...

    @property
    def create(self) -> CreateRules:
        """What the bodies of ``bodychecks.LIMITS``' routes may ask for."""

    def judge(
        self, method: str, target: str, content_types: Sequence[bytes] | None = None
    ) -> Verdict:
        """``target`` is the raw request target, query string included;
        ``content_types`` the ``Content-Type`` values of a POST (a build's
        options may be in a form body)."""


class Auditor(Protocol):
    """Where each exchange of a listener is reported (the audit log); never blocks."""

    def admits(self) -> bool:
        """False: the log is full and must not lose a line, so the request is refused."""

    def record(self, record: AccessRecord) -> None: ...


class Hub:
    """What every connection of one listener shares."""

    def __init__(
        self,
        upstream_path: str,
        interceptor: Interceptor | None = None,
        observer: Observer | None = None,
        *,
        sessions: BuildSessions | None = None,
        strict: bool = False,
        name: str = "default",
        policy: Judge | None = None,
        clients: tuple[ClientRule[Judge | None], ...] = (),
        auditor: Auditor | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.upstream_path = upstream_path
        self.interceptor = interceptor
        self.observer = observer
        self.sessions = sessions
        self.dockerfiles = DockerfileMemory()
        """The Dockerfiles BuildKit sessions sent, for builds that do not send them again."""
        self.strict = strict
        """Raise on an impossible event instead of logging it (tests)."""
        self.name = name
        """The listener's name, as refusals, metrics and the audit log say it."""
        self.policy = policy
        """The listener's policy; None is ``full``, never judged."""
        self.clients = clients
        self.auditor = auditor
        self.resolver = resolver
        """How the body checks see host paths and image names (``bodychecks.Resolver``)."""
        self.reads_peer = bool(clients) or auditor is not None
        """Whether a connection's peer is read at accept: only if something uses it."""
        self.gated = policy is not None or self.reads_peer
        """Whether connections are looked at at all (``gate``)."""
        self.verdicts: dict[Judge, dict[bytes, Verdict]] = {}
        """Each policy's verdicts by the head's bytes, shared by its connections (``gate``)."""
        self.connections: set[Connection] = set()
        self.closing = False
        self.idle = asyncio.Event()
        self.idle.set()

    def policy_for(self, peer: Peer | None) -> Judge | None:
        return choose(self.clients, peer, self.policy)

    def register(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.idle.clear()

    def unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.idle.set()

    def shut_down(self) -> None:
        """Stop new exchanges: idle and hijacked connections close now, busy ones after."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_when_idle()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
