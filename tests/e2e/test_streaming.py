"""Streaming: bodies flow as they are produced, in both directions, for as long as they last.

A proxy that buffers a response until it ends breaks ``docker logs -f``,
``docker events`` and build progress; one that buffers a request body
breaks ``docker load`` of a big image (or eats the host's memory); one with
an idle timeout silently kills the event stream compose and monitoring tools
keep open for days. So each test here makes the daemon produce something
*after* the client has seen the first part, under the test's control, and
checks it arrives while the stream is still open; big transfers are checked
byte for byte with the proxy's memory sampled throughout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    LongStream,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    docker,
    open_events_with_head,
    wait_for,
)

MiB = 1024 * 1024
RSS_LIMIT = 100 * MiB


# -- helpers ---------------------------------------------------------------------


class Live:
    """A docker CLI process whose output is watched as it is produced."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["docker", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.out = b""
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while data := os.read(fd, 65536):
            with self.changed:
                self.out += data
                self.changed.notify_all()

    def wait_for(self, condition: Callable[[bytes], object], timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: condition(self.out), timeout):
                raise TimeoutError(f"no {what} after {timeout}s; output so far: {self.out!r}")

    def wait_text(self, text: bytes, timeout: float = 30) -> None:
        self.wait_for(lambda out: text in out, timeout, repr(text))

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # docker stats does not end on SIGTERM
            self.proc.wait(10)


