"""What the daemon tests share: a private dockerd, the proxy process, clients.

Rules:
- Every daemon test talks to a real dockerd started here with its own data
  root, exec root, pidfile and socket, and no network set-up, so it never
  touches the machine's own Docker (if any) and needs no registry.
- The proxy under test is the real program, started as a subprocess the way
  a user starts it; tests point the real docker CLI at it.
- Waits are for conditions (a socket answering, a line appearing), bounded
  by a deadline; never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from releases import Release

from proxy.healing.core.healer import Healer, HealFailed
from proxy.healing.sources.engine import Engine, EngineError
from proxy.recipes.config import Config, parse_config

BUSYBOX = "127.0.0.1:1/dhp/busybox:1"
"""The base test image. Names under 127.0.0.1:1 fail to pull at once here."""


def require(tool: str) -> str:
    """The path of ``tool`` (a name on PATH, or an absolute path), for a test that needs it.

    Missing, the test is skipped on a developer's machine but fails in CI
    (``CI=true``): a green run that never ran the test proves nothing.
    """
    import pytest

    path = tool if os.path.isabs(tool) else shutil.which(tool)
    if path is not None and os.access(path, os.X_OK):
        return path
    reason = f"{tool} is not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI must run this test)")
    pytest.skip(reason)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: a plain, independent client for raw checks."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def ping(path: str) -> bool:
    try:
        conn = UnixHTTPConnection(path, timeout=2)
        conn.request("GET", "/_ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def raw_request(path: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes or stops talking."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


LONG_STREAM_SECONDS = 310
"""Longer than any idle or total timeout worth having (5 minutes), plus a margin."""


@dataclass
class LongStream:
    """An events stream through the shared proxy that must outlive every timeout."""

    sock: socket.socket
    opened: float
    label: str
    head: list[bytes]
    received: bytes = field(default=b"")


@dataclass
class Dockerd:
    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    release: Release

    @property
    def socket(self) -> str:
        return str(self.root / "docker.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.url}

    @classmethod
    def start(cls, root: Path, release: Release) -> Dockerd:
        """A dockerd of ``release`` on ``root``; its API version checked against the release's."""
        log_path = root / "dockerd.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            [
                release.dockerd,
                "--debug",
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'x'}",
                f"--pidfile={root / 'dockerd.pid'}",
                f"--host=unix://{root / 'docker.sock'}",
                "--bridge=none",
                "--iptables=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PATH": release.path},
        )
        daemon = cls(root, proc, log_path, release)
        wait_for(lambda: proc.poll() is not None or ping(daemon.socket), 60, "dockerd")
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited: {log_path.read_text()[-2000:]}")
        conn = UnixHTTPConnection(daemon.socket)
        try:
            conn.request("GET", "/version")
            api = json.loads(conn.getresponse().read())["ApiVersion"]
        finally:
            conn.close()
        if api != release.api:  # the header names release.api: it must be true
            daemon.stop()
            raise RuntimeError(f"dockerd {release.name} speaks API {api}, not {release.api}")
        return daemon

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def busybox_context(path: Path) -> Path:
    """A build context FROM scratch with /bin/busybox: an image a prune takes whole.

    Its ``RUN`` needs ``--network=none`` under BuildKit: the daemon has no bridge."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", path / "busybox")
    (path / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    return path


@contextlib.contextmanager
def private_dockerd(prefix: str, release: Release) -> Iterator[Dockerd]:
    """A dockerd of its own (one host) with the busybox base image; gone afterwards."""
    # Short: containerd's sockets live under the exec root, and paths are limited.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    daemon = Dockerd.start(root, release)
    try:
        build_busybox(daemon.env)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def build_busybox(env: Mapping[str, str], tag: str = BUSYBOX) -> str:
    with tempfile.TemporaryDirectory() as ctx:
        context = str(busybox_context(Path(ctx)))
        docker(["build", "-q", "--network=none", "-t", tag, context], env=env)
    return tag


def docker(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """The real docker CLI, as the unmodified client a host would run."""
    result = subprocess.run(
        ["docker", *args],
        env=dict(env),
        input=input,
        capture_output=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}"
        )
    return result


@dataclass
class Proxy:
    socket: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.url}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


MakeProxy = Callable[..., Proxy]
"""The ``make_proxy`` fixture: ``make(config=None, **kwargs)`` -> a started proxy."""
MakeProxyTo = Callable[..., Proxy]
"""The ``make_proxy_to`` fixture: ``make(upstream, config=None, **kwargs)``; no daemon needed."""


def accepting(proxy: Proxy) -> bool:
    """Does the proxy take connections? (A bound socket file alone is not enough:
    the proxy binds before it listens.) Fails at once if the proxy exited."""
    assert proxy.proc.poll() is None, proxy.log()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(proxy.socket)
        except OSError:
            return False
    return True


def start_proxy(
    workdir: Path,
    upstream: str,
    *,
    config: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    launcher: Sequence[str] = ("-m", "proxy"),
    **popen: object,
) -> Proxy:
    """Run ``python -m proxy serve`` as a user would, and wait until it answers.
    ``launcher`` replaces ``-m proxy`` (``tests/privateroot.py FOLDER``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = str(workdir / "proxy.sock")
    argv = [sys.executable, *launcher, "serve", f"--listen=unix://{sock}"]
    argv += [f"--upstream=unix://{upstream}", "--metrics-listen=", "--log-level=debug"]
    if config is not None:
        path = workdir / "config.toml"
        path.write_text(config)
        argv.append(f"--config={path}")
    argv += list(args)
    log_path = workdir / "proxy.log"
    proc = subprocess.Popen(
        argv,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env if env is not None else os.environ),
        **popen,  # type: ignore[arg-type]
    )
    proxy = Proxy(sock, proc, log_path, argv)
    if wait:
        wait_for(
            lambda: proc.poll() is not None or (os.path.exists(sock) and ping(sock)),
            20,
            "the proxy to answer",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited {proc.returncode}: {proxy.log()}")
    return proxy


def open_events_with_head(path: str, query: str = "") -> tuple[socket.socket, list[bytes], bytes]:
    """``open_events``, also returning the head's lines and any bytes after it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(f"GET /v1.41/events{query} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, f"events stream closed in its head: {head!r}"
        head += data
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    head, _, rest = head.partition(b"\r\n\r\n")
    return sock, head.split(b"\r\n"), rest


def label_filter(label: str) -> str:
    import urllib.parse

    return "?filters=" + urllib.parse.quote(json.dumps({"label": [label]}), safe="")


def parse_workers(proxy: Proxy) -> dict[str, int]:
    """The proxy's parse processes, by queue name."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{proxy.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"proxy.healing.core.dockerfileparse" in argv:  # ... MODULE QUEUE USER
                module = argv.index(b"proxy.healing.core.dockerfileparse")
                found[argv[module + 1].decode()] = int(pid)
    return found


def heal_status(proxy: Proxy) -> dict[str, Any]:
    """The proxy's ``GET /_heal/status``, as ``docker-heal-proxy status`` reads it."""
    conn = UnixHTTPConnection(proxy.socket, timeout=10)
    try:
        conn.request("GET", "/_heal/status")
        response = conn.getresponse()
        assert response.status == 200
        return dict(json.loads(response.read()))
    finally:
        conn.close()


def events_lines(resp: http.client.HTTPResponse) -> Iterator[dict[str, object]]:
    while line := resp.readline():
        if line.strip():
            yield json.loads(line)


# -- helpers for the heal end-to-end tests -------------------------------------


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of the proxy's ``/metrics`` on ``port``, or None if it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def heal_settings(tmp_path: Path, **heal: str | int) -> str:
    """The top of a test config: ``state_dir`` in ``tmp_path``, and ``[heal]``."""
    settings = "".join(f"{key} = {json.dumps(value)}\n" for key, value in heal.items())
    return f"""
state_dir = {toml_string(tmp_path / "state")}
[heal]
{settings}"""


def toml_string(value: object) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts) for a path or name."""
    return json.dumps(str(value))


def command_config(tmp_path: Path, image: str, script: Path, **heal: str | int) -> str:
    """A config whose one recipe runs ``script`` to make ``image``; ``heal`` is ``[heal]``."""
    return f"""{heal_settings(tmp_path, **heal)}
