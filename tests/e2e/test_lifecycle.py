"""The proxy as a service: socket activation, systemd notifications, SIGTERM, start-up refusals.

These are the promises a unit file and an operator rely on: systemd learns
when the proxy is ready and when it stops; a restart never drops a request
in flight or steals a socket someone else serves; an activated socket stays
systemd's; a crash's leftover socket file does not block the next start; a
configuration that would loop into itself is refused before it can.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    docker,
    ping,
    require,
    wait_for,
)


@pytest.fixture
def short() -> Iterator[Path]:
    """A folder with a short path: Unix socket paths must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="l-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class NotifySocket:
    """Where systemd would listen for sd_notify: a real AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 20) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    def wait_for(self, message: bytes, timeout: float = 20) -> list[bytes]:
        """Messages in the order sent, up to and including ``message``."""
        seen: list[bytes] = []
        while not seen or seen[-1] != message:
            seen.append(self.next(timeout))
        return seen

    def pending(self) -> list[bytes]:
        """Whatever was sent and not read yet, without waiting."""
        self.sock.setblocking(False)
        got = []
        try:
            while True:
                got.append(self.sock.recv(4096))
        except BlockingIOError:
            return got
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def serve_argv(listen: str, upstream: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        f"--listen=unix://{listen}",
        f"--upstream=unix://{upstream}",
        "--metrics-listen=",
    ]


def refused(listen: str, upstream: str) -> str:
    """Run a proxy that must refuse to start; return its one line of explanation."""
    result = subprocess.run(
        serve_argv(listen, upstream),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- systemd ----------------------------------------------------------------------


def test_socket_activation_with_notify(dockerd: Dockerd, short: Path, busybox: str) -> None:
    """Under systemd-socket-activate: serves on fd 3, says READY=1 and STOPPING=1,
    and leaves systemd's socket file alone (same inode, same mode) at exit."""
    path = short / "activated.sock"
    notify = NotifySocket(short / "notify")
    log = (short / "proxy.log").open("wb")
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(path),
            "-E",
            f"NOTIFY_SOCKET={notify.path}",
            *serve_argv(str(path), dockerd.socket),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: path.exists(), 20, "systemd-socket-activate to listen")
        os.chmod(path, 0o606)  # a mode the proxy would never choose itself
        before = os.stat(path)
        # The first connection starts the proxy, which must answer it.
        conn = UnixHTTPConnection(str(path), timeout=30)
        conn.request("GET", "/_ping")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"OK")
        conn.close()
        assert notify.wait_for(b"READY=1") == [b"READY=1"], "READY=1 must come first, once"
        env = {**os.environ, "DOCKER_HOST": f"unix://{path}"}
        assert docker(["run", "--rm", BUSYBOX, "echo", "activated"], env=env).stdout == (
            b"activated\n"
        )
        proc.send_signal(signal.SIGTERM)
        assert notify.wait_for(b"STOPPING=1") == [b"STOPPING=1"], "nothing between the two"
        assert proc.wait(30) == 0
        assert notify.pending() == [], "nothing after STOPPING=1"
        after = os.stat(path)
        assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, 0o606)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        log.close()


def test_socket_activated_tcp_is_refused_in_one_line(short: Path) -> None:
    """A .socket unit with ListenStream=127.0.0.1:PORT hands over a TCP socket: the
    proxy says what it got and what the unit needs, with no traceback (uvloop's
    own refusal was one). Loopback only."""
    require("systemd-socket-activate")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            *serve_argv(str(short / "unused.sock"), str(short / "no-daemon.sock")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        # The socket is systemd-socket-activate's until the first connection starts the proxy.
        with socket.socket() as client:
            wait_for(lambda: client.connect_ex(("127.0.0.1", port)) == 0, 20, "the TCP socket")
            assert proc.wait(30) == 1
        assert proc.stdout is not None
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in output, output
    said = [line for line in output.splitlines() if "docker-heal-proxy" in line]
    assert said == [
        f"docker-heal-proxy: systemd passed an AF_INET socket (127.0.0.1:{port}, named "
        "unknown); the proxy serves a Unix stream socket only: give each .socket unit one "
        "ListenStream=/run/NAME.sock (Accept=no)"
    ]
    assert not (short / "unused.sock").exists()


# -- descriptors ------------------------------------------------------------------

CLIENTS = 2000


@contextlib.contextmanager
def open_files_at_least(count: int) -> Iterator[None]:
    """This test process holds every client socket: give it room, and give the old limit back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count:
        pytest.skip(f"the hard limit on open files is {hard}, under {count}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_two_thousand_idle_clients_are_answered_under_a_soft_limit_of_1024(
    make_proxy: MakeProxy,
) -> None:
    """Each client costs the proxy two descriptors; a soft limit of 1024, the usual
    default, would refuse about the 500th unless the proxy raises it to the hard
    limit, as dockerd does."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 2 * CLIENTS + 100:
        pytest.skip(f"the hard limit on open files is {hard}")

    def soft_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    proxy = make_proxy(preexec_fn=soft_1024)
    clients: list[socket.socket] = []
    with open_files_at_least(CLIENTS + 200):
        try:
            for _ in range(CLIENTS):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                clients.append(client)
                client.settimeout(60)
                # A full backlog (a busy machine accepts slowly) is EAGAIN on a Unix socket.
                wait_for(
                    lambda c=client: c.connect_ex(proxy.socket) == 0,
                    60,
                    "room in the proxy's backlog",
                )
            # All connected and idle; now every one asks at once.
            for client in clients:
                client.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            answered = 0
            for client in clients:
                reply = b""
                while not reply.endswith(b"OK"):
                    data = client.recv(4096)
                    if not data:
                        break
                    reply += data
                answered += reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"OK")
        finally:
            for client in clients:
                client.close()
    assert answered == CLIENTS, proxy.log()[-2000:]


