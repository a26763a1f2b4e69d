"""Proactive heals: a prune straight on the daemon, and the images come back on their own.

No client touches the proxy between the prune and the return of the images:
the prune goes to dockerd's own socket, as a nightly cleanup job's would.
The proxy sees it only through the daemon's image events (or, after a
daemon restart, through the reconcile that follows the reconnect).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support import (
    Dockerd,
    FakeDaemon,
    MakeProxy,
    Proxy,
    api_calls,
    build_busybox,
    build_calls,
    busybox_context,
    command_config,
    docker,
    docker_run,
    free_port,
    heal_status,
    image_exists,
    is_build_of,
    line_count,
    log_problems,
    log_size,
    metric,
    parse_workers,
    ping,
    proxy_cli,
    remove,
    start_proxy,
    tagging_script,
    toml_string,
    wait_for,
    write_script,
)

HEAL_TIME = 120
"""Seconds a test gives a proactive heal: the debounce (5s) plus a busybox build."""


def metrics_args(port: int) -> list[str]:
    return [f"--metrics-listen=127.0.0.1:{port}"]


def heal_lines(proxy: Proxy, image: str) -> list[str]:
    return [line for line in proxy.log().splitlines() if f"heal of {image} started" in line]


def reconciled_after(proxy: Proxy, count: int) -> bool:
    return int(heal_status(proxy)["proactive"]["reconciles"]) > count


def settled(proxy: Proxy) -> bool:
    current = heal_status(proxy)
    return not current["in_progress"] and not current["proactive"]["queued"]


def seed_chain(tmp_path: Path) -> tuple[str, str, Path, str]:
    """The seed's chain: a base made by a script, per-group images FROM it.
    Returns the base, the group image, the base recipe's run marker and the config."""
    base = "127.0.0.1:1/dhp/prbase:latest"
    group = "127.0.0.1:1/dhp/pragent:g1"
    marker = tmp_path / "base.marker"
    basectx = busybox_context(tmp_path / "basectx")
    script = write_script(
        tmp_path / "build-base.sh",
        f'set -e\necho run >> "{marker}"\ndocker build -q -t {base} "{basectx}"\n',
    )
    agentctx = tmp_path / "agentctx"
    agentctx.mkdir()
    (agentctx / "Dockerfile.g1").write_text(f"FROM {base}\nARG GROUP\nLABEL group=$GROUP\n")
    config = f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = {toml_string(base)}