[[images]]
match = {toml_string(image)}
command = [{toml_string(script)}]
"""


def write_script(path: Path, body: str) -> Path:
    """An executable ``/bin/sh`` script, for ``command`` recipes that tests control."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def line_count(path: Path) -> int:
    """Lines in a marker file a recipe appends to; 0 when it was never written."""
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def log_size(path: Path) -> int:
    """Where a log ends now, so a test can look only at what comes after."""
    return path.stat().st_size


@dataclass(frozen=True)
class ApiCall:
    """One request dockerd's debug log says it handled."""

    method: str
    path: str
    """Without the ``/vX.Y`` prefix."""
    query: dict[str, list[str]]


def api_calls(daemon: Dockerd, since: int = 0) -> list[ApiCall]:
    """The requests dockerd handled after byte ``since`` of its log, in order.

    Queries are parsed rather than searched, since the docker CLI encodes
    ``:`` and ``/`` in a tag and other clients may not.
    """
    import re
    import urllib.parse

    with daemon.log_path.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    found = []
    for line in text.splitlines():
        call = re.search(r'msg="Calling ([A-Z]+) (/[^ "]*)"', line)
        if call is None:
            continue
        url = urllib.parse.urlsplit(call.group(2))
        path = re.sub(r"^/v[0-9.]+", "", url.path)
        found.append(ApiCall(call.group(1), path, urllib.parse.parse_qs(url.query)))
    return found


