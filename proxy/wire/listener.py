"""The proxy's own Unix socket: claiming it safely, and refusing to loop.

Rules:
- Never steal a socket another live process is serving; do remove a stale
  file left by a crash, or the service could not restart after one.
- Never proxy to ourselves. A proxy whose upstream is its own socket would
  accept every request and forward it back to itself forever. Two checks
  catch it: the same path or inode, and, once listening, the pid on the far
  end of the upstream socket (SO_PEERCRED) being our own.
- A socket systemd handed us is systemd's: we neither re-permission nor
  remove it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import struct
from dataclasses import dataclass


class ListenerError(Exception):
    pass


@dataclass
class Listener:
    """The listening socket and whether its file is ours to remove."""

    sock: socket.socket
    path: str
    inode: int | None
    """The inode of the socket file we created; None when systemd owns it.
    Only that very file is removed at exit, never a successor's."""

    def remove(self) -> None:
        if self.inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def _live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True


def _clear(path: str) -> None:
    """Remove a stale socket file at ``path``; refuse anything else there."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenerError(f"{path} exists and is not a socket")
        if _live(path):
            raise ListenerError(f"{path} is in use by a live listener")
        os.unlink(path)


def claim(path: str, mode: int, group: str | None) -> Listener:
    """Bind a fresh listening socket at ``path`` with the given permissions.

    A folder the user cannot enter or write fails here with an OSError; that
    is a refusal to start, said in one line, not a bug."""
    try:
        _clear(path)
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    except OSError as exc:
        raise ListenerError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is wider than asked
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if group is not None:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, PermissionError) as exc:
            sock.close()
            os.unlink(path)
            raise ListenerError(f"cannot give {path} to group {group!r}: {exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return Listener(sock, path, inode=os.stat(path).st_ino)


def adopt(sock: socket.socket) -> Listener:
    """Wrap a socket systemd passed us."""
    sock.setblocking(False)
    name = sock.getsockname()
    path = name if isinstance(name, str) else ""
    return Listener(sock, path, inode=None)


def check_not_self(listen: str, upstream: str) -> None:
    """Refuse a path-level loop before binding anything."""
    if os.path.realpath(listen) == os.path.realpath(upstream):
        raise ListenerError(f"upstream {upstream} is the proxy's own socket")


def check_upstream_peer(listener: Listener, upstream: str) -> None:
    """Refuse when the upstream socket is ours, by inode or by the pid serving it."""
    try:
        up = os.stat(upstream)
    except OSError:
        return  # the daemon is not there yet; requests get 502 until it is
    if listener.path:
        with contextlib.suppress(OSError):
            own = os.stat(listener.path)
            if (own.st_dev, own.st_ino) == (up.st_dev, up.st_ino):
                raise ListenerError(f"upstream {upstream} is the proxy's own socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(upstream)
        except OSError:
            return
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _, _ = struct.unpack("3i", creds)
        if pid == os.getpid():
            raise ListenerError(f"upstream {upstream} is served by this proxy itself")