command = [{toml_string(script)}]
[[images]]
match = "127.0.0.1:1/dhp/pragent:{{group}}"
proactive = true
[images.build]
context = {toml_string(agentctx)}
dockerfile = "Dockerfile.{{group}}"
args = {{ GROUP = "{{group}}" }}
"""
    return base, group, marker, config


def test_a_prune_on_the_daemon_brings_the_seed_chain_back_base_first(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    base, group, marker, config = seed_chain(tmp_path)
    port = free_port()
    proxy = make_proxy(config, args=metrics_args(port))
    try:
        remove(dockerd.env, group, base)
        # The first run heals on demand, and so the proxy learns the group exists.
        first = docker_run(group, proxy.env)
        assert first.returncode == 0, first.stderr.decode()
        assert line_count(marker) == 1
        assert heal_status(proxy)["proactive"]["remembered"] == [group]
        since = log_size(dockerd.log_path)
        wait_for(lambda: settled(proxy), 30, "the reconciles after the first heal")
        count = heal_status(proxy)["proactive"]["reconciles"]

        docker(["image", "prune", "-a", "-f"], env=dockerd.env)
        assert not image_exists(dockerd.env, group)

        wait_for(lambda: image_exists(dockerd.env, group), HEAL_TIME, "the group to come back")
        reconciles = [line for line in proxy.log().splitlines() if "reconcile: " in line]
        assert len(reconciles) == 1, "the prune's burst of events led to more than one reconcile"
        assert heal_status(proxy)["proactive"]["reconciles"] == count + 1
        assert image_exists(dockerd.env, base)
        assert line_count(marker) == 2, "the base recipe should have run once more"
        calls = api_calls(dockerd, since)
        base_build = [i for i, call in enumerate(calls) if is_build_of(call, base)]
        group_build = [i for i, call in enumerate(calls) if is_build_of(call, group)]
        assert len(base_build) == len(group_build) == 1
        assert base_build[0] < group_build[0], "the group was built before its base"
        wait_for(lambda: settled(proxy), 30, "the background heals to finish")
        assert metric(port, "docker_heal_proxy_heals_total", trigger="proactive", result="success")

        # The next run through the proxy starts no heal at all.
        since = log_size(dockerd.log_path)
        again = docker_run(group, proxy.env)
        assert again.returncode == 0, again.stderr.decode()
        assert line_count(marker) == 2
        assert build_calls(dockerd, group, since) == []
        assert len(heal_lines(proxy, group)) == 2, "one on demand, one proactive"
    finally:
        build_busybox(dockerd.env)


def static_recipe(tmp_path: Path, image: str, script: Path, **heal: str | int) -> str:
    """A config whose one proactive recipe runs ``script`` to make ``image``."""
    return command_config(tmp_path, image, script, **heal) + "proactive = true\n"


def test_an_unmanaged_delete_heals_nothing_and_a_managed_one_heals_once(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/proactive-static:1"
    other = "127.0.0.1:1/dhp/unmanaged:1"
    marker = tmp_path / "marker"
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, image)
    docker(["tag", busybox, image], env=dockerd.env)
    docker(["tag", busybox, other], env=dockerd.env)
    proxy = make_proxy(static_recipe(tmp_path, image, script))
    wait_for(lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile")
    count = heal_status(proxy)["proactive"]["reconciles"]

    remove(dockerd.env, other)
    wait_for(lambda: reconciled_after(proxy, count), 30, "a reconcile after the unmanaged delete")
    assert line_count(marker) == 0, "an unmanaged delete must heal nothing"

    remove(dockerd.env, image)
    wait_for(lambda: image_exists(dockerd.env, image), HEAL_TIME, "the managed image to return")
    wait_for(lambda: settled(proxy), 30, "the background heal to finish")
    assert line_count(marker) == 1
    assert len(heal_lines(proxy, image)) == 1


def test_a_prune_while_dockerd_restarts_is_healed_after_the_reconnect(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The proxy's stream is down while the image goes: the daemon is stopped,
    started on another socket (same data) to remove the image, stopped, and
    started again where the proxy looks. No event of the removal ever reaches
    the proxy; the reconcile after the reconnect must find it."""
    root = Path(tempfile.mkdtemp(prefix="dhr-", dir="/tmp"))
    daemon = Dockerd.start(root)
    side: Dockerd | None = None
    try:
        build_busybox(daemon.env)
        image = "127.0.0.1:1/dhp/restart:1"
        marker = tmp_path / "marker"
        script = tagging_script(tmp_path / "recipe.sh", marker, "127.0.0.1:1/dhp/busybox:1", image)
        docker(["tag", "127.0.0.1:1/dhp/busybox:1", image], env=daemon.env)
        proxy = start_proxy(
            root / "proxy", daemon.socket, config=static_recipe(tmp_path, image, script)
        )
        try:
            wait_for(
                lambda: heal_status(proxy)["proactive"]["events"]["up"], 30, "the event stream"
            )
            daemon.stop()
            wait_for(
                lambda: not heal_status(proxy)["proactive"]["events"]["up"],
                30,
                "the stream to drop",
            )
            # The same data root behind another socket: the proxy cannot see this.
            side_root = Path(tempfile.mkdtemp(prefix="dhr-", dir="/tmp"))
            (side_root / "data").symlink_to(root / "data")
            side = Dockerd.start(side_root)
            remove(side.env, image)
            side.stop()
            side = None
            shutil.rmtree(side_root, ignore_errors=True)
            daemon = Dockerd.start(root)
            wait_for(lambda: ping(daemon.socket), 30, "dockerd again")

            wait_for(lambda: image_exists(daemon.env, image), HEAL_TIME, "the image to return")
            assert heal_status(proxy)["proactive"]["events"]["up"]
            assert line_count(marker) == 1
            assert "reconcile: 1 managed images missing" in proxy.log()
        finally:
            proxy.stop()
        assert log_problems(proxy.log()) == [], proxy.log()
    finally:
        if side is not None:
            side.stop()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_min_free_holds_proactive_heals_but_not_creates(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/minfree:1"
    marker = tmp_path / "marker"
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, image)
    docker(["tag", busybox, image], env=dockerd.env)
    port = free_port()
    # No real disk is 100% free: proactive heals can never start.
    proxy = make_proxy(
        static_recipe(tmp_path, image, script, min_free="100%"), args=metrics_args(port)
    )
    blocked = {"reason": "min_free"}
    assert metric(port, "docker_heal_proxy_proactive_blocked", **blocked) == 0

    remove(dockerd.env, image)
    wait_for(
        lambda: metric(port, "docker_heal_proxy_proactive_blocked", **blocked) == 1,
        HEAL_TIME,
        "the min_free gauge",
    )
    assert "min_free" in heal_status(proxy)["proactive"]["blocked"]
    assert line_count(marker) == 0 and not image_exists(dockerd.env, image)

    # A create does not wait for disk space: it heals at once.
    run = docker_run(image, proxy.env)
    assert run.returncode == 0, run.stderr.decode()
    assert line_count(marker) == 1
    assert metric(port, "docker_heal_proxy_heals_total", trigger="create", result="success") == 1

    remove(dockerd.env, image)
    count = heal_status(proxy)["proactive"]["reconciles"]
    wait_for(lambda: reconciled_after(proxy, count), HEAL_TIME, "the reconcile after the delete")
    assert line_count(marker) == 1, "a proactive heal ran below min_free"

    config = Path(proxy.socket).parent / "config.toml"
    config.write_text(static_recipe(tmp_path, image, script, min_free="0%"))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: image_exists(dockerd.env, image), HEAL_TIME, "the proactive heal")
    wait_for(lambda: settled(proxy), 30, "the background heal to finish")
    assert line_count(marker) == 2
    assert metric(port, "docker_heal_proxy_heals_total", trigger="proactive", result="success") == 1
    assert metric(port, "docker_heal_proxy_proactive_blocked", **blocked) == 0


