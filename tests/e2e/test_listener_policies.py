"""Listeners with policies, against the real daemon and the real docker CLI.

Each test starts the proxy with ``[[listeners]]`` of its own beside the
default socket (policy ``full``), and runs the unmodified docker CLI against
them: what a policy allows works end to end, what it refuses fails with the
proxy's message printed by the CLI, and nothing refused reached the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import (
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    User,
    back_to,
    docker,
    ping,
    raw_request,
    require,
    usage,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("docker_cli")

NONE = ["--network", "none"]
"""The test daemon has no bridge."""


def listener(where: Path, name: str, policy: str, extra: str = "") -> str:
    return (
        f'[[listeners]]\nname = "{name}"\nlisten = "unix://{where}/{name}.sock"\n'
        f'policy = "{policy}"\nsocket_mode = "0666"\n{extra}\n'
    )


def host(where: Path, name: str) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{where}/{name}.sock"}


def refused(args: list[str], env: dict[str, str], listener: str, policy: str, route: str) -> str:
    """Run the CLI, which must fail and print the proxy's refusal for ``route``."""
    result = docker(args, env=env, check=False)
    said = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, said
    expected = f'docker-heal-proxy: listener "{listener}": policy "{policy}" does not allow {route}'
    assert expected in said, said
    return said


def names(env: dict[str, str], *filters: str) -> list[str]:
    args = ["ps", "-a", "--format", "{{.Names}}", *(f"--filter={f}" for f in filters)]
    return docker(args, env=env).stdout.decode().split()


@pytest.fixture
def stopped(busybox: str, proxy: Proxy) -> Iterator[str]:
    """A container made through the full listener, removed afterwards."""
    name = f"dhp-l-{os.getpid()}-{time.monotonic_ns()}"
    docker(["create", "--name", name, *NONE, busybox, "true"], env=proxy.env)
    yield name
    docker(["rm", "-f", name], env=proxy.env, check=False)


def test_readonly_reads_and_the_cli_prints_each_refusal(
    make_proxy: MakeProxy, open_folder: Path, stopped: str, busybox: str
) -> None:
    p = make_proxy(listener(open_folder, "ro", "readonly"))
    env = host(open_folder, "ro")
    before = names(p.env)
    assert stopped in names(env)
    inspected = json.loads(docker(["inspect", stopped], env=env).stdout)
    assert inspected[0]["Name"] == f"/{stopped}"
    now = str(int(time.time()))
    docker(["events", "--since", "1", "--until", now], env=env)  # a stream, ended by --until
    refused(
        ["run", "--rm", *NONE, busybox, "true"], env, "ro", "readonly", "POST /containers/create"
    )
    refused(
        ["cp", f"{stopped}:/bin/busybox", "-"],
        env,
        "ro",
        "readonly",
        "GET /containers/{id}/archive",
    )
    refused(["save", busybox], env, "ro", "readonly", "GET /images/get")
    status = UnixHTTPConnection(f"{open_folder}/ro.sock")
    status.request("GET", "/_heal/status")
    assert status.getresponse().status == 403  # the heal's transcripts are no reader's
    assert names(p.env) == before  # nothing was created


def in_pty(args: list[str], env: dict[str, str], typed: bytes, until: bytes) -> bytes:
    """Run ``docker ARGS`` on a terminal, type ``typed`` and read until ``until`` shows."""
    main, side = pty.openpty()
    proc = subprocess.Popen(
        ["docker", *args], env=env, stdin=side, stdout=side, stderr=side, start_new_session=True
    )
    os.close(side)
    seen = b""
    try:
        os.write(main, typed)
        deadline = time.monotonic() + 60
        while until not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
            if ready:
                with contextlib.suppress(OSError):
                    seen += os.read(main, 4096)
        assert proc.wait(60) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return seen