@pytest.fixture
def live() -> Iterator[Callable[[list[str], dict[str, str]], Live]]:
    started: list[Live] = []

    def start(args: list[str], env: dict[str, str]) -> Live:
        started.append(Live(args, env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def calling(daemon: Dockerd, marker: str) -> bool:
    """Has dockerd logged a request whose target contains ``marker``?"""
    text = daemon.log_path.read_text(errors="replace")
    return any(marker in line for line in re.findall(r'msg="Calling ([^"]*)"', text))


def vm_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


class RssSampler:
    """The largest VmRSS of a process seen while a block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, vm_kib(self.pid, "VmRSS") * 1024)
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_random(path: Path, size: int, chunk: int = 4 * MiB) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // chunk):
            data = os.urandom(chunk)
            digest.update(data)
            out.write(data)
    return digest.hexdigest()


class _Counted:
    """A pipe read through, counting its bytes."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.pipe.read(n)
        self.size += len(data)
        return data


def saved(tag: str, env: dict[str, str], timeout: float = 300) -> tuple[list[object], int]:
    """``docker save``'s archive as it streams: each entry's name, type, size and
    sha256 of its data, and the archive's length.

    Not one hash of the whole: dockerd 26 stamps some entries (``index.json``,
    the blob folders) with the time of the save, so two saves of one image
    differ in those mtimes and nowhere else.
    """
    proc = subprocess.Popen(
        ["docker", "save", tag], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    stream = _Counted(proc.stdout)
    entries: list[object] = []
    with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
        for entry in archive:
            digest = hashlib.sha256()
            data = archive.extractfile(entry)
            while data is not None and (chunk := data.read(MiB)):
                digest.update(chunk)
            entries.append((entry.name, entry.type, entry.size, digest.hexdigest()))
    while stream.read(MiB):  # the end-of-archive blocks and padding
        pass
    assert proc.wait(timeout) == 0, f"docker save {tag} failed"
    return entries, stream.size


def open_events(path: str, query: str = "") -> socket.socket:
    """A raw ``GET /events`` through ``path``, past its response head."""
    return open_events_with_head(path, query)[0]


def upstream_sockets(pid: int, daemon_socket: str) -> int:
    """How many of the proxy's sockets are connected to the daemon's socket.

    A client-side Unix socket has no name; its peer, the daemon's accepted
    socket, carries the daemon's path. ``ss -x`` gives each socket's inode,
    name and peer inode, and /proc/<pid>/fd says which inodes the proxy holds.
    """
    ours = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    table = subprocess.run(["ss", "-xaH"], capture_output=True, check=True, text=True).stdout
    name: dict[str, str] = {}
    peer: dict[str, str] = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 8:
            name[parts[5]] = parts[4]
            peer[parts[5]] = parts[7]
    return sum(1 for inode in ours if name.get(peer.get(inode, ""), "") == daemon_socket)


# -- no idle or total timeout ------------------------------------------------------


def test_an_idle_events_stream_lives_past_310s(long_events: LongStream) -> None:
    """The stream conftest opens at the start of the session and checks at its end.

    Here: it is a live events stream, a 200, chunked (no length, so no end the
    proxy could wait for) and JSON, with nothing sent yet for its label. The
    fixture's teardown checks that after 310 s of silence it still delivers.
    """
    status, *headers = long_events.head
    assert status == b"HTTP/1.1 200 OK"
    fields = {}
    for line in headers:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    assert fields.get(b"transfer-encoding") == b"chunked", long_events.head
    assert fields.get(b"content-type") == b"application/json", long_events.head
    assert b"content-length" not in fields, long_events.head
    assert long_events.received == b"", "no event can match the stream's label yet"


# -- responses stream live ------------------------------------------------------


def test_docker_events_arrive_live(
    proxy: Proxy, dockerd: Dockerd, busybox: str, live: Callable[..., Live]
) -> None:
    marker = uuid.uuid4().hex
    events = live(
        ["events", "--filter", f"label=dhp-ev={marker}", "--format", "{{.Action}} {{.Actor.ID}}"],
        proxy.env,
    )
    wait_for(lambda: calling(dockerd, marker), 20, "the events request to reach dockerd")
    cid = docker(["create", "--label", f"dhp-ev={marker}", BUSYBOX, "true"], env=dockerd.env)
    container = cid.stdout.decode().strip()
    try:
        events.wait_text(f"create {container}".encode())
        docker(["rm", container], env=dockerd.env)
        events.wait_text(f"destroy {container}".encode())
        assert events.running(), "docker events is a stream; it must not have ended"
    finally:
        docker(["rm", "-f", container], env=dockerd.env, check=False)


def test_docker_logs_follow_arrives_live(
    proxy: Proxy, busybox: str, live: Callable[..., Live]
) -> None:
    """ "one" must reach the client while the container is still waiting to print "two"."""
    name = f"dhp-logs-{uuid.uuid4().hex[:8]}"
    script = "echo one; while [ ! -e /go ]; do sleep 0.05; done; echo two"
    docker(["run", "-d", "--name", name, BUSYBOX, "sh", "-c", script], env=proxy.env)
    try:
        logs = live(["logs", "-f", name], proxy.env)
        logs.wait_text(b"one\n")
        assert b"two" not in logs.out and logs.running()
        docker(["exec", name, "touch", "/go"], env=proxy.env)
        logs.wait_text(b"two\n")
        assert logs.finish() == 0
        assert logs.out == b"one\ntwo\n"
    finally:
        docker(["rm", "-f", name], env=proxy.env)


def test_docker_stats_stream_delivers_samples_live(
    proxy: Proxy, busybox: str, live: Callable[..., Live]
) -> None:
    """The CLI keeps redrawing, and the API stream brings new samples one by one."""
    name = f"dhp-stats-{uuid.uuid4().hex[:8]}"
    docker(["run", "-d", "--name", name, BUSYBOX, "sleep", "120"], env=proxy.env)
    try:
        stats = live(["stats", "--format", "sample {{.Name}} {{.MemUsage}}", name], proxy.env)
        sample = f"sample {name} ".encode()
        stats.wait_for(lambda out: out.count(sample) >= 2, 30, "two stats samples")
        assert stats.running()
        conn = UnixHTTPConnection(proxy.socket)
        conn.request("GET", f"/v1.41/containers/{name}/stats?stream=1")
        response = conn.getresponse()
        assert response.status == 200
        first = json.loads(response.readline())
        second = json.loads(response.readline())
        assert first["read"] != second["read"], "two distinct samples, produced a second apart"
        assert not response.isclosed()
        conn.close()
    finally:
        docker(["rm", "-f", name], env=proxy.env)


def test_build_progress_arrives_live(
    proxy: Proxy, busybox: str, tmp_path: Path, live: Callable[..., Live]
) -> None:
    """A RUN step's first line is shown while the step still runs: the classic
    builder's progress, which is the ``/build`` response itself."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BUSYBOX}\nRUN echo one; while [ ! -e /go ]; do sleep 0.05; done; echo two\n"
    )
    tag = f"127.0.0.1:1/dhp/progress:{uuid.uuid4().hex[:8]}"
    classic = {**proxy.env, "DOCKER_BUILDKIT": "0"}
    build = live(["build", "--no-cache", "-t", tag, str(tmp_path)], classic)
    step: str | None = None
    try:
        build.wait_for(lambda out: b"Running in " in out and b"\none\n" in out, 60, "one")
        match = re.search(rb"Running in (\w+)", build.out)
        assert match is not None
        step = match.group(1).decode()
        assert b"\ntwo\n" not in build.out and build.running()
        docker(["exec", step, "touch", "/go"], env=proxy.env)
        build.wait_text(b"two\n")
        assert build.finish() == 0, build.out
        assert b"Successfully tagged " + tag.encode() in build.out
    finally:
        build.stop()
        if step is not None:  # the build removes it, unless it was cut short
            docker(["rm", "-f", step], env=proxy.env, check=False)
        docker(["rmi", "-f", tag], env=proxy.env, check=False)


# -- big bodies, both ways ----------------------------------------------------------


def test_build_with_a_256mb_context(make_proxy: MakeProxy, busybox: str, tmp_path: Path) -> None:
    """The whole context is streamed to dockerd and arrives intact."""
    proxy = make_proxy()
    digest = write_random(tmp_path / "big.bin", 256 * MiB)
    (tmp_path / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY big.bin /big.bin\n")
    tag = f"127.0.0.1:1/dhp/bigctx:{uuid.uuid4().hex[:8]}"
    try:
        with RssSampler(proxy.proc.pid) as rss:
            docker(["build", "-q", "-t", tag, str(tmp_path)], env=proxy.env, timeout=300)
        (tmp_path / "big.bin").unlink()
        out = docker(["run", "--rm", tag, "sha256sum", "/big.bin"], env=proxy.env).stdout
        assert out.split()[0].decode() == digest
        assert rss.samples > 0 and rss.peak < RSS_LIMIT, f"peak RSS {rss.peak / MiB:.0f} MiB"
    finally:
        docker(["rmi", "-f", tag], env=proxy.env, check=False)


def image_archive(path: Path, tag: str, layer_size: int) -> None:
    """Write a ``docker save``-format archive with one random layer, streaming.

    The layer is a tar of one file, written inside the outer tar as it is
    generated, so neither copy has to exist on its own or in memory.
    """
    chunk = 4 * MiB
    assert layer_size % chunk == 0
    inner = tarfile.TarInfo("big.bin")
    inner.size = layer_size
    inner.mode = 0o644
    inner_head = inner.tobuf(format=tarfile.USTAR_FORMAT)
    layer_len = len(inner_head) + layer_size + 1024  # two zero blocks end the inner tar
    diff = hashlib.sha256()
    with path.open("wb") as out:
        outer = tarfile.TarInfo("layer/layer.tar")
        outer.size = layer_len
        out.write(outer.tobuf(format=tarfile.USTAR_FORMAT))
        diff.update(inner_head)
        out.write(inner_head)
        for _ in range(layer_size // chunk):
            data = os.urandom(chunk)
            diff.update(data)
            out.write(data)
        diff.update(b"\0" * 1024)
        out.write(b"\0" * 1024)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/big.bin"]},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
                "history": [{"created_by": "docker-heal-proxy tests"}],
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
        ).encode()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_load_and_save_of_a_512mb_image(
    make_proxy: MakeProxy, dockerd: Dockerd, tmp_path: Path
) -> None:
    """``docker load`` streams in with flat proxy memory; ``docker save`` comes back
    identical, entry for entry (see ``saved``)."""
    tag = f"127.0.0.1:1/dhp/big:{uuid.uuid4().hex[:8]}"
    archive = tmp_path / "image.tar"
    image_archive(archive, tag, 512 * MiB)
    proxy = make_proxy()
    try:
        with RssSampler(proxy.proc.pid) as load_rss, archive.open("rb") as stdin:
            loaded = subprocess.run(
                ["docker", "load"], env=proxy.env, stdin=stdin, capture_output=True, timeout=300
            )
        archive.unlink()
        assert loaded.returncode == 0, loaded.stderr
        assert f"Loaded image: {tag}".encode() in loaded.stdout
        assert load_rss.samples > 0 and load_rss.peak < RSS_LIMIT, load_rss.peak / MiB
        with RssSampler(proxy.proc.pid) as save_rss:
            through_proxy = saved(tag, proxy.env)
        direct = saved(tag, dockerd.env)
        assert through_proxy == direct
        assert direct[1] > 512 * MiB
        assert save_rss.peak < RSS_LIMIT, save_rss.peak / MiB
        assert vm_kib(proxy.proc.pid, "VmHWM") * 1024 < RSS_LIMIT
    finally:
        docker(["rmi", "-f", tag], env=dockerd.env, check=False)


# -- many streams, and what a disconnect frees --------------------------------------------


def test_110_event_streams_and_a_command_still_goes_through(
    make_proxy: MakeProxy, dockerd: Dockerd, busybox: str
) -> None:
    """No shared pool to starve: the 111th connection is served like the first."""
    proxy = make_proxy()
    streams = [open_events(proxy.socket) for _ in range(110)]
    try:
        assert upstream_sockets(proxy.proc.pid, dockerd.socket) >= 110
        version = docker(["version", "--format", "{{.Server.APIVersion}}"], env=proxy.env)
        assert version.stdout.decode().strip() == dockerd.release.api
    finally:
        for sock in streams:
            sock.close()


def test_closed_streams_free_their_upstream_connections(
    make_proxy: MakeProxy, dockerd: Dockerd
) -> None:
    """A client that goes away takes its daemon connection with it, promptly."""
    proxy = make_proxy()
    pid = proxy.proc.pid

    def count() -> int:
        return upstream_sockets(pid, dockerd.socket)

    # start_proxy's readiness ping went through a daemon connection of its
    # own; wait for the proxy to close it, so the counts below are exact.
    wait_for(lambda: count() == 0, 30, "the readiness ping's upstream connection to close")
    streams = [open_events(proxy.socket) for _ in range(20)]
    try:
        wait_for(lambda: count() == 20, 30, "20 upstream connections")
        for sock in streams[:10]:
            sock.close()
        wait_for(lambda: count() == 10, 30, "10 upstream connections to close")
        for sock in streams[10:]:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        wait_for(lambda: count() == 0, 30, "all upstream connections to close")
    finally:
        for sock in streams:
            sock.close()


def test_a_half_closed_stream_client_ends_its_daemon_stream(
    make_proxy: MakeProxy, dockerd: Dockerd
) -> None:
    """A client that half-closes an endless stream reads it no more: the EOF goes on
    to dockerd, as it would directly, and the daemon connection is freed."""
    proxy = make_proxy()

    def count() -> int:
        return upstream_sockets(proxy.proc.pid, dockerd.socket)

    wait_for(lambda: count() == 0, 30, "the readiness ping's upstream connection to close")
    sock = open_events(proxy.socket)
    try:
        wait_for(lambda: count() == 1, 30, "the stream's upstream connection")
        sock.shutdown(socket.SHUT_WR)
        wait_for(lambda: count() == 0, 30, "dockerd to end the stream and the proxy to let go")
        sock.settimeout(10)
        while sock.recv(65536):
            pass  # what dockerd sent before it ended, then EOF: the stream is over
    finally:
        sock.close()
