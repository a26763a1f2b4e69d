"""Faults through the real proxy and a real dockerd: nothing may leak, nothing be left behind.

After each case the proxy still serves, its open descriptors (``/proc/PID/fd``)
and its tasks (the ``debug`` count in ``GET /_heal/status``, private to the
proxy socket) are back to their baseline, and no container is left that no
client asked for.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    back_to,
    build_busybox,
    docker,
    gated_tagging_script,
    image_exists,
    line_count,
    remove,
    start_proxy,
    tagging_script,
    toml_string,
    usage,
    wait_for,
)

pytestmark = pytest.mark.daemon


def containers(dockerd: Dockerd) -> set[str]:
    out = docker(["ps", "-aq", "--no-trunc"], env=dockerd.env).stdout.decode()
    return set(out.split())


def recipe_config(tmp_path: Path, image: str, script: Path, extra: str = "") -> str:
    return f"""
state_dir = {toml_string(tmp_path / "state")}
{extra}
[[images]]
match = {toml_string(image)}
command = [{toml_string(script)}]
"""


@pytest.fixture
def sleeper(dockerd: Dockerd, busybox: str) -> Iterator[str]:
    """A running container: something to wait on, attach to and follow logs of."""
    out = docker(
        [
            "run",
            "-d",
            "--network=none",
            busybox,
            "sh",
            "-c",
            "while true; do echo tick; sleep 1; done",
        ],
        env=dockerd.env,
    )
    cid = out.stdout.decode().strip()
    yield cid
    docker(["rm", "-f", cid], env=dockerd.env, check=False)


def _cut(path: str, data: bytes, read: int, rng: random.Random) -> None:
    """Send ``data``, maybe read up to ``read`` bytes of the answer, and close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        got = 0
        while got < read:
            chunk = sock.recv(min(65536, read - got))
            if not chunk:
                break
            got += len(chunk)
        if rng.random() < 0.5:
            sock.shutdown(socket.SHUT_WR)  # half-close first, sometimes
        time.sleep(rng.random() * 0.002)


def test_1000_clients_closing_at_random_points(
    dockerd: Dockerd, make_proxy: MakeProxy, sleeper: str, tmp_path: Path, busybox: str
) -> None:
    image = "127.0.0.1:1/dhp/faults-cut:1"
    script = tagging_script(tmp_path / "recipe.sh", tmp_path / "marker", busybox, image)
    proxy = make_proxy(recipe_config(tmp_path, image, script))
    before = containers(dockerd)
    baseline = usage(proxy)
    rng = random.Random(8)
    create = json.dumps({"Image": BUSYBOX, "Cmd": ["true"]}).encode()
    update = b'{"CpuShares": 512}'

    def post(path: str, body: bytes) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body

    ping_req = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
    cases = {
        # mid-head: never a whole request
        "mid-head": lambda: (ping_req[: rng.randrange(1, len(ping_req) - 1)], 0),
        # mid-body of a claimed create (nothing reaches dockerd) and of a plain request
        "mid-body-claimed": lambda: (
            post("/v1.41/containers/create", create)[: -rng.randrange(1, len(create))],
            0,
        ),
        "mid-body-plain": lambda: (
            post(f"/v1.41/containers/{sleeper}/update", update)[: -rng.randrange(1, len(update))],
            0,
        ),
        # waiting for an answer that comes only when the container exits
        "waiting": lambda: (post(f"/v1.41/containers/{sleeper}/wait", b""), 0),
        # mid-answer: an image export, a log stream, an event stream
        "mid-answer": lambda: (
            rng.choice(
                [
                    f"GET /v1.41/images/{BUSYBOX}/get HTTP/1.1\r\nHost: d\r\n\r\n".encode(),
                    f"GET /v1.41/containers/{sleeper}/logs?follow=1&stdout=1 HTTP/1.1\r\n"
                    "Host: d\r\n\r\n".encode(),
                    b"GET /v1.41/events HTTP/1.1\r\nHost: d\r\n\r\n",
                ]
            ),
            rng.randrange(1, 400),
        ),
    }
    plan = [rng.choice(list(cases)) for _ in range(1000)]

    def one(kind: str) -> None:
        data, read = cases[kind]()
        _cut(proxy.socket, data, read, random.Random(rng.random()))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, plan))
    back_to(proxy, baseline, "1000 cut connections")
    assert containers(dockerd) == before
    assert line_count(tmp_path / "marker") == 0


