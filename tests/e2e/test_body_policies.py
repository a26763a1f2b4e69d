"""Policies that read a create body as dockerd does, against the real daemon and CLI.

A listener ``ci`` with the policy ``agents`` (``runner`` plus volume creates,
bind mounts only under a folder of the test's): what ``docker run`` may do
works, each way to root on the host is refused with the reason printed by
the CLI, docker-py's ``Mounts`` and local volumes are judged as binds, and
the key tricks of Go's decoder are refused with no container made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker as dockerpy
import pytest
from support import MakeProxy, Proxy, UnixHTTPConnection, docker
from test_listener_policies import NONE, host, listener, names

pytestmark = pytest.mark.usefixtures("docker_cli")

POLICY = """
[policies.agents]
extends = "runner"
allow = ["POST /volumes/create", "GET /volumes/{name}", "DELETE /volumes/{name}"]

[policies.agents.create]
binds_under = ["{agents}"]
"""


@pytest.fixture
def agents() -> Iterator[Path]:
    """The allowed folder, with a subfolder and a symlink out of it to /etc."""
    path = Path(tempfile.mkdtemp(prefix="dhp-agents-", dir="/tmp"))
    (path / "x").mkdir()
    (path / "escape").symlink_to("/etc")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ci(make_proxy: MakeProxy, agents: Path) -> Iterator[tuple[Proxy, dict[str, str]]]:
    folder = Path(tempfile.mkdtemp(prefix="l-", dir="/tmp"))
    folder.chmod(0o755)
    p = make_proxy(listener(folder, "ci", "agents") + POLICY.replace("{agents}", str(agents)))
    yield p, host(folder, "ci")
    shutil.rmtree(folder, ignore_errors=True)


def refused(args: list[str], env: dict[str, str], reason: str) -> None:
    result = docker(args, env=env, check=False)
    said = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, said
    assert f'docker-heal-proxy: listener "ci": policy "agents" refuses {reason}' in said, said


def test_the_cli_runs_what_the_policy_allows_and_prints_each_refusal(
    ci: tuple[Proxy, dict[str, str]], agents: Path, busybox: str
) -> None:
    p, env = ci
    before = names(p.env, f"ancestor={busybox}")
    run = ["run", "--rm", *NONE]
    done = docker([*run, "-v", f"{agents}/x:/w", busybox, "sh", "-c", "echo hi > /w/f"], env=env)
    assert done.returncode == 0 and (agents / "x" / "f").read_text() == "hi\n"
    for extra, reason in [
        (["--privileged"], "privileged containers"),
        (["-v", "/:/host"], f"bind mount / (allowed: {agents})"),
        (["--pid", "host"], "pid namespace host"),
        (["--device", "/dev/null"], "device /dev/null"),
        (["--cap-add", "SYS_ADMIN"], "capability CAP_SYS_ADMIN"),  # the CLI adds CAP_
        (["--security-opt", "seccomp=unconfined"], "security option seccomp=unconfined"),
        (["--security-opt", "systempaths=unconfined"], "MaskedPaths (it unmasks /proc)"),
        (
            ["-v", f"{agents}/escape:/w"],
            f"bind mount {agents}/escape (which resolves to /etc) (allowed: {agents})",
        ),
    ]:
        refused([*run, *extra, busybox, "true"], env, reason)
    refused(["run", "--rm", "--network", "host", busybox, "true"], env, "network mode host")
    assert names(p.env, f"ancestor={busybox}") == before  # nothing refused was created


def test_a_privileged_exec_is_refused(ci: tuple[Proxy, dict[str, str]], busybox: str) -> None:
    p, env = ci
    name = f"dhp-body-{os.getpid()}-{time.monotonic_ns()}"
    docker(["run", "-d", "--name", name, *NONE, busybox, "sleep", "300"], env=env)
    try:
        assert docker(["exec", name, "echo", "in"], env=env).stdout == b"in\n"
        refused(["exec", "--privileged", name, "true"], env, "privileged exec")
    finally:
        docker(["rm", "-f", name], env=p.env)


def test_docker_py_mounts_and_local_bind_volumes_are_judged_as_binds(
    ci: tuple[Proxy, dict[str, str]], agents: Path, busybox: str
) -> None:
    p, env = ci
    client = dockerpy.DockerClient(base_url=env["DOCKER_HOST"])
    full = dockerpy.DockerClient(base_url=p.env["DOCKER_HOST"])
    try:
        mount = dockerpy.types.Mount("/w", "/etc", type="bind")
        with pytest.raises(dockerpy.errors.APIError, match="refuses bind mount /etc"):
            client.containers.create(busybox, "true", mounts=[mount], network_mode="none")
        inside = dockerpy.types.Mount("/w", f"{agents}/x", type="bind")
        made = client.containers.create(busybox, "true", mounts=[inside], network_mode="none")
        made.remove()
        opts = {"type": "none", "o": "bind", "device": "/"}
        with pytest.raises(dockerpy.errors.APIError, match="refuses bind mount /"):
            client.volumes.create("dhp-rootvol", driver="local", driver_opts=opts)
        assert "dhp-rootvol" not in [v.name for v in full.volumes.list()]
        through = dockerpy.types.Mount(
            "/w",
            "dhp-rootvol2",
            type="volume",
            driver_config=dockerpy.types.DriverConfig("local", opts),
        )
        with pytest.raises(dockerpy.errors.APIError, match="refuses bind mount /"):
            client.containers.create(busybox, "true", mounts=[through], network_mode="none")
        assert "dhp-rootvol2" not in [v.name for v in full.volumes.list()]
    finally:
        client.close()
        full.close()


def test_a_folder_a_container_can_write_in_is_no_bind_source(
    ci: tuple[Proxy, dict[str, str]], agents: Path, busybox: str
) -> None:
    """dockerd follows a bind source's symlinks at start, not at create: a container
    the policy lets write in ``x`` swaps ``x/d`` for a symlink to /etc in between."""
    p, env = ci
    (agents / "x" / "d").mkdir()
    name = f"dhp-swap-{os.getpid()}-{time.monotonic_ns()}"
    made = docker(
        ["create", "--name", name, *NONE, "-v", f"{agents}/x/d:/w", busybox, "ls", "/w"],
        env=env,
        check=False,
    )
    try:
        swap = "rm -r /x/d && ln -s /etc /x/d"
        docker(["run", "--rm", *NONE, "-v", f"{agents}/x:/x", busybox, "sh", "-c", swap], env=env)
        if made.returncode == 0:
            started = docker(["start", "-a", name], env=env, check=False)
            assert b"passwd" not in started.stdout, "the host's /etc was mounted"
        said = (made.stdout + made.stderr).decode()
        assert made.returncode != 0 and f"refuses bind mount {agents}/x/d (only " in said, said
        refused(
            ["run", "--rm", *NONE, "-v", f"{agents}:/w", busybox, "true"],
            env,
            f"bind mount {agents} (only ",
        )
    finally:
        docker(["rm", "-f", name], env=p.env, check=False)


def test_a_volume_device_is_resolved_as_the_kernel_does_not_cleaned_first(
    ci: tuple[Proxy, dict[str, str]], agents: Path, busybox: str
) -> None:
    """dockerd hands a local volume's ``device`` to mount(2) as written: ``x/d/..`` is
    where the symlink ``d`` leads, then up (cleaned first, it was ``x``, allowed)."""
    p, env = ci
    link = "ln -s /etc/ssl /x/d"
    docker(["run", "--rm", *NONE, "-v", f"{agents}/x:/x", busybox, "sh", "-c", link], env=env)
    # A bind source, though, dockerd cleans (path.Clean) before it mounts: x itself.
    up = ["run", "--rm", *NONE, "-v", f"{agents}/x/d/..:/w", busybox, "ls", "/w"]
    assert docker(up, env=env).stdout == b"d\n"
    name = f"dhp-up-{time.monotonic_ns()}"
    opts = {"type": "none", "o": "bind", "device": f"{agents}/x/d/.."}
    body = {"Name": name, "Driver": "local", "DriverOpts": opts}
    try:
        status, message = post(env, "/v1.41/volumes/create", json.dumps(body).encode())
        if status == 201:
            seen = docker(["run", "--rm", *NONE, "-v", f"{name}:/v", busybox, "ls", "/v"], env=env)
            assert b"passwd" not in seen.stdout, "the host's /etc was mounted"
        assert status == 403, message
        assert message.endswith(
            f"refuses bind mount {agents}/x/d/.. (which resolves to /etc) (allowed: {agents})"
        ), message
    finally:
        docker(["volume", "rm", "-f", name], env=p.env, check=False)


def test_a_local_volume_of_the_hosts_proc_is_refused(
    ci: tuple[Proxy, dict[str, str]], busybox: str
) -> None:
    """Mounted by dockerd in its own namespaces, ``type=proc`` is the host's /proc."""
    p, env = ci
    name = f"dhp-proc-{time.monotonic_ns()}"
    proc = {"type": "proc", "device": "proc"}
    body = {"Name": name, "Driver": "local", "DriverOpts": proc}
    status, message = post(env, "/v1.41/volumes/create", json.dumps(body).encode())
    assert status == 403, message
    assert message.endswith("refuses local volume of type 'proc' (allowed: tmpfs, nfs, nfs4, cifs)")
    label = f"dhp-proc-{time.monotonic_ns()}"
    mount = {"Type": "volume", "Source": name, "Target": "/v"}
    mount["VolumeOptions"] = {"DriverConfig": {"Name": "local", "Options": proc}}
    create = {"Image": busybox, "Labels": {label: "1"}, "HostConfig": {"Mounts": [mount]}}
    status, message = post(env, "/v1.41/containers/create", json.dumps(create).encode())
    assert status == 403, message
    assert names(p.env, f"label={label}") == []
    assert docker(["volume", "ls", "-q", "-f", f"name={name}"], env=p.env).stdout == b""


