"""Healing through the proxy, with the real docker CLI as the unmodified client.

Every test here removes an image a recipe makes and then asks for it the way
a host does (``docker run``, ``docker pull``), because that is the promise:
an unmodified client sees a create that worked, or an error that says why.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import (
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    api_calls,
    build_busybox,
    build_calls,
    command_config,
    docker,
    docker_run,
    image_exists,
    is_build_of,
    line_count,
    log_size,
    remove,
    tagging_script,
    toml_string,
    wait_for,
    write_script,
)


def test_seed_heals_base_then_group_once_for_20_concurrent_runs(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The headline case: a prune took a base and the image FROM it; a burst of
    runs must all start, with each recipe run once and the base first.

    The base is built FROM scratch so the prune can take everything; the
    session busybox image is rebuilt afterwards for the other tests.
    """
    base = "127.0.0.1:1/dhp/seedbase:latest"
    group = "127.0.0.1:1/dhp/seedagent:g1"
    done = "dhp-seed-base-done"
    marker = tmp_path / "base.marker"
    basectx = tmp_path / "basectx"
    basectx.mkdir()
    shutil.copy("/bin/busybox", basectx / "busybox")
    (basectx / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    # The volume listing after the build is a line of its own in dockerd's
    # log: the group build must come after it, i.e. after the base was done.
    script = write_script(
        tmp_path / "build-base.sh",
        f'set -e\necho run >> "{marker}"\ndocker build -q --network=none -t {base} "{basectx}"\n'
        f"docker volume ls -q --filter label={done}\n",
    )
    agentctx = tmp_path / "agentctx"
    agentctx.mkdir()
    (agentctx / "Dockerfile.g1").write_text(f"FROM {base}\nARG GROUP\nLABEL group=$GROUP\n")
    proxy = make_proxy(
        f"""
state_dir = {toml_string(tmp_path / "state")}
[heal]
max_parallel = 2
[[images]]
match = {toml_string(base)}
command = [{toml_string(script)}]
[[images]]
match = "127.0.0.1:1/dhp/seedagent:{{group}}"
[images.build]
context = {toml_string(agentctx)}
dockerfile = "Dockerfile.{{group}}"
args = {{ GROUP = "{{group}}" }}
"""
    )
    try:
        # Made once directly, then lost the way a host loses it.
        docker(["build", "-q", "--network=none", "-t", base, str(basectx)], env=dockerd.env)
        docker(
            ["build", "-q", "-t", group, "-f", str(agentctx / "Dockerfile.g1"), str(agentctx)],
            env=dockerd.env,
        )
        remove(dockerd.env, group, base)
        docker(["image", "prune", "-a", "-f"], env=dockerd.env)
        since = log_size(dockerd.log_path)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: docker_run(group, proxy.env), range(20)))

        for result in results:
            assert result.returncode == 0, result.stderr.decode()
            assert result.stdout.decode().strip() == "ok"
        assert line_count(marker) == 1, "the base recipe ran more than once"
        assert len(build_calls(dockerd, group, since)) == 1, "the group was built more than once"
        calls = api_calls(dockerd, since)
        base_done = [
            i for i, call in enumerate(calls) if done in call.query.get("filters", [""])[0]
        ]
        group_build = [i for i, call in enumerate(calls) if is_build_of(call, group)]
        assert len(base_done) == 1, "the base recipe did not finish once"
        assert base_done[0] < group_build[0], "the group build started before the base was done"
        labels = docker(
            ["image", "inspect", "-f", "{{json .Config.Labels}}", group], env=dockerd.env
        )
        assert b'"group":"g1"' in labels.stdout, "the build arg from the capture was not used"
    finally:
        build_busybox(dockerd.env)


def fail_once(proxy: Proxy, image: str, marker: Path) -> None:
    """The first create of ``image`` runs the broken recipe and says why it failed."""
    first = docker_run(image, proxy.env)
    stderr = first.stderr.decode()
    assert first.returncode == 125, stderr
    assert "boom" in stderr
    assert "exited with status 3" in stderr
    assert "Unable to find image" not in stderr
    assert line_count(marker) == 1