def group_config(tmp_path: Path, repository: str, context: Path) -> str:
    """One proactive recipe building ``repository:{group}`` from ``Dockerfile.{group}``."""
    return f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = "{repository}:{{group}}"
proactive = true
build = {{ context = {toml_string(context)}, dockerfile = "Dockerfile.{{group}}" }}
"""


def saved_tags(proxy: Proxy, tmp_path: Path) -> list[str]:
    """The tags a stopped proxy left in its state_dir, in order of use."""
    proxy.stop()
    saved = json.loads((tmp_path / "state" / "remembered-tags.json").read_text())
    return list(saved["last_used"])


def test_a_typo_is_never_remembered_nor_rebuilt(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    good = "127.0.0.1:1/dhp/typo:g1"
    typo = "127.0.0.1:1/dhp/typo:gg1"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile.g1").write_text(f"FROM {busybox}\nLABEL group=g1\n")
    proxy = make_proxy(group_config(tmp_path, "127.0.0.1:1/dhp/typo", ctx))
    remove(dockerd.env, good, typo)
    assert docker_run(good, proxy.env).returncode == 0
    failed = docker_run(typo, proxy.env)
    assert failed.returncode == 125, failed.stderr.decode()
    assert heal_status(proxy)["proactive"]["remembered"] == [good]

    remove(dockerd.env, good)
    wait_for(lambda: image_exists(dockerd.env, good), HEAL_TIME, "the remembered tag to return")
    wait_for(lambda: settled(proxy), 30, "the background heal to finish")
    missing = [line for line in proxy.log().splitlines() if "managed images missing" in line]
    assert missing and all(typo not in line for line in missing), missing
    assert heal_status(proxy)["proactive"]["remembered"] == [good]
    assert saved_tags(proxy, tmp_path) == [good]


class RootElsewhere(FakeDaemon):
    """A daemon whose root folder is not on this machine, as under Docker-in-Docker."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                head += data
            body = json.dumps({"ApiVersion": "1.41", "DockerRootDir": "/nonexistent/docker"})
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
            )