def post(env: dict[str, str], path: str, body: bytes) -> tuple[int, str]:
    conn = UnixHTTPConnection(env["DOCKER_HOST"].removeprefix("unix://"), timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        return resp.status, json.loads(answer).get("message", "") if answer else ""
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("trick", "status"),
    [
        ('"hostconfig":{"Privileged":true}', 403),  # read as dockerd reads it: privileged
        ('"HostConfig":{"Bind\u017f":["/:/host"]}', 400),
        ('"HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"none"}', 400),
        ('"HostConfig":{"privileged":false,"Privileged":true}', 400),
        ('"HostConfig":{"MaskedPaths":[]}', 403),
        ('"Privileged":true', 403),  # the deprecated top-level host fields
    ],
)
def test_key_tricks_are_refused_with_no_container_made(
    ci: tuple[Proxy, dict[str, str]], busybox: str, trick: str, status: int
) -> None:
    p, env = ci
    label = f"dhp-trick-{time.monotonic_ns()}"
    body = f'{{"Image":"{busybox}","Cmd":["true"],"Labels":{{"{label}":"1"}},{trick}}}'
    got, message = post(env, "/v1.41/containers/create", body.encode())
    assert got == status, message
    assert message.startswith('docker-heal-proxy: listener "ci": policy "agents" ')
    assert names(p.env, f"label={label}") == []


