"""daemonview: bind sources resolved in the root of the process behind the upstream socket."""

from __future__ import annotations

import socket
from pathlib import Path

from proxy.service.daemonview import DaemonView


def test_symlinks_resolve_in_the_root_of_the_upstream_socket_peer(tmp_path: Path) -> None:
    """The peer here is this very process (not a dockerd): its root is the one seen,
    read again each time, and a symlink out of a folder is followed."""
    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / "x").symlink_to("/etc")
        view = DaemonView(path)
        assert view.path(str(tmp_path / "agents" / "x" / "passwd")) == "/etc/passwd"
        assert view.path(str(tmp_path / "agents" / "new")) == str(tmp_path / "agents" / "new")
        assert view.image("busybox") == "docker.io/library/busybox:latest"
        assert view.image("a" * 64) is None  # an id, not a name


def test_without_a_daemon_root_to_read_no_path_is_resolved(tmp_path: Path) -> None:
    """The proxy's own root may not be dockerd's: a bind is refused rather than guessed."""
    (tmp_path / "l").symlink_to("/etc")
    view = DaemonView(str(tmp_path / "nobody.sock"))
    assert view.path(str(tmp_path / "l")) is None
    assert view.daemon_root() is None