def is_build_of(call: ApiCall, tag: str) -> bool:
    return call.method == "POST" and call.path == "/build" and tag in call.query.get("t", [])


def build_calls(daemon: Dockerd, tag: str, since: int = 0) -> list[ApiCall]:
    """The image builds (``POST /build``) dockerd was asked for with ``t=tag``."""
    return [call for call in api_calls(daemon, since) if is_build_of(call, tag)]


def image_exists(env: Mapping[str, str], image: str) -> bool:
    return docker(["image", "inspect", image], env=env, check=False).returncode == 0


def remove(env: Mapping[str, str], *images: str) -> None:
    """Remove ``images`` from the daemon ``env`` points at, and check they are gone."""
    for image in images:
        docker(["rmi", "-f", image], env=env, check=False)
        assert not image_exists(env, image)


def tagging_script(path: Path, marker: Path, source: str, image: str, extra: str = "") -> Path:
    """A recipe that counts its runs in ``marker`` and makes ``image`` from ``source``."""
    return write_script(path, f'echo run >> "{marker}"\n{extra}docker tag {source} {image}\n')


def gated_tagging_script(path: Path, marker: Path, source: str, image: str, gate: Path) -> Path:
    """``tagging_script`` that waits for the file ``gate`` first: a heal held open."""
    extra = f'while [ ! -e "{gate}" ]; do sleep 0.05; done\n'
    return tagging_script(path, marker, source, image, extra=extra)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a local registry (Debian's docker-registry) ----------------------------------


@dataclass
class Registry:
    host: str
    proc: subprocess.Popen[bytes]
    log_path: Path


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 401
    except OSError:
        return False


def write_htpasswd(folder: Path, user: str, password: str) -> Path:
    """An htpasswd file (bcrypt, as the registry requires) for one user."""
    path = folder / "htpasswd"
    line = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True
    ).stdout
    path.write_bytes(line)
    return path