# -- SIGTERM ----------------------------------------------------------------------


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed inside the head: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def test_sigterm_finishes_plain_requests_and_closes_hijacked_ones(
    make_proxy: MakeProxy, dockerd: Dockerd, busybox: str
) -> None:
    """A long-poll ``wait`` in flight completes; an attach is cut; then exit 0."""
    proxy = make_proxy()
    name = f"dhp-term-{uuid.uuid4().hex[:8]}"
    script = "while [ ! -e /go ]; do sleep 0.05; done; exit 3"
    docker(["run", "-d", "-i", "--name", name, BUSYBOX, "sh", "-c", script], env=dockerd.env)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    attached = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        waiting.settimeout(30)
        waiting.connect(proxy.socket)
        waiting.sendall(
            f"POST /v1.41/containers/{name}/wait HTTP/1.1\r\nHost: docker\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        attached.settimeout(30)
        attached.connect(proxy.socket)
        attached.sendall(
            f"POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
        )
        head, _ = read_head(attached)
        assert head.startswith(b"HTTP/1.1 101 ")
        wait_for(
            lambda: f"POST /v1.41/containers/{name}/wait" in dockerd.log_path.read_text(),
            10,
            "the wait to reach dockerd",
        )

        proxy.proc.send_signal(signal.SIGTERM)

        # The hijacked stream is closed by the proxy...
        while attached.recv(65536):
            pass

        # ...no new connection is taken...
        def refusing() -> bool:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(proxy.socket)
                except (ConnectionRefusedError, FileNotFoundError):
                    return True
            return False

        wait_for(refusing, 10, "the proxy to stop accepting")
        # ...but the plain request in flight is still being served.
        assert proxy.proc.poll() is None, proxy.log()
        docker(["exec", name, "touch", "/go"], env=dockerd.env)
        head, rest = read_head(waiting)
        assert head.startswith(b"HTTP/1.1 200 OK")
        body = rest
        while data := waiting.recv(65536):
            body += data
        assert b'"StatusCode":3' in body
        assert proxy.proc.wait(30) == 0
        assert not os.path.exists(proxy.socket)
    finally:
        waiting.close()
        attached.close()
        docker(["rm", "-f", name], env=dockerd.env, check=False)


def test_sigterm_leaves_a_successors_socket_file(make_proxy: MakeProxy) -> None:
    """Only the very file this process created is removed, never one bound since."""
    proxy = make_proxy()
    os.unlink(proxy.socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as successor:
        successor.bind(proxy.socket)
        successor.listen()
        inode = os.stat(proxy.socket).st_ino
        assert proxy.stop() == 0
        assert os.stat(proxy.socket).st_ino == inode


# -- start-up ---------------------------------------------------------------------


def test_refuses_its_own_socket_as_upstream(short: Path) -> None:
    listen = str(short / "proxy.sock")
    assert "own socket" in refused(listen, listen)
    os.symlink(listen, short / "alias.sock")
    assert "own socket" in refused(listen, str(short / "alias.sock"))
    assert not os.path.exists(listen), "nothing was bound"


def test_refuses_a_socket_a_live_listener_serves(short: Path, dockerd: Dockerd) -> None:
    path = short / "taken.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as owner:
        owner.bind(str(path))
        owner.listen()
        inode = os.stat(path).st_ino
        assert "in use by a live listener" in refused(str(path), dockerd.socket)
        assert os.stat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the owner's, still listening


def test_refuses_the_socket_of_a_running_proxy(proxy: Proxy, dockerd: Dockerd) -> None:
    assert "in use by a live listener" in refused(proxy.socket, dockerd.socket)
    assert ping(proxy.socket)


def test_refuses_a_path_that_is_not_a_socket(short: Path, dockerd: Dockerd) -> None:
    path = short / "file.txt"
    path.write_text("keep me")
    assert "not a socket" in refused(str(path), dockerd.socket)
    assert path.read_text() == "keep me"


def test_replaces_a_stale_socket_file(make_proxy: MakeProxy) -> None:
    """A socket file nobody listens on (a crash's leftover) does not block a start."""
    first = make_proxy()
    stale = first.socket
    first.proc.kill()  # no clean-up: the file stays behind
    first.proc.wait()
    assert os.path.exists(stale)
    assert not ping(stale)
    second = make_proxy(args=[f"--listen=unix://{stale}"], wait=False)
    wait_for(lambda: second.proc.poll() is not None or ping(stale), 20, "the second proxy")
    assert second.proc.poll() is None, second.log()
