"""The words access control is said in: who called, what was decided, what happened.

Rules:
- A caller is known by what the kernel says of the socket at accept
  (``SO_PEERCRED``, ``SO_PEERGROUPS``, ``/proc/PID/exe``), read once: a
  process can change its ids later, but the connection stays the one it
  opened. Containers all have uid 0, so they are told apart by listener,
  never by uid.
- A verdict names a route template, never a raw path, so that it can label a
  metric; the raw path goes only to the audit log.
- A verdict in ``warn`` or ``audit`` mode forwards what ``enforce`` would
  refuse, and says so (``denied``), so the audit log can record ``would_deny``.
- Pure: these are values. Reading them from a socket is ``peer``'s job,
  deciding them ``policy``'s, and writing them down the audit log's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["enforce", "warn", "audit"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The process on the far end of an accepted Unix socket, as the kernel saw it then."""

    uid: int
    gid: int
    """The effective gid only; supplementary groups are ``groups``."""
    groups: tuple[int, ...]
    pid: int
    exe: str | None
    """``/proc/PID/exe`` at accept; None when it could not be read."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a listener's policy makes of one request line."""

    policy: str
    mode: Mode
    route: str
    """``METHOD /template`` of the route dockerd would take, or ``METHOD other``."""
    rule: str | None
    """The ``allow`` entry that matched, or None when none did."""
    denied: bool
    """``enforce`` refuses this request; in another mode it goes on all the same."""
    reason: str = ""
    """For a denied request, the refusal a client reads, naming policy and rule."""
    field: str | None = None
    """For a body a policy refuses, where in it (``HostConfig.Privileged``)."""
    value: str | None = None
    """And the value refused there, cut short; never an ``Env`` value, never the body."""

    @property
    def forward(self) -> bool:
        return not self.denied or self.mode != "enforce"


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One exchange as the audit log needs it, reported by the data path at its end."""

    listener: str
    peer: Peer | None
    method: str
    path: str
    """The raw request target, as sent."""
    verdict: Verdict | None
    """None on a listener without a policy."""
    status: int
    """The answer's status; 0 when the exchange ended without one."""
    seconds: float
    hijacked: bool
