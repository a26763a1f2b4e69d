"""What a create body only names, seen as dockerd will see it: host paths, image names.

Rules:
- A bind source is resolved in dockerd's own root, ``/proc/PID/root`` of the
  process on the far end of the upstream socket (``SO_PEERCRED``), one
  symlink at a time (``hostpath``): the unit's ``PrivateTmp=yes`` gives the
  proxy a ``/tmp`` of its own, and dockerd may run in another mount
  namespace still. The pid is read again when the process it named is no
  longer a ``dockerd`` (a restarted daemon).
- When dockerd's root cannot be read (the proxy is not root, the socket is
  not a local dockerd's), no path is resolved (None): a bind mount is then
  refused, since the proxy's own root may not be the daemon's. One warning
  in the log says why, and ``check`` says so before.
- Image names are spelled as the heal path spells them (``reference``).
- I/O: ``readlink`` and ``/proc`` reads, a few per bind source, each a
  syscall on the event loop (no disk wait: symlinks are in the dentry cache
  of a path just named).
"""

from __future__ import annotations

import logging
import os
import socket

from ..recipes.reference import full_name
from ..wire.hostpath import resolve
from ..wire.peer import read_peer

log = logging.getLogger(__name__)


class DaemonView:
    """The ``bodychecks.Resolver`` of a proxy in front of the dockerd at ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._root: str | None = None
        self._pid = 0
        self._warned = False

    def path(self, path: str) -> str | None:
        root = self.daemon_root()
        if root is None:
            return None

        def readlink(inside: str) -> str | None:
            try:
                return os.readlink(root + inside)
            except OSError:
                return None

        return resolve(path, readlink)

    def image(self, reference: str) -> str | None:
        return full_name(reference)

    def daemon_root(self) -> str | None:
        """``/proc/PID/root`` of dockerd, or None when it cannot be read."""
        if self._root is not None and _is_dockerd(self._pid):
            return self._root
        pid = _peer_pid(self._upstream)
        root: str | None = f"/proc/{pid}/root"
        if not pid or not os.access(f"{root}/", os.R_OK | os.X_OK):
            root = None
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot see dockerd's root through %s: bind mounts under a policy's "
                    "binds_under are refused (run the proxy as root)",
                    self._upstream,
                )
        self._root, self._pid = root, pid
        return root


def _peer_pid(path: str) -> int:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(path)
            peer = read_peer(sock)
    except OSError:
        return 0
    return peer.pid if peer is not None else 0


def _is_dockerd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
            return comm.read().strip() == "dockerd"
    except OSError:
        return False