def test_broken_recipe_reports_its_reason_and_cools_down(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A broken build must say why (not "Unable to find image"), and must not
    rerun for every spawn while it is known broken."""
    image = "127.0.0.1:1/dhp/broken:1"
    marker = tmp_path / "marker"
    script = write_script(tmp_path / "recipe.sh", f'echo run >> "{marker}"\necho boom\nexit 3\n')
    # Far longer than the two runs take, however slow the machine.
    proxy = make_proxy(command_config(tmp_path, image, script, failure_cooldown="60s"))
    remove(dockerd.env, image)

    fail_once(proxy, image, marker)

    second = docker_run(image, proxy.env)
    stderr = second.stderr.decode()
    assert second.returncode == 125, stderr
    assert "boom" in stderr, "the cooldown answer must repeat the last failure's reason"
    wait = re.search(r"next try is allowed in (\d+)s", stderr)
    assert wait is not None, stderr
    assert 0 < int(wait.group(1)) <= 60, stderr
    assert "Unable to find image" not in stderr
    assert line_count(marker) == 1, "the broken recipe ran again inside its cooldown"


def test_fixed_recipe_heals_once_the_cooldown_is_over(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A recipe fixed after a failure heals on a create after its cooldown, running once."""
    image = "127.0.0.1:1/dhp/fixed:1"
    marker = tmp_path / "marker"
    script = write_script(tmp_path / "recipe.sh", f'echo run >> "{marker}"\necho boom\nexit 3\n')
    proxy = make_proxy(command_config(tmp_path, image, script, failure_cooldown="2s"))
    remove(dockerd.env, image)

    fail_once(proxy, image, marker)
    tagging_script(script, marker, busybox, image)

    def healed() -> bool:
        attempt = docker_run(image, proxy.env)
        if attempt.returncode != 0:
            # Only the cooldown may refuse it: the fixed recipe must not fail.
            assert "next try is allowed" in attempt.stderr.decode(), attempt.stderr.decode()
            return False
        assert attempt.stdout.decode().strip() == "ok"
        return True

    wait_for(healed, 30, "the fixed recipe to heal after the cooldown")
    assert line_count(marker) == 2, "the fixed recipe should have run exactly once more"


def creates_named(dockerd: Dockerd, name: str, since: int) -> int:
    """How many container creates with ``name`` dockerd handled since ``since``."""
    return sum(
        1
        for call in api_calls(dockerd, since)
        if call.path == "/containers/create" and call.query.get("name") == [name]
    )


def test_client_that_gives_up_does_not_stop_the_heal(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Killing the waiting client must not abandon the rebuild (the next spawn
    wants the image anyway and must find it without a second build), nor
    replay the dead client's create: that container would never start, and
    would hold its name against the client's retry."""
    image = "127.0.0.1:1/dhp/abandoned:1"
    name = "dhp-abandoned"
    marker = tmp_path / "marker"
    release = tmp_path / "release"
    script = tagging_script(
        tmp_path / "recipe.sh",
        marker,
        busybox,
        image,
        extra=f'while [ ! -e "{release}" ]; do sleep 0.05; done\n',
    )
    proxy = make_proxy(command_config(tmp_path, image, script))
    remove(dockerd.env, image)
    docker(["rm", "-f", name], env=dockerd.env, check=False)
    since = log_size(dockerd.log_path)
    argv = ["docker", "run", "--rm", "--network=none", f"--name={name}", image, "echo", "ok"]

    client = subprocess.Popen(
        argv,
        env=proxy.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: line_count(marker) == 1, 20, "the recipe to start")
        assert client.poll() is None, "the client should still be waiting for the heal"
        client.send_signal(signal.SIGKILL)
        client.communicate(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    release.touch()

    wait_for(lambda: image_exists(dockerd.env, image), 30, "the abandoned heal to finish")
    again = subprocess.run(argv, env=proxy.env, capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout.decode().strip() == "ok"
    assert line_count(marker) == 1, "the image was rebuilt although the first heal finished"
    # The killed client's create (answered 404) and the retry's; no replay.
    assert creates_named(dockerd, name, since) == 2, "the dead client's create was replayed"
    left = docker(["ps", "-aq", "--filter", f"name=^{name}$"], env=dockerd.env)
    assert left.stdout.strip() == b""


def test_client_that_half_closes_still_gets_its_container(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Telling a dead client from one that only shut its sending side matters:
    the latter still reads, so its create must be healed and replayed."""
    image = "127.0.0.1:1/dhp/halfclose:1"
    name = "dhp-halfclose"
    release = tmp_path / "release"
    script = tagging_script(
        tmp_path / "recipe.sh",
        tmp_path / "marker",
        busybox,
        image,
        extra=f'while [ ! -e "{release}" ]; do sleep 0.05; done\n',
    )
    proxy = make_proxy(command_config(tmp_path, image, script))
    remove(dockerd.env, image)
    docker(["rm", "-f", name], env=dockerd.env, check=False)
    body = json.dumps({"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    request = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: docker\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(proxy.socket)
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            wait_for(lambda: (tmp_path / "marker").exists(), 20, "the recipe to start")
            release.touch()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 201 "), answer
        state = docker(["inspect", "-f", "{{.State.Status}}", name], env=dockerd.env)
        assert state.stdout.strip() == b"created"
    finally:
        release.touch()
        docker(["rm", "-f", name], env=dockerd.env, check=False)


def deep_create(path: str, image: str, depth: int) -> tuple[int, dict[str, object]]:
    """A create whose body nests ``depth`` arrays and objects (the body is one),
    in a key dockerd ignores; the status and the JSON answer."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    body = f'{{"Image": {json.dumps(image)}, "Cmd": ["true"], "XDeep": {inner}}}'
    conn = UnixHTTPConnection(path, timeout=60)
    try:
        conn.request(
            "POST",
            "/v1.41/containers/create",
            body=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_create_nested_as_deep_as_dockerd_reads_is_healed_like_any_other(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Python's json gave up at ~1,000 levels (a 500 and a traceback); dockerd reads
    Go's 10,000. 5,000 deep: healed, then the same answer as direct. One past
    Go's limit: 400 with Go's reason, as current dockerd answers (20.10 said 500)."""
    image = "127.0.0.1:1/dhp/deep:1"
    script = tagging_script(tmp_path / "recipe.sh", tmp_path / "marker", busybox, image)
    proxy = make_proxy(command_config(tmp_path, image, script))
    remove(dockerd.env, image)
    created: list[object] = []
    try:
        status, answer = deep_create(proxy.socket, image, 5_000)
        created.append(answer.get("Id"))
        assert status == 201, answer
        assert line_count(tmp_path / "marker") == 1
        direct_status, direct = deep_create(dockerd.socket, image, 5_000)
        created.append(direct.get("Id"))
        assert (direct_status, sorted(direct)) == (status, sorted(answer))

        too_deep = deep_create(proxy.socket, image, 10_001)
        assert too_deep == (
            400,
            {"message": "invalid JSON: nested deeper than 10000 arrays and objects"},
        )
        assert "exceeded max depth" in str(deep_create(dockerd.socket, image, 10_001)[1])
    finally:
        for container in created:
            if isinstance(container, str):
                docker(["rm", "-f", container], env=dockerd.env, check=False)
        remove(dockerd.env, image)


@pytest.mark.parametrize(
    ("ghost", "managed"),
    [
        ("127.0.0.1:1/ghost:1", "127.0.0.1:1/dhp/other:1"),
        # A capture of '..' or one starting with '-' is no match: unmanaged.
        ("127.0.0.1:1/dhp/app:v..", "127.0.0.1:1/dhp/app:v{x}"),
        ("127.0.0.1:1/dhp/app--rf:latest", "127.0.0.1:1/dhp/app-{x}:latest"),
    ],
)
def test_image_without_recipe_fails_exactly_as_without_the_proxy(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path, ghost: str, managed: str
) -> None:
    """The proxy must be invisible for images it does not manage, even with
    recipes configured (the create is claimed, then forwarded untouched)."""
    script = write_script(tmp_path / "never.sh", f'touch "{tmp_path / "ran"}"\nexit 1\n')
    proxy = make_proxy(command_config(tmp_path, managed, script))
    remove(dockerd.env, ghost)

    direct = docker_run(ghost, dockerd.env)
    proxied = docker_run(ghost, proxy.env)

    assert direct.returncode == 125
    assert proxied.returncode == direct.returncode
    first_line = direct.stderr.decode().splitlines()[0]
    assert first_line == f"Unable to find image '{ghost}' locally"
    assert proxied.stderr.decode().splitlines()[0] == first_line
    assert not (tmp_path / "ran").exists()


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (it can no longer run)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))


def test_recipe_timeout_kills_the_whole_process_group(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A hung build must end at its timeout, children included: a leftover
    child would hold resources (and the output pipe) for ever."""
    image = "127.0.0.1:1/dhp/hung:1"
    pidfile = tmp_path / "child.pid"
    script = write_script(
        tmp_path / "recipe.sh", f'sleep 1000 &\necho $! > "{pidfile}"\necho started\nsleep 1000\n'
    )
    config = command_config(tmp_path, image, script).replace(
        "command = ", 'timeout = "2s"\ncommand = '
    )
    proxy = make_proxy(config)
    remove(dockerd.env, image)

    started = time.monotonic()
    result = docker_run(image, proxy.env)
    elapsed = time.monotonic() - started

    stderr = result.stderr.decode()
    assert result.returncode == 125, stderr
    assert "timed out after 2s" in stderr
    assert "started" in stderr
    assert elapsed < 30
    child = int(pidfile.read_text())
    try:
        wait_for(lambda: process_gone(child), 15, f"the recipe's child {child} to be killed")
    finally:
        if not process_gone(child):
            os.kill(child, signal.SIGKILL)


def test_pull_of_managed_tag_heals_or_says_why(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """``docker pull`` of a tag only a recipe can make must heal it, not ask a
    registry, and a failing recipe must fail the pull with its reason."""
    image = "127.0.0.1:1/dhp/pulled:1"
    marker = tmp_path / "marker"
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, image)
    proxy = make_proxy(command_config(tmp_path, image, script, failure_cooldown="60s"))
    remove(dockerd.env, image)

    pulled = docker(["pull", image], env=proxy.env, check=False)
    output = pulled.stdout.decode()
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert "docker-heal-proxy" in output
    assert "Healed" in output
    assert image_exists(dockerd.env, image)
    assert line_count(marker) == 1

    again = docker(["pull", image], env=proxy.env)
    assert "up to date" in again.stdout.decode()
    assert line_count(marker) == 1, "a pull of a present image must not rebuild it"

    write_script(script, f'echo run >> "{marker}"\necho boom\nexit 1\n')
    remove(dockerd.env, image)
    failed = docker(["pull", image], env=proxy.env, check=False)
    assert failed.returncode != 0
    assert "boom" in failed.stderr.decode()
    assert line_count(marker) == 2


def test_chain_deeper_than_max_parallel_heals_with_explicit_depends_on(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A three-deep chain under ``max_parallel = 1``, asked for at two levels at
    once: a heal waiting on its bases must not hold the only slot, or this
    deadlocks. Each step fails if its base is missing (a tag of, or a build
    FROM, an image under 127.0.0.1:1 cannot pull), so success means order."""
    first, middle, top = (f"127.0.0.1:1/dhp/chain{n}:1" for n in (1, 2, 3))
    markers = {image: tmp_path / f"{n}.marker" for n, image in enumerate((first, top))}
    first_script = tagging_script(tmp_path / "first.sh", markers[first], busybox, first)
    top_script = tagging_script(tmp_path / "top.sh", markers[top], middle, top)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {first}\nLABEL step=middle\n")
    proxy = make_proxy(
        f"""
state_dir = {toml_string(tmp_path / "state")}
[heal]
max_parallel = 1
[[images]]
match = {toml_string(top)}
command = [{toml_string(top_script)}]
depends_on = [{toml_string(middle)}]
[[images]]
match = {toml_string(middle)}
build = {{ context = {toml_string(ctx)} }}
[[images]]
match = {toml_string(first)}
command = [{toml_string(first_script)}]
"""
    )
    remove(dockerd.env, top, middle, first)
    since = log_size(dockerd.log_path)

    wanted = [top, middle] * 4
    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        results = list(pool.map(lambda image: docker_run(image, proxy.env), wanted))

    for result in results:
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().strip() == "ok"
    assert {image: line_count(marker) for image, marker in markers.items()} == {first: 1, top: 1}
    assert len(build_calls(dockerd, middle, since)) == 1