def test_a_body_over_the_limit_gets_413_and_nothing_reaches_the_daemon(
    ci: tuple[Proxy, dict[str, str]], busybox: str
) -> None:
    p, env = ci
    label = f"dhp-big-{time.monotonic_ns()}"
    body = json.dumps(
        {"Image": busybox, "Cmd": ["true"], "Labels": {label: "x" * (2 << 20)}}
    ).encode()
    got, message = post(env, "/v1.41/containers/create", body)
    assert got == 413, message
    assert names(p.env, f"label={label}") == []
    # The same body through the full listener is a container: the daemon would have made it.
    status, _ = post(p.env, "/v1.41/containers/create", body)
    assert status == 201
    docker(["rm", "-f", *names(p.env, f"label={label}")], env=p.env)


def test_a_symlink_only_the_daemon_sees_is_followed_in_its_root(
    make_proxy: MakeProxy, agents: Path, busybox: str
) -> None:
    """The proxy's mount namespace hides the folder's content (PrivateTmp does so for
    /tmp): judged in the proxy's own root, the symlink out would not be there at all."""
    folder = Path(tempfile.mkdtemp(prefix="l-", dir="/tmp"))
    try:
        config = listener(folder, "ci", "agents") + POLICY.replace("{agents}", str(agents))
        p = make_proxy(
            config, launcher=(str(Path(__file__).parent.parent / "privateroot.py"), str(agents))
        )
        env = host(folder, "ci")
        seen_by_proxy = Path(f"/proc/{p.proc.pid}/root{agents}")
        assert not (seen_by_proxy / "escape").is_symlink()  # hidden from the proxy
        refused(
            ["run", "--rm", *NONE, "-v", f"{agents}/escape:/w", busybox, "true"],
            env,
            f"bind mount {agents}/escape (which resolves to /etc) (allowed: {agents})",
        )
        docker(["run", "--rm", *NONE, "-v", f"{agents}/x:/w", busybox, "true"], env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