def start_registry(folder: Path, htpasswd: Path | None) -> Registry:
    """Debian's ``docker-registry`` on a free loopback port, open or behind htpasswd.

    127.0.0.0/8 is an insecure registry to dockerd by default, so plain HTTP works.
    """
    folder.mkdir(parents=True)
    port = free_port()
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log_path = folder / "registry.log"
    proc = subprocess.Popen(
        ["/usr/bin/docker-registry", "serve", str(config)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v2/"
    wait_for(lambda: proc.poll() is not None or answers(url), 20, "the registry")
    if proc.poll() is not None:
        raise RuntimeError(f"registry exited: {log_path.read_text()[-2000:]}")
    return Registry(f"127.0.0.1:{port}", proc, log_path)


@contextlib.contextmanager
def running_registry(folder: Path, login: tuple[str, str] | None = None) -> Iterator[Registry]:
    """A registry in ``folder`` for the length of a block, open or with one ``login``."""
    htpasswd = None if login is None else write_htpasswd(folder, *login)
    registry = start_registry(folder / "registry", htpasswd)
    try:
        yield registry
    finally:
        registry.proc.terminate()
        try:
            registry.proc.wait(10)
        except subprocess.TimeoutExpired:
            registry.proc.kill()
            registry.proc.wait()


def log_problems(text: str) -> list[str]:
    """Lines of a proxy log that mean a bug rather than a failed heal: tracebacks
    and asyncio's reports of exceptions or tasks nobody waited for."""
    signs = ("Traceback", "exception was never retrieved", "Task was destroyed", "Unhandled")
    return [line for line in text.splitlines() if any(sign in line for sign in signs)]


def docker_run(image: str, env: Mapping[str, str], *cmd: str) -> subprocess.CompletedProcess[bytes]:
    """``docker run --rm`` as a host would; no network, since the daemon has no bridge."""
    return docker(
        ["run", "--rm", "--network=none", image, *(cmd or ("echo", "ok"))], env=env, check=False
    )


REPO = Path(__file__).resolve().parents[1]
PYTHON_M_PROXY = (sys.executable, "-m", "proxy")


def proxy_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``docker-heal-proxy ARGS`` as a person runs it (``check``, ``heal``, ``status``)."""
    return subprocess.run(
        [*PYTHON_M_PROXY, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env=dict(env if env is not None else os.environ),
    )


class FakeDaemon:
    """A socket server in dockerd's place, for faults the real one cannot show.

    It accepts on a thread and hands each connection to ``serve`` on a thread
    of its own. Subclasses set their own state before calling ``__init__``,
    since connections may arrive as soon as it returns.
    """

    def __init__(self, path: str, backlog: int = 64) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(backlog)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class SilentDaemon(FakeDaemon):
    """Accepts, reads whatever comes, never answers: a wedged dockerd."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass


REFUSED = [
    ('listen = "/run/x.sock"\n', "listen: must be a unix:///absolute/path URL, not '/run/x.sock'"),
    (
        'upstream = "tcp://127.0.0.1:2375"\n',
        "upstream: must be a unix:///absolute/path URL, not 'tcp://127.0.0.1:2375'",
    ),
    ('[metrics]\nlisten = "127.0.0.1"\n', "metrics.listen: must be HOST:PORT, not '127.0.0.1'"),
    (
        'socket_group = "dhp-no-such-group"\n',
        "socket_group 'dhp-no-such-group' is not a group on this machine",
    ),
    (
        '[security]\nparse_user = "root"\n',
        "[security] parse_user 'root' has uid 0: the Dockerfile parser would stay root; "
        'name an unprivileged user (the default is "nobody")',
    ),
    (
        '[audit]\npath = "audit.jsonl"\n',
        "[audit] path must be an absolute file path or \"journal\", not 'audit.jsonl'",
    ),
    (
        '[[listeners]]\nname = "ci"\nlisten = "unix:///tmp/dhp-ci.sock"\npolicy = "runer"\n',
        "listeners.ci.policy: no policy 'runer' (known: autoheal, discovery, full, readonly, "
        "runner, watchtower)",
    ),
    (
        '[policies.ci]\nextends = "nope"\n',
        'policies.ci.extends: no policy "nope"',
    ),
]
"""Configs ``check``, ``serve`` and a reload all refuse, with the reason given."""

SELF_LOOP = (
    'listen = "unix:///tmp/dhp-self.sock"\nupstream = "unix:///tmp/dhp-self.sock"\n',
    "upstream /tmp/dhp-self.sock is the proxy's own socket",
)


# -- a healer without a daemon ---------------------------------------------------


IMAGE_A = "127.0.0.1:1/a:1"


@functools.cache
def tags_sharing_a_short_hash(digits: int = 8) -> tuple[str, str]:
    """Two tags whose file names agree but for the hash, and whose SHA-256
    agrees in its first ``digits`` hex digits: what a caller of the socket can
    find against a victim's tag when names carry a short hash. Both are longer
    than the readable part keeps, so with 8 digits their names were one."""
    prefix = "example.com/" + "a" * 100 + ":"
    seen: dict[str, str] = {}
    n = 0
    while True:
        tag = f"{prefix}{n}"
        short = hashlib.sha256(tag.encode()).hexdigest()[:digits]
        if short in seen:
            return seen[short], tag
        seen[short] = tag
        n += 1


IMAGE_B = "127.0.0.1:1/b:1"
"""Images the in-memory healer tests heal (a registry that is never asked)."""


class MemoryEngine:
    """Images in a set; a pull of a ref in ``broken`` fails as a registry would."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.images: set[str] = set()
        self.broken = broken or set()
        self.pulls: list[str] = []
        self.call_timeout = 0.0

    async def image_exists(self, ref: str) -> bool:
        return ref in self.images

    async def pull(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pulls.append(ref)
        if ref in self.broken:
            raise EngineError(f"manifest for {ref} not found: manifest unknown", 404)
        self.images.add(ref)

    async def tag(self, source: str, target: str) -> None:
        self.images.add(target)


def heal_config(*entries: dict[str, Any], **heal: Any) -> Config:
    return parse_config({"heal": heal, "images": list(entries)}, base_dir=Path("/cfg"))


def make_healer(cfg: Config, engine: object, state: Path) -> Healer:
    return Healer(cfg, cast(Engine, engine), "/nowhere.sock", state)


def heal_once(healer: Healer, image: str) -> str | None:
    """The failure message of one heal, or None when it worked."""

    async def once() -> None:
        try:
            await asyncio.wait_for(healer.heal(image, trigger="create"), 30)
        finally:
            await healer.parser.aclose()  # their workers belong to this loop
            await healer.planner.aclose()

    try:
        asyncio.run(once())
    except HealFailed as failure:
        return str(failure)
    return None


@dataclass(frozen=True)
class User:
    """A user a test made (``make_user``), to run things as."""

    name: str
    uid: int
    gid: int

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run as this user, with no other groups than its own."""
        return [
            require("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
            *argv,
        ]  # fmt: skip

    def can_write(self, path: Path) -> bool:
        """Whether this user may write ``path``."""
        result = subprocess.run(self.argv("test", "-w", str(path)), timeout=30, check=False)
        return result.returncode == 0


def fds(proxy: Proxy) -> int:
    """The proxy's open descriptors."""
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


def tasks(proxy: Proxy) -> int:
    """The proxy's tasks (the ``debug`` count of ``GET /_heal/status``, private to its socket)."""
    conn = UnixHTTPConnection(proxy.socket, timeout=10)
    try:
        conn.request("GET", "/_heal/status")
        resp = conn.getresponse()
        return int(json.loads(resp.read())["debug"]["tasks"])
    finally:
        conn.close()


def usage(proxy: Proxy) -> tuple[int, int]:
    """Descriptors first (no request of ours open), then tasks (one status request)."""
    return fds(proxy), tasks(proxy)


def back_to(proxy: Proxy, baseline: tuple[int, int], what: str) -> None:
    """The proxy serves, and its descriptors and tasks return to at most ``baseline``."""
    assert ping(proxy.socket), proxy.log()[-3000:]
    last: list[tuple[int, int]] = []

    def settled() -> bool:
        last[:] = [usage(proxy)]
        return last[0][0] <= baseline[0] and last[0][1] <= baseline[1]

    try:
        wait_for(settled, 30, f"fds and tasks back to {baseline} after {what}")
    except TimeoutError:
        fd_list = sorted(
            os.readlink(f"/proc/{proxy.proc.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{proxy.proc.pid}/fd")
        )
        raise AssertionError(
            f"{what}: (fds, tasks) {last[0]} > baseline {baseline}: {fd_list}"
        ) from None


class OneShotServer:
    """A Unix socket that answers each connection with a canned HTTP response."""

    def __init__(self, path: str, response: bytes) -> None:
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.response = response
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.response)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def http_response(status_line: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status_line}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def proc_ids(pid: int, field: str = "Uid") -> list[int]:
    """The real, effective, saved and file-system ids (``Uid`` or ``Gid``) of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(word) for word in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")