def test_runner_runs_attached_and_execs_and_refuses_the_rest(
    make_proxy: MakeProxy, open_folder: Path, busybox: str, tmp_path: Path
) -> None:
    p = make_proxy(listener(open_folder, "ci", "runner"))
    env = host(open_folder, "ci")
    said = in_pty(
        ["run", "--rm", "-it", *NONE, busybox, "sh", "-c", "read x; echo got-$x"],
        env,
        b"hello\r",
        b"got-hello",
    )
    assert b"got-hello" in said
    name = f"dhp-ci-{os.getpid()}"
    docker(["run", "-d", "--name", name, *NONE, busybox, "sleep", "300"], env=env)
    try:
        assert docker(["exec", name, "echo", "inside"], env=env).stdout == b"inside\n"
        refused(
            ["cp", f"{name}:/bin/busybox", "-"], env, "ci", "runner", "GET /containers/{id}/archive"
        )
        refused(["network", "create", "dhp-nope"], env, "ci", "runner", "POST /networks/create")
        context = tmp_path / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {busybox}\n")
        refused(["build", str(context)], env, "ci", "runner", "")  # whichever call comes first
    finally:
        docker(["rm", "-f", name], env=env)
    assert "dhp-nope" not in docker(["network", "ls"], env=p.env).stdout.decode()


