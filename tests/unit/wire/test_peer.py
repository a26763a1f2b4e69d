"""peer: what the kernel says of the far end of a real Unix socket, and which rule names it."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.wire.access import Peer
from proxy.wire.peer import SO_PEERGROUPS, ClientRule, choose, read_peer


def test_a_socket_pair_shows_this_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = read_peer(left)
    assert peer is not None
    assert (peer.uid, peer.gid, peer.pid) == (os.geteuid(), os.getegid(), os.getpid())
    assert set(peer.groups) == set(os.getgroups())
    assert peer.exe == os.path.realpath(sys.executable)


def test_a_socket_without_credentials_gives_no_peer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert read_peer(tcp) is None
    assert read_peer(None) is None


class ManyGroups:
    """A socket whose peer has more groups than the first buffer holds."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.asked: list[int] = []

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        if option == socket.SO_PEERCRED:
            return b"".join(n.to_bytes(4, sys.byteorder) for n in (1, 1000, 1000))
        assert option == SO_PEERGROUPS
        self.asked.append(buflen)
        if buflen < 4 * self.groups:
            raise OSError(errno.ERANGE, "Numerical result out of range")
        return b"".join(n.to_bytes(4, sys.byteorder) for n in range(self.groups))


def test_more_groups_than_the_first_buffer_are_read_whole() -> None:
    sock = ManyGroups(100)
    peer = read_peer(sock)
    assert peer is not None and peer.groups == tuple(range(100))
    assert len(sock.asked) == 2
    assert (peer.uid, peer.gid, peer.pid) == (1000, 1000, 1)


def test_a_kernel_without_peergroups_gives_no_groups() -> None:
    class Old(ManyGroups):
        def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
            if option == SO_PEERGROUPS:
                raise OSError(errno.ENOPROTOOPT, "Protocol not available")
            return super().getsockopt(level, option, buflen)

    peer = read_peer(Old(0))
    assert peer is not None and peer.groups == ()


class OtherPidNamespace(ManyGroups):
    """A peer the kernel cannot give a pid for: it is in no pid namespace the
    proxy sees (the proxy in a container, a host client), so ``SO_PEERCRED``
    says pid 0, with its uid and gid all the same (checked on Linux 6.x with
    ``unshare --pid --fork``)."""

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        if option == socket.SO_PEERCRED:
            return b"".join(n.to_bytes(4, sys.byteorder) for n in (0, 1000, 1000))
        return super().getsockopt(level, option, buflen)


def test_a_peer_outside_the_pid_namespace_keeps_its_uid() -> None:
    """Dropped, it would fall through every client rule to the listener's own
    policy: a uid given ``runner`` on a ``full`` listener would get ``full``."""
    found = read_peer(OtherPidNamespace(2))
    assert found is not None
    assert (found.uid, found.gid, found.groups, found.pid, found.exe) == (
        1000,
        1000,
        (0, 1),
        0,
        None,
    )
    rules = (ClientRule(frozenset({1000}), frozenset(), "runner"),)
    assert choose(rules, found, "full") == "runner"


def peer(uid: int, gid: int, *groups: int) -> Peer:
    return Peer(uid=uid, gid=gid, groups=groups, pid=1, exe=None)


RULES = (
    ClientRule(frozenset({1000}), frozenset(), "by-uid"),
    ClientRule(frozenset(), frozenset({50}), "by-group"),
    ClientRule(frozenset({0}), frozenset({50}), "root"),
)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (peer(1000, 50), "by-uid"),  # first match wins
        (peer(2000, 50), "by-group"),  # effective gid
        (peer(2000, 100, 7, 50), "by-group"),  # supplementary group
        (peer(0, 0), "root"),
        (peer(2000, 100, 7), "listener"),
        (None, "listener"),  # unreadable: no rule names it
    ],
)
def test_rules_are_tried_in_order(who: Peer | None, expected: str) -> None:
    assert choose(RULES, who, "listener") == expected


def test_credentials_refused_give_no_peer() -> None:
    class Refusing:
        def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    assert read_peer(Refusing()) is None


WHO_CALLED = """
import socket, sys
from proxy.wire.peer import read_peer
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("ready", flush=True)
conn, _ = server.accept()
peer = read_peer(conn)
print(None if peer is None else (peer.uid, peer.pid), flush=True)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_the_kernel_gives_a_peer_in_no_visible_pid_namespace_pid_0_and_its_uid(
    tmp_path: Path,
) -> None:
    """The fact ``OtherPidNamespace`` stands for, on this kernel: the listener in a
    pid namespace of its own (as in a container), the client outside it."""
    path = str(tmp_path / "s.sock")
    root = str(Path(__file__).resolve().parents[3])
    listener = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-c", WHO_CALLED, path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            said = listener.stdout.readline()
    finally:
        listener.kill()
        listener.wait()
    assert said == f"({os.geteuid()}, 0)\n"