def test_100_concurrent_creates_during_one_heal(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path, busybox: str
) -> None:
    image = "127.0.0.1:1/dhp/faults-many:1"
    marker = tmp_path / "marker"
    release = tmp_path / "release"
    script = gated_tagging_script(tmp_path / "recipe.sh", marker, busybox, image, release)
    proxy = make_proxy(recipe_config(tmp_path, image, script))
    remove(dockerd.env, image)
    before = containers(dockerd)
    baseline = usage(proxy)
    body = json.dumps({"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    created: list[str] = []
    lock = threading.Lock()

    def create(_: int) -> int:
        conn = UnixHTTPConnection(proxy.socket, timeout=120)
        try:
            conn.request(
                "POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status == 201:
                with lock:
                    created.append(json.loads(answer)["Id"])
            return resp.status
        finally:
            conn.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            futures = [pool.submit(create, i) for i in range(100)]
            wait_for(lambda: line_count(marker) == 1, 30, "the recipe to start")
            wait_for(
                lambda: json.loads(_status(proxy))["waiters"] == 100, 30, "100 waiting creates"
            )
            release.touch()
            statuses = [f.result(timeout=120) for f in futures]
        assert statuses == [201] * 100
        assert line_count(marker) == 1
        assert containers(dockerd) - before == set(created) and len(created) == 100
        back_to(proxy, baseline, "100 creates during one heal")
    finally:
        if created:
            docker(["rm", "-f", *created], env=dockerd.env, check=False)


def _status(proxy: Proxy) -> bytes:
    conn = UnixHTTPConnection(proxy.socket, timeout=10)
    try:
        conn.request("GET", "/_heal/status")
        return conn.getresponse().read()
    finally:
        conn.close()


def test_sigterm_during_a_heal(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path, busybox: str
) -> None:
    image = "127.0.0.1:1/dhp/faults-term:1"
    marker = tmp_path / "marker"
    pidfile = tmp_path / "recipe.pid"
    script = tagging_script(
        tmp_path / "recipe.sh",
        marker,
        busybox,
        image,
        extra=f'echo $$ > "{pidfile}"\nsleep 600\n',
    )
    proxy = make_proxy(recipe_config(tmp_path, image, script, 'shutdown_timeout = "2s"'))
    remove(dockerd.env, image)
    before = containers(dockerd)
    body = json.dumps({"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    outcome: list[object] = []

    def create() -> None:
        conn = UnixHTTPConnection(proxy.socket, timeout=60)
        try:
            conn.request(
                "POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            outcome.append((resp.status, resp.read()))
        except (OSError, Exception) as exc:  # the proxy went away: that is the point
            outcome.append(exc)
        finally:
            conn.close()

    client = threading.Thread(target=create)
    client.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the recipe to start")
    recipe_pid = int(pidfile.read_text())
    started = time.monotonic()
    assert proxy.stop(signal.SIGTERM, timeout=30) == 0, proxy.log()[-3000:]
    assert time.monotonic() - started < 15, "shutdown waited far past shutdown_timeout"
    client.join(30)
    assert not client.is_alive() and outcome
    assert not isinstance(outcome[0], tuple) or outcome[0][0] != 201, outcome
    wait_for(lambda: not os.path.exists(f"/proc/{recipe_pid}"), 10, "the recipe to be killed")
    assert containers(dockerd) == before  # the create was not replayed
    assert not image_exists(dockerd.env, image)
    assert not os.path.exists(proxy.socket)


def _forget_containerd(root: Path) -> None:
    """What a crashed daemon leaves: its containerd's pid file and sockets, stale.

    dockerd 20.10 restarted on them waits for a containerd that is not there;
    a host's reboot or its service manager clears them, so the test does too.
    """
    state = root / "x" / "containerd"
    for name in (
        "containerd.pid",
        "containerd.sock",
        "containerd.sock.ttrpc",
        "containerd-debug.sock",
    ):
        (state / name).unlink(missing_ok=True)


def _unmount_under(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _open_stream(path: str, request: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"no answer to {request[:60]!r}"
        head += chunk
    assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")), head
    return sock


def _ends(sock: socket.socket) -> bool:
    """Read until EOF (a reset counts): the stream ended rather than hung."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_dockerd_killed_and_restarted_mid_streams_and_heal(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A daemon of its own: the session's must not die under other tests."""
    root = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
    daemon = Dockerd.start(root, dockerd.release)
    proxy: Proxy | None = None
    try:
        build_busybox(daemon.env)
        image = "127.0.0.1:1/dhp/faults-restart:1"
        marker = tmp_path / "marker"
        release = tmp_path / "release"
        script = gated_tagging_script(tmp_path / "recipe.sh", marker, BUSYBOX, image, release)
        proxy = start_proxy(
            tmp_path / "proxy", daemon.socket, config=recipe_config(tmp_path, image, script)
        )
        cat = docker(["run", "-d", "-i", "--network=none", BUSYBOX, "cat"], env=daemon.env)
        cid = cat.stdout.decode().strip()
        before = containers(daemon)
        baseline = usage(proxy)
        get = "GET {} HTTP/1.1\r\nHost: d\r\n\r\n".format
        streams = [
            _open_stream(proxy.socket, get("/v1.41/events").encode()),
            _open_stream(
                proxy.socket, get(f"/v1.41/containers/{cid}/logs?follow=1&stdout=1").encode()
            ),
            _open_stream(
                proxy.socket,
                f"POST /v1.41/containers/{cid}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                "Host: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode(),
            ),
        ]
        streams[2].sendall(b"hello\n")
        echoed = b""
        while b"hello" not in echoed:
            echoed += streams[2].recv(65536)
        body = json.dumps({"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
        outcome: list[tuple[int, bytes]] = []

        def create() -> None:
            conn = UnixHTTPConnection(proxy.socket, timeout=120)  # type: ignore[union-attr]
            try:
                conn.request(
                    "POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                outcome.append((resp.status, resp.read()))
            finally:
                conn.close()

        client = threading.Thread(target=create)
        client.start()
        wait_for(lambda: line_count(marker) == 1, 30, "the recipe to start")

        daemon.proc.kill()
        daemon.proc.wait(30)
        _forget_containerd(root)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            ended = [pool.submit(_ends, s) for s in streams]
            assert all(f.result(timeout=20) for f in ended), "a stream outlived its daemon"
        for s in streams:
            s.close()
        assert client.is_alive(), "the create waits for its heal, not for the daemon"

        daemon = Dockerd.start(root, dockerd.release)
        release.touch()
        client.join(60)
        assert outcome and outcome[0][0] == 201, (outcome, proxy.log()[-4000:])
        created = json.loads(outcome[0][1])["Id"]
        assert containers(daemon) == before | {created}  # nothing else, no second create
        docker(["rm", "-f", created, cid], env=daemon.env)
        back_to(proxy, baseline, "a daemon restart under streams and a heal")
    finally:
        if proxy is not None:
            proxy.stop()
        daemon.stop()
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