def audit_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_mode_lets_everything_through_and_the_log_says_what_enforce_would_refuse(
    make_proxy: MakeProxy, open_folder: Path, stopped: str, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    config = (
        f'[audit]\npath = "{log}"\n'
        '[policies.watch]\nextends = "runner"\nmode = "audit"\n'
        + listener(open_folder, "ci", "watch")
    )
    p = make_proxy(config)
    env = host(open_folder, "ci")
    copied = docker(["cp", f"{stopped}:/bin/busybox", "-"], env=env).stdout
    assert len(copied) > 100_000  # a tar of the file
    network = f"dhp-audit-{os.getpid()}"
    docker(["network", "create", network], env=env)
    docker(["network", "rm", network], env=p.env)
    wanted = {"GET /containers/{id}/archive", "POST /networks/create"}

    def denied() -> dict[str, dict[str, object]]:
        lines = audit_lines(log)
        return {str(line["route"]): line for line in lines if line["decision"] == "would_deny"}

    def removed() -> list[dict[str, object]]:
        lines = audit_lines(log)
        return [x for x in lines if x["listener"] == "default" and x["method"] == "DELETE"]

    wait_for(lambda: wanted <= set(denied()) and removed(), 10, "the audit lines")
    line = denied()["POST /networks/create"]
    assert (line["listener"], line["policy"], line["mode"], line["status"]) == (
        "ci",
        "watch",
        "audit",
        201,
    )
    assert line["uid"] == os.getuid() and line["exe"] == os.path.realpath(
        shutil.which("docker") or ""
    )
    (gone,) = removed()  # through the default listener: no policy, still on the log
    assert (gone["route"], gone["decision"], gone["policy"]) == (
        "DELETE /networks/{id}",
        "allow",
        "full",
    )


def test_peer_rules_give_a_second_user_its_own_policy_on_roots_socket(
    make_proxy: MakeProxy, open_folder: Path, busybox: str, make_user: Callable[..., User]
) -> None:
    user = make_user()
    rules = f'[[listeners.clients]]\nuids = [{user.uid}]\npolicy = "readonly"\n'
    p = make_proxy(listener(open_folder, "shared", "full", rules))
    env = host(open_folder, "shared")
    config = open_folder / "user-docker-config"
    config.mkdir(mode=0o755)
    user_env = {**env, "DOCKER_CONFIG": str(config), "HOME": str(open_folder)}

    def as_them(*args: str) -> subprocess.CompletedProcess[str]:
        argv = user.argv(shutil.which("docker") or "docker", *args)
        return subprocess.run(argv, env=user_env, capture_output=True, text=True, timeout=120)

    listed = as_them("ps", "-a")
    assert listed.returncode == 0, listed.stderr
    created = as_them("create", *NONE, busybox, "true")
    assert created.returncode != 0
    said = 'listener "shared": policy "readonly" does not allow POST /containers/create'
    assert said in created.stderr, created.stderr
    name = f"dhp-root-{os.getpid()}"
    docker(["create", "--name", name, *NONE, busybox, "true"], env=env)  # root: full
    docker(["rm", name], env=p.env)


def test_two_listeners_through_socket_activation(
    dockerd: Dockerd, open_folder: Path, busybox: str, tmp_path: Path
) -> None:
    activate = require("systemd-socket-activate")
    config = tmp_path / "config.toml"
    config.write_text(listener(open_folder, "ro", "readonly"))
    default = f"{open_folder}/default.sock"
    log = tmp_path / "proxy.log"
    proc = subprocess.Popen(
        [
            activate,
            "-l",
            default,
            "-l",
            f"{open_folder}/ro.sock",
            "--fdname=docker-heal-proxy.socket:ro",
            sys.executable,
            "-m",
            "proxy",
            "serve",
            f"--config={config}",
            f"--upstream=unix://{dockerd.socket}",
            "--metrics-listen=",
            f"--listen=unix://{default}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: ping(default), 30, "the activated default listener")
        name = f"dhp-act-{os.getpid()}"
        docker(
            ["create", "--name", name, *NONE, busybox, "true"],
            env={**os.environ, "DOCKER_HOST": f"unix://{default}"},
        )
        env = host(open_folder, "ro")
        assert name in names(env)
        refused(["rm", name], env, "ro", "readonly", "DELETE /containers/{id}")
        docker(["rm", name], env={**os.environ, "DOCKER_HOST": f"unix://{default}"})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert f"listening on {open_folder}/ro.sock for listener ro (policy readonly)" in text, text
    assert os.path.exists(f"{open_folder}/ro.sock")  # systemd's socket: left in place


def post(path: str, target: str, body: bytes) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("POST", target, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_an_old_api_start_with_a_host_config_is_refused_under_runner(
    make_proxy: MakeProxy, open_folder: Path, stopped: str, proxy: Proxy
) -> None:
    make_proxy(listener(open_folder, "ci", "runner"))
    body = json.dumps({"Privileged": True, "Binds": ["/:/host"]}).encode()
    status, answer = post(f"{open_folder}/ci.sock", f"/v1.23/containers/{stopped}/start", body)
    assert status == 403, answer
    assert "API version 1.23" in json.loads(answer)["message"]
    inspected = json.loads(docker(["inspect", stopped], env=proxy.env).stdout)[0]
    assert not inspected["HostConfig"]["Privileged"]
    assert inspected["HostConfig"]["Binds"] is None
    assert inspected["State"]["StartedAt"].startswith("0001-")  # never started


def test_a_host_network_build_is_refused_where_builds_are_allowed(
    make_proxy: MakeProxy, open_folder: Path
) -> None:
    config = '[policies.builder]\nallow = ["* /_ping", "POST /build"]\n' + listener(
        open_folder, "b", "builder"
    )
    make_proxy(config)
    status, answer = post(f"{open_folder}/b.sock", "/v1.41/build?networkmode=host", b"")
    assert status == 403, answer
    assert json.loads(answer)["message"] == (
        'docker-heal-proxy: listener "b": policy "builder" does not allow '
        "POST /build with networkmode=host"
    )


def test_refusals_leave_no_descriptor_or_task_behind(
    make_proxy: MakeProxy, open_folder: Path
) -> None:
    p = make_proxy(listener(open_folder, "ci", "runner"))
    path = f"{open_folder}/ci.sock"
    baseline = usage(p)
    # A refused upload whose client waits for 100 Continue, one that sends its
    # body anyway and hangs up, the HTTP/2 preface, and a refused hijack.
    raw_request(path, b"PUT /v1.41/containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n"
                b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n", timeout=5)  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(b"PUT /v1.41/containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"x" * 50_000)  # fmt: skip
    answer = raw_request(path, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", timeout=5)
    assert b"HTTP/2" in answer and answer[3] == 4  # a SETTINGS frame, then the GOAWAY
    hijack = raw_request(path, b"POST /v1.41/containers/x/attach/ws HTTP/1.1\r\nHost: d\r\n"
                         b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n", timeout=5)  # fmt: skip
    assert hijack.startswith(b"HTTP/1.1 403 "), hijack
    back_to(p, baseline, "refusals")


def test_the_denials_are_counted_by_route(make_proxy: MakeProxy, open_folder: Path) -> None:
    from support import free_port, metric

    port = free_port()
    p = make_proxy(
        listener(open_folder, "ci", "runner"), args=[f"--metrics-listen=127.0.0.1:{port}"]
    )
    for _ in range(2):
        status, _ = post(f"{open_folder}/ci.sock", "/v1.41/networks/create", b"{}")
        assert status == 403
    route = "POST /networks/create"
    assert (
        metric(
            port,
            "docker_heal_proxy_policy_denials_total",
            listener="ci",
            policy="runner",
            route=route,
        )
        == 2
    )
    assert ping(p.socket)