def test_check_says_whether_proactive_applies_and_whether_min_free_can_be_checked(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    def check(upstream: str, image: str) -> str:
        config = tmp_path / "config.toml"
        config.write_text(
            f'upstream = "unix://{upstream}"\n[[images]]\nmatch = "127.0.0.1:1/dhp/c:{{g}}"\n'
            'command = ["true"]\nproactive = true\n'
        )
        result = proxy_cli("check", f"--config={config}", image)
        assert result.returncode == 0, result.stderr
        return result.stdout

    seen = check(dockerd.socket, "127.0.0.1:1/dhp/c:g1")
    assert "proactive: yes, once the proxy has seen 127.0.0.1:1/dhp/c:g1 exist" in seen
    assert "warning" not in seen

    fake = RootElsewhere(str(tmp_path / "fake.sock"))
    try:
        unseen = check(str(tmp_path / "fake.sock"), "127.0.0.1:1/dhp/c:g1")
    finally:
        fake.close()
    assert (
        "warning: the daemon's root folder '/nonexistent/docker' is not visible from the proxy "
        "(rootless or Docker-in-Docker?): [heal] min_free is ignored"
    ) in unseen


def test_check_does_not_hang_on_a_daemon_that_never_answers(tmp_path: Path, silent: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'upstream = "unix://{silent}"\n[[images]]\nmatch = "127.0.0.1:1/dhp/c:1"\n'
        'command = ["true"]\nproactive = true\n'
    )
    started = time.monotonic()
    result = proxy_cli("check", f"--config={config}", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert f"the Docker daemon at {silent} did not answer /info within 5s" in result.stdout
    assert took < 30


def gated_script(path: Path, marker: Path, gate: Path, source: str, image: str) -> Path:
    """A recipe that counts its runs and holds until ``gate`` exists."""
    wait = f'while [ ! -e "{gate}" ]; do sleep 0.05; done\n'
    return tagging_script(path, marker, source, image, extra=wait)


def run_in_background(image: str, proxy: Proxy) -> subprocess.Popen[bytes]:
    """``docker run`` through the proxy, left running while the test looks around."""
    return subprocess.Popen(
        ["docker", "run", "--rm", "--network=none", image, "echo", "ok"],
        env=proxy.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(client: subprocess.Popen[bytes], gate: Path) -> bytes:
    """Open ``gate`` and wait for ``client``; its stdout, having checked it succeeded."""
    try:
        gate.touch()
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == 0, err.decode()
    return out


def running(proxy: Proxy, image: str, phase: str = "running") -> bool:
    """Is a heal of ``image`` under way in ``phase`` (``queued``: waiting for a slot)?"""
    return any(
        heal["image"] == image and heal["phase"] == phase
        for heal in heal_status(proxy)["in_progress"]
    )


def test_a_create_joins_a_running_proactive_heal_and_makes_it_its_own(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/joined:1"
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    script = gated_script(tmp_path / "recipe.sh", marker, gate, busybox, image)
    docker(["tag", busybox, image], env=dockerd.env)
    port = free_port()
    proxy = make_proxy(static_recipe(tmp_path, image, script), args=metrics_args(port))
    wait_for(lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile")

    remove(dockerd.env, image)
    wait_for(lambda: running(proxy, image), HEAL_TIME, "the proactive heal to start")
    client = run_in_background(image, proxy)
    try:
        wait_for(lambda: heal_status(proxy)["waiters"] == 1, 30, "the create to join the heal")
    finally:
        out = finish(client, gate)
    assert out.decode().strip() == "ok"
    assert line_count(marker) == 1, "the create started a second heal"
    heals = "docker_heal_proxy_heals_total"
    assert metric(port, heals, trigger="create", result="success") == 1
    assert metric(port, heals, trigger="proactive", result="success") == 0


def test_a_create_joining_a_proactive_heal_makes_its_bases_heals_its_own_too(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The group's proactive heal waits for its base's; a create for the group
    joins it. Both heals are the create's now, the base's included."""
    base = "127.0.0.1:1/dhp/joinbase:latest"
    group = "127.0.0.1:1/dhp/joinagent:g1"
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    script = gated_script(tmp_path / "base.sh", marker, gate, busybox, base)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile.g1").write_text(f"FROM {base}\nLABEL group=g1\n")
    config = group_config(tmp_path, "127.0.0.1:1/dhp/joinagent", context)
    config += f"[[images]]\nmatch = {toml_string(base)}\ncommand = [{toml_string(script)}]\n"
    config = config.replace("[[images]]", "[heal]\nbackground_parallel = 2\n[[images]]", 1)
    docker(["tag", busybox, base], env=dockerd.env)
    docker(["tag", busybox, group], env=dockerd.env)  # present at start: remembered
    port = free_port()
    proxy = make_proxy(config, args=metrics_args(port))
    wait_for(lambda: heal_status(proxy)["proactive"]["remembered"] == [group], 30, "the group")

    # The base first: a reconcile between the two finds nothing to do, while
    # one finding only the group gone would heal it FROM the base, not the base.
    remove(dockerd.env, base)
    remove(dockerd.env, group)
    wait_for(lambda: running(proxy, base), HEAL_TIME, "the base's proactive heal")
    wait_for(
        lambda: any(heal["image"] == group for heal in heal_status(proxy)["in_progress"]),
        30,
        "the group's proactive heal to wait for its base",
    )
    client = run_in_background(group, proxy)
    try:
        wait_for(lambda: heal_status(proxy)["waiters"] == 1, 30, "the create to join the heal")
    finally:
        finish(client, gate)
    assert line_count(marker) == 1
    heals = "docker_heal_proxy_heals_total"
    for match in (base, "127.0.0.1:1/dhp/joinagent:{group}"):
        assert metric(port, heals, image=match, trigger="create", result="success") == 1, match
        assert metric(port, heals, image=match, trigger="proactive", result="success") == 0, match


def test_with_one_slot_a_background_heal_waits_for_it_to_be_idle(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    busy = "127.0.0.1:1/dhp/slot-busy:1"
    background = "127.0.0.1:1/dhp/slot-background:1"
    busy_marker, gate = tmp_path / "busy.marker", tmp_path / "gate"
    marker = tmp_path / "marker"
    busy_script = gated_script(tmp_path / "busy.sh", busy_marker, gate, busybox, busy)
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, background)
    docker(["tag", busybox, background], env=dockerd.env)
    config = static_recipe(tmp_path, background, script, max_parallel=1)
    config += f"[[images]]\nmatch = {toml_string(busy)}\ncommand = [{toml_string(busy_script)}]\n"
    proxy = make_proxy(config)
    wait_for(lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile")
    remove(dockerd.env, busy)
    client = run_in_background(busy, proxy)
    try:
        wait_for(lambda: running(proxy, busy), 30, "the on-demand heal to hold the slot")
        remove(dockerd.env, background)
        waits = f"proactive heal of {background} waits for a free heal slot"
        wait_for(lambda: waits in proxy.log(), HEAL_TIME, "the background heal to wait")
        assert background in heal_status(proxy)["proactive"]["queued"]
        # Not even queued for the slot: a create arriving now would go first.
        assert all(heal["image"] != background for heal in heal_status(proxy)["in_progress"])
        assert line_count(marker) == 0
    finally:
        finish(client, gate)
    wait_for(lambda: image_exists(dockerd.env, background), HEAL_TIME, "the background heal")
    assert line_count(marker) == 1


def test_with_both_slots_busy_a_later_create_gets_the_next_slot_before_a_background_heal(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """max_parallel = 2, both slots held by on-demand heals, a background heal
    waiting: a create that comes later still gets the first slot that frees."""
    background = "127.0.0.1:1/dhp/two-background:1"
    marker = tmp_path / "marker"
    script = tagging_script(tmp_path / "recipe.sh", marker, busybox, background)
    docker(["tag", busybox, background], env=dockerd.env)
    config = static_recipe(tmp_path, background, script, max_parallel=2)
    gated = {}
    for name in ("busy1", "busy2", "later"):
        image, gate = f"127.0.0.1:1/dhp/two-{name}:1", tmp_path / f"{name}.gate"
        made = gated_script(
            tmp_path / f"{name}.sh", tmp_path / f"{name}.marker", gate, busybox, image
        )
        config += f"[[images]]\nmatch = {toml_string(image)}\ncommand = [{toml_string(made)}]\n"
        gated[name] = (image, gate)
    proxy = make_proxy(config)
    wait_for(lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile")
    remove(dockerd.env, *(image for image, _ in gated.values()))
    clients = {name: run_in_background(gated[name][0], proxy) for name in ("busy1", "busy2")}
    try:
        for image, _ in (gated["busy1"], gated["busy2"]):
            wait_for(lambda image=image: running(proxy, image), 30, f"{image} to hold a slot")
        remove(dockerd.env, background)
        wait_for(
            lambda: background in heal_status(proxy)["proactive"]["queued"], HEAL_TIME, "queued"
        )
        clients["later"] = run_in_background(gated["later"][0], proxy)
        wait_for(
            lambda: running(proxy, gated["later"][0], "queued"), 30, "the later create to wait"
        )
        finish(clients.pop("busy1"), gated["busy1"][1])
        wait_for(lambda: running(proxy, gated["later"][0]), 30, "the later create's heal")
        assert line_count(marker) == 0, "the background heal took the slot a client waited for"
        assert not running(proxy, background)
    finally:
        for name, client in clients.items():
            finish(client, gated[name][1])
    wait_for(lambda: image_exists(dockerd.env, background), HEAL_TIME, "the background heal")
    assert line_count(marker) == 1


def test_tags_present_at_start_are_remembered_and_saved(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    present = "127.0.0.1:1/dhp/atstart:g7"
    docker(["tag", busybox, present], env=dockerd.env)
    try:
        proxy = make_proxy(group_config(tmp_path, "127.0.0.1:1/dhp/atstart", tmp_path))
        wait_for(
            lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile"
        )
        assert heal_status(proxy)["proactive"]["remembered"] == [present]
        assert saved_tags(proxy, tmp_path) == [present]
    finally:
        remove(dockerd.env, present)


def test_a_pull_through_the_proxy_is_a_use_and_a_restart_is_not(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    groups = [f"127.0.0.1:1/dhp/used:g{i}" for i in (1, 2, 3)]
    for group in groups:
        docker(["tag", busybox, group], env=dockerd.env)
    try:
        config = group_config(tmp_path, "127.0.0.1:1/dhp/used", tmp_path)
        proxy = make_proxy(config)
        wait_for(
            lambda: heal_status(proxy)["proactive"]["reconciles"], 30, "the start-up reconcile"
        )
        for group in (groups[1], groups[0]):
            docker(["pull", group], env=proxy.env)
        # Saved in order of use: the two pulled last, the one only present first.
        assert saved_tags(proxy, tmp_path) == [groups[2], groups[1], groups[0]]

        again = make_proxy(config)  # a restart finds all three present: no use
        wait_for(
            lambda: heal_status(again)["proactive"]["reconciles"], 30, "the start-up reconcile"
        )
        assert saved_tags(again, tmp_path) == [groups[2], groups[1], groups[0]]
    finally:
        remove(dockerd.env, *groups)


MODULES_AT_EXIT = """\
import atexit, os, sys


def _record() -> None:
    if "serve" in sys.argv[1:2]:
        with open(os.environ["DHP_MODULES_AT_EXIT"], "w") as out:
            out.write("\\n".join(sorted(sys.modules)))


atexit.register(_record)
"""


def build_chain(tmp_path: Path, busybox: str, depth: int) -> tuple[list[str], str]:
    """Build recipes ``chain0`` FROM ``chain1`` ... FROM busybox; the top one proactive."""
    images = [f"127.0.0.1:1/dhp/chain{level}:1" for level in range(depth)]
    state = toml_string(tmp_path / "state")
    entries = [f"state_dir = {state}", "[heal]", 'reconcile_debounce = "1s"']
    for level, image in enumerate(images):
        base = images[level + 1] if level + 1 < depth else busybox
        context = tmp_path / f"chain{level}"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {base}\nLABEL level={level}\n")
        entries += [
            "[[images]]",
            f"match = {toml_string(image)}",
            f"proactive = {'true' if level == 0 else 'false'}",
            f"build = {{ context = {toml_string(context)} }}",
        ]
    return images, "\n".join(entries) + "\n"


def test_serve_never_loads_the_dockerfile_parser(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A chain healed on demand, then pruned and brought back by a reconcile: every
    Dockerfile was parsed, and never in serve's own process."""
    images, config = build_chain(tmp_path, busybox, 3)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(MODULES_AT_EXIT)
    modules = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": str(hook), "DHP_MODULES_AT_EXIT": str(modules)}
    parser = importlib.util.find_spec("dockerfile")
    assert parser is not None and parser.origin is not None
    library = Path(parser.origin).name
    proxy = make_proxy(config, env=env)
    try:
        result = docker_run(images[0], proxy.env, "true")
        assert result.returncode == 0, result.stderr.decode()
        reconciles = int(heal_status(proxy)["proactive"]["reconciles"])
        remove(dockerd.env, *images)
        wait_for(lambda: reconciled_after(proxy, reconciles), HEAL_TIME, "a reconcile")
        wait_for(lambda: image_exists(dockerd.env, images[0]), HEAL_TIME, "the proactive heal")
        wait_for(lambda: settled(proxy), HEAL_TIME, "the proactive heals to settle")
        assert all(image_exists(dockerd.env, image) for image in images)

        workers = parse_workers(proxy)
        assert set(workers) == {"plans"}, workers  # no client build: no build queue
        assert library in Path(f"/proc/{workers['plans']}/maps").read_text()
        assert library not in Path(f"/proc/{proxy.proc.pid}/maps").read_text()
        assert proxy.stop() == 0
        loaded = modules.read_text().split()
        assert "proxy.healing.core.planner" in loaded  # the record is serve's own
        assert [m for m in loaded if m.split(".")[0] == "dockerfile"] == []
        assert "proxy.recipes.dockerfile" not in loaded
    finally:
        remove(dockerd.env, *images)
