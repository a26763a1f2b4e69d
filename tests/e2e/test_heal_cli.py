"""``docker-heal-proxy check`` and ``heal``, run as a person or a cron job runs them.

``check`` is how someone editing the config finds a wrong match or order
before a 3 a.m. create does; ``heal`` is how a host re-seeds images after a
prune without waiting for a spawn. ``heal`` must share the proxy's per-tag
lock, or a cron job and a burst of spawns would build the same tag twice.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    PYTHON_M_PROXY,
    REPO,
    Dockerd,
    MakeProxy,
    Proxy,
    docker,
    gated_tagging_script,
    image_exists,
    line_count,
    proxy_cli,
    remove,
    tagging_script,
    toml_string,
    wait_for,
    write_script,
)

from proxy.service.status import fetch

BASE = "127.0.0.1:1/dhp/clibase:latest"


def chain_config(tmp_path: Path, busybox: str) -> Path:
    """A base made by a script, a template build FROM it, a fixed build FROM it,
    and a script that only says ``depends_on``."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile.g1").write_text(f"FROM {BASE}\nARG GROUP\nLABEL group=$GROUP\n")
    (ctx / "Dockerfile").write_text(f"FROM {BASE}\nLABEL fixed=1\n")
    script = tagging_script(tmp_path / "base.sh", tmp_path / "base.marker", busybox, BASE)
    tool = tagging_script(
        tmp_path / "tool.sh", tmp_path / "tool.marker", busybox, "127.0.0.1:1/dhp/clitool:1"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = {toml_string(BASE)}
command = [{toml_string(script)}]
[[images]]
match = "127.0.0.1:1/dhp/cliagent:{{group}}"
build = {{ context = "ctx", dockerfile = "Dockerfile.{{group}}", args = {{ GROUP = "{{group}}" }} }}
[[images]]
match = "127.0.0.1:1/dhp/clifixed:1"
build = {{ context = "ctx" }}
[[images]]
match = "127.0.0.1:1/dhp/clitool:1"
command = [{toml_string(tool)}]
depends_on = [{toml_string(BASE)}]
"""
    )
    return config


def entry(report: str, index: int) -> str:
    """The block ``check`` prints for ``images[index]``."""
    blocks = report.split("\n\n")
    found = [block for block in blocks if block.startswith(f"images[{index}]")]
    assert len(found) == 1, report
    return found[0]


def test_check_lists_each_recipe_with_its_dependencies(busybox: str, tmp_path: Path) -> None:
    config = chain_config(tmp_path, busybox)

    result = proxy_cli("check", f"--config={config}")

    assert result.returncode == 0, result.stderr
    report = result.stdout
    assert f"config {config}" in report
    assert "4 [[images]] entries" in report
    assert BASE in entry(report, 0)
    assert "command" in entry(report, 0)
    template = entry(report, 1)
    assert "127.0.0.1:1/dhp/cliagent:{group}" in template
    assert "Dockerfile.{group}" in template
    fixed = entry(report, 2)
    assert any(line.split() == ["bases", BASE] for line in fixed.splitlines()), fixed
    tool = entry(report, 3)
    assert any(line.split() == ["depends", "on", BASE] for line in tool.splitlines()), tool


def test_check_image_shows_the_heal_chain_bases_first(busybox: str, tmp_path: Path) -> None:
    config = chain_config(tmp_path, busybox)

    result = proxy_cli("check", f"--config={config}", "127.0.0.1:1/dhp/cliagent:g1")

    assert result.returncode == 0, result.stderr
    report = result.stdout
    assert "matched by images[1]" in report
    assert "group=g1" in report
    assert "Dockerfile.g1" in report
    assert "GROUP=g1" in report
    steps = [line.split() for line in report.splitlines() if line.strip()[:3] in ("1. ", "2. ")]
    assert [step[:2] for step in steps] == [["1.", BASE], ["2.", "127.0.0.1:1/dhp/cliagent:g1"]]

    unmatched = proxy_cli("check", f"--config={config}", "127.0.0.1:1/ghost:1")
    assert unmatched.returncode == 1, "scripts ask check IMAGE whether anything heals IMAGE"
    assert "no recipe matches 127.0.0.1:1/ghost:1" in unmatched.stdout


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[[images]]\nmatch = "a:1"\ncommand = ["true"]\nbogus = 1\n', "images[0]: unknown key"),
        ('[[images]]\nmatch = "a:1"\n', "images[0]: needs exactly one of"),
        ('[heal]\ntimeout = "soon"\n', "heal.timeout: bad duration"),
        (
            '[[images]]\nmatch = "a:1"\ncommand = ["true"]\ndepends_on = ["b:1"]\n',
            "images[0].depends_on[0]: no [[images]] entry matches",
        ),
        ('[[images]]\nmatch = "a:1"\ncommand = ["{x}"]\n', "placeholder {x} in command[0]"),
        ('state_dir = "s"\nheal = = 1\n', "line 2, column"),
    ],
)
def test_check_refuses_a_bad_config_naming_the_key(tmp_path: Path, text: str, where: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)

    result = proxy_cli("check", f"--config={config}")

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert where in lines[0]


def heal_config(tmp_path: Path, entries: dict[str, Path]) -> Path:
    config = tmp_path / "heal.toml"
    body = "".join(
        f"[[images]]\nmatch = {toml_string(image)}\ncommand = [{toml_string(script)}]\n"
        for image, script in entries.items()
    )
    config.write_text(f"state_dir = {toml_string(tmp_path / 'state')}\n{body}")
    return config


def test_heal_command_heals_one_image_and_fails_with_the_reason(
    dockerd: Dockerd, busybox: str, tmp_path: Path
) -> None:
    good, bad = "127.0.0.1:1/dhp/cligood:1", "127.0.0.1:1/dhp/clibad:1"
    marker = tmp_path / "good.marker"
    config = heal_config(
        tmp_path,
        {
            good: tagging_script(tmp_path / "good.sh", marker, busybox, good),
            bad: write_script(tmp_path / "bad.sh", "echo boom\nexit 1\n"),
        },
    )
    remove(dockerd.env, good, bad)
    upstream = f"--upstream={dockerd.url}"
    no_proxy = f"--listen=unix://{tmp_path / 'no-proxy.sock'}"

    healed = proxy_cli("heal", good, f"--config={config}", upstream, no_proxy)
    assert healed.returncode == 0, healed.stderr
    assert image_exists(dockerd.env, good)
    assert line_count(marker) == 1
    assert (
        f"no proxy answers (cannot reach the proxy at {tmp_path / 'no-proxy.sock'}: "
        f"No such file or directory); healing in this process, with the locks in "
        f"{tmp_path / 'state'}" in healed.stderr
    )

    present = proxy_cli("heal", good, f"--config={config}", upstream, no_proxy)
    assert present.returncode == 0, present.stderr
    assert "up to date" in present.stdout
    assert line_count(marker) == 1, "heal rebuilt an image that was there"

    failed = proxy_cli("heal", bad, f"--config={config}", upstream, no_proxy)
    assert failed.returncode == 1
    assert f"cannot heal {bad}" in failed.stderr
    assert "boom" in failed.stderr
    assert not image_exists(dockerd.env, bad)

    unknown = proxy_cli("heal", "127.0.0.1:1/ghost:1", f"--config={config}", upstream, no_proxy)
    assert unknown.returncode == 1
    assert "no recipe matches" in unknown.stderr


def test_heal_all_heals_every_missing_concrete_recipe(
    dockerd: Dockerd, busybox: str, tmp_path: Path
) -> None:
    """``--all`` is the re-seed after a prune: every fixed tag that is missing,
    none that is present, and no template (it names no image)."""
    missing = ["127.0.0.1:1/dhp/cliall:1", "127.0.0.1:1/dhp/cliall:2"]
    present = "127.0.0.1:1/dhp/clipresent:1"
    markers = {name: tmp_path / f"{name}.marker" for name in ("one", "two", "present", "tpl")}
    scripts = {
        missing[0]: tagging_script(tmp_path / "one.sh", markers["one"], busybox, missing[0]),
        missing[1]: tagging_script(tmp_path / "two.sh", markers["two"], busybox, missing[1]),
        present: tagging_script(tmp_path / "p.sh", markers["present"], busybox, present),
        "127.0.0.1:1/dhp/clitpl:{v}": write_script(
            tmp_path / "tpl.sh", f'echo run >> "{markers["tpl"]}"\nexit 1\n'
        ),
    }
    config = heal_config(tmp_path, scripts)
    remove(dockerd.env, *missing)
    docker(["tag", busybox, present], env=dockerd.env)

    result = proxy_cli(
        "heal",
        "--all",
        f"--config={config}",
        f"--upstream={dockerd.url}",
        f"--listen=unix://{tmp_path / 'no-proxy.sock'}",
    )

    assert result.returncode == 0, result.stderr
    for image in missing:
        assert image_exists(dockerd.env, image)
    counts = {name: line_count(path) for name, path in markers.items()}
    assert counts == {"one": 1, "two": 1, "present": 0, "tpl": 0}


def holds_open(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` has a file under ``folder`` open (a lock file)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{folder}/"):
            return True
    return False


def heal_beside_a_spawn(
    proxy: Proxy,
    image: str,
    marker: Path,
    release: Path,
    args: list[str],
    waiting: Callable[[int], bool],
    what: str,
) -> tuple[str, str]:
    """``heal IMAGE ARGS`` while a ``docker run`` through ``proxy`` heals it with
    a recipe held until ``release``: released once ``waiting(pid)`` says the
    shell's heal waits; its stdout and stderr, the spawn having worked."""
    spawn = subprocess.Popen(
        ["docker", "run", "--rm", "--network=none", image, "echo", "ok"],
        env=proxy.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    heal = None
    try:
        wait_for(lambda: line_count(marker) == 1, 20, "the proxy's heal to start")
        heal = subprocess.Popen(
            [*PYTHON_M_PROXY, "heal", image, *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid = heal.pid
        wait_for(lambda: heal.poll() is not None or waiting(pid), 20, what)
        assert heal.poll() is None, heal.communicate()
        release.touch()
        out, err = heal.communicate(timeout=60)
        spawned_out, spawned_err = spawn.communicate(timeout=60)
    finally:
        release.touch()
        for proc in (spawn, heal):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert spawn.returncode == 0, spawned_err.decode()
    assert spawned_out.decode().strip() == "ok"
    assert heal.returncode == 0, err
    return out, err


def test_a_local_heal_waits_for_the_proxys_heal_of_the_same_tag(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A cron ``heal`` that finds no proxy at its socket, during a heal by a
    proxy with the same ``state_dir``, must wait on the shared lock and then
    find the image, not run the recipe a second time."""
    image = "127.0.0.1:1/dhp/clilocked:1"
    marker = tmp_path / "marker"
    release = tmp_path / "release"
    script = gated_tagging_script(tmp_path / "recipe.sh", marker, busybox, image, release)
    state = tmp_path / "state"
    proxy = make_proxy(
        f"""
state_dir = {toml_string(state)}
[[images]]
match = {toml_string(image)}
command = [{toml_string(script)}]
"""
    )
    config = Path(proxy.socket).parent / "config.toml"
    remove(dockerd.env, image)

    out, err = heal_beside_a_spawn(
        proxy,
        image,
        marker,
        release,
        [
            f"--config={config}",
            f"--upstream={dockerd.url}",
            f"--listen=unix://{tmp_path / 'no-proxy.sock'}",
        ],
        lambda pid: holds_open(pid, state / "locks"),
        "the CLI heal to wait on the lock",
    )

    assert "built meanwhile by another process" in err
    assert f"{image}: Image is up to date (built meanwhile by another process)" in out
    assert line_count(marker) == 1, "the CLI reran a recipe the proxy was running"


def test_heal_from_a_shell_runs_in_the_proxy_and_joins_its_heal(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """``heal`` asks the proxy, which joins it to the create's heal of the same
    tag: one recipe run. Its own config names another ``state_dir`` (a user's
    ``~/.local/state``, say), so a heal in its own process would take another
    lock and run the recipe a second time."""
    image = "127.0.0.1:1/dhp/clijoined:1"
    marker = tmp_path / "marker"
    release = tmp_path / "release"
    script = gated_tagging_script(tmp_path / "recipe.sh", marker, busybox, image, release)
    recipe = f"[[images]]\nmatch = {toml_string(image)}\ncommand = [{toml_string(script)}]\n"
    proxy = make_proxy(f"state_dir = {toml_string(tmp_path / 'state')}\n{recipe}")
    elsewhere = tmp_path / "user.toml"
    elsewhere.write_text(f"state_dir = {toml_string(tmp_path / 'user-state')}\n{recipe}")
    remove(dockerd.env, image)

    out, err = heal_beside_a_spawn(
        proxy,
        image,
        marker,
        release,
        [f"--config={elsewhere}", f"--listen={proxy.url}"],
        lambda pid: fetch(proxy.socket).get("waiters") == 2,
        "the shell's heal to wait in the proxy, beside the create",
    )

    assert out == f"{image}: Healed by docker-heal-proxy\n"
    assert "no proxy answers" not in err
    assert line_count(marker) == 1
    assert not (tmp_path / "user-state").exists()

    unknown = proxy_cli("heal", "127.0.0.1:1/ghost:1", f"--listen={proxy.url}")
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "docker-heal-proxy: no recipe matches 127.0.0.1:1/ghost:1\n",
    )
