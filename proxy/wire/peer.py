"""Who is on the far end of an accepted connection, and which rule of a listener names them.

Rules:
- Read once, at accept, and only on a listener that uses it (client rules or
  an audit log): three system calls and a readlink are cheap per connection,
  but a listener with neither pays none of them.
- The kernel's word only: ``SO_PEERCRED`` gives the pid, uid and effective
  gid the peer had when it connected; ``SO_PEERGROUPS`` (59 on Linux, which
  Python's ``socket`` does not name) gives its supplementary groups, which
  ``SO_PEERCRED`` leaves out. ``/proc/PID/exe`` names the program; a peer in
  another pid namespace, or gone already, has none we can read (None).
- A socket that says nothing (not a Unix socket, or never connected: uid
  and gid (uid_t)-1; a kernel without ``SO_PEERGROUPS``) gives less, never a
  guess: no peer, or no groups. A pid of 0 with real ids is a peer in a pid
  namespace the proxy cannot see: its ids are the kernel's word all the
  same, and dropping them would give it the listener's policy instead of
  the one its rule names.
- A client rule names uids and gids; a caller matches when its uid is listed
  or any of its groups (effective or supplementary) is. Rules are tried in
  order, and a caller no rule names gets the listener's own policy. A rule
  never matches a caller whose identity could not be read.

Theory of operation: ``read_peer`` asks the accepted socket for
``SO_PEERCRED`` (one ``struct ucred``), then ``SO_PEERGROUPS`` (a buffer of
64 groups first, the most a peer can have when the kernel says ERANGE), and
reads ``/proc/PID/exe``; ``choose`` walks a listener's ``ClientRule``s.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .access import Peer

SO_PEERGROUPS = 59
"""Linux's ``SO_PEERGROUPS`` (since 4.13): the peer's supplementary groups."""
_CREDS = struct.Struct("i2I")
"""``struct ucred``: pid_t pid, uid_t uid, gid_t gid."""
_NO_ID = 0xFFFFFFFF
"""The uid and gid ``SO_PEERCRED`` gives for a socket without credentials ((uid_t)-1)."""
_GROUPS_FIRST = 64 * 4
"""Room for 64 groups first; the kernel says ERANGE when the peer has more."""
_GROUPS_MOST = 65536 * 4
"""``NGROUPS_MAX``: no peer can have more groups than this."""

P = TypeVar("P")


class SocketLike(Protocol):
    """What a transport's ``get_extra_info("socket")`` gives (uvloop's is not a ``socket``)."""

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def _groups(sock: SocketLike) -> tuple[int, ...]:
    size = _GROUPS_FIRST
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == 34 and size < _GROUPS_MOST:  # ERANGE: more than fit
                size = _GROUPS_MOST
                continue
            return ()
        count = len(raw) // 4
        return struct.unpack(f"{count}I", raw[: count * 4])


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def read_peer(sock: SocketLike | None) -> Peer | None:
    """The peer of an accepted Unix socket; None when the kernel tells nothing."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    except OSError:
        return None
    pid, uid, gid = _CREDS.unpack(raw)
    if uid == _NO_ID:
        return None  # no credentials: a socket that was never connected, or not Unix
    # pid 0 with an id is a peer in a pid namespace the proxy does not see
    # (the proxy in a container, the client on the host): its ids still count.
    return Peer(uid=uid, gid=gid, groups=_groups(sock), pid=pid, exe=_exe(pid) if pid else None)


@dataclass(frozen=True, slots=True)
class ClientRule(Generic[P]):
    """``[[listeners.clients]]``: callers by uid or group, and what they get."""

    uids: frozenset[int]
    gids: frozenset[int]
    policy: P

    def names(self, peer: Peer) -> bool:
        if peer.uid in self.uids:
            return True
        gids = self.gids
        return peer.gid in gids or not gids.isdisjoint(peer.groups)


def choose(rules: tuple[ClientRule[P], ...], peer: Peer | None, default: P) -> P:
    """The policy of the first rule naming ``peer``, else the listener's ``default``."""
    if peer is not None:
        for rule in rules:
            if rule.names(peer):
                return rule.policy
    return default
