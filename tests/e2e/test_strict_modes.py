"""Files root runs, held to StrictModes, with a real second user.

Each test makes a non-root user of its own (``useradd``) and shows, with
``setpriv --reuid``, that the user really can write the path in question;
then ``serve``, ``check`` and a reload, all as root, refuse with the path
named. The README's layout (a checkout owned by an app user in the
``docker`` group) is accepted. Users are removed afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    PYTHON_M_PROXY,
    REPO,
    Dockerd,
    MakeProxy,
    User,
    heal_status,
    proxy_cli,
    require,
    toml_string,
    wait_for,
    write_script,
)


@dataclass(frozen=True)
class Layout:
    config: Path
    script: Path
    workdir: Path


def layout(open_folder: Path, how: str) -> Layout:
    """A root-owned config whose one recipe runs ``script`` in ``workdir``; ``how``
    says how the script is run: as ``command[0]`` or handed to ``bash``."""
    workdir = open_folder / "work"
    workdir.mkdir()
    workdir.chmod(0o755)
    script = write_script(workdir / "build.sh", "exit 1\n")
    command = [str(script)] if how == "command[0]" else ["bash", str(script)]
    config = open_folder / "config.toml"
    config.write_text(
        f"state_dir = {toml_string(open_folder / 'state')}\n"
        f'[[images]]\nmatch = "127.0.0.1:1/dhp/trust:1"\n'
        f"command = [{', '.join(map(toml_string, command))}]\n"
        f"workdir = {toml_string(workdir)}\n"
    )
    return Layout(config, script, workdir)


CASES = {
    "config": ("command[0]", lambda lay: lay.config, "the config file"),
    "command[0]": ("command[0]", lambda lay: lay.script, "images[0].command[0]"),
    "bash script": ("bash", lambda lay: lay.script, "the script bash runs"),
    "workdir": ("command[0]", lambda lay: lay.workdir, "images[0].workdir"),
}


def give(path: Path, user: User, way: str) -> None:
    """Let ``user`` write ``path``: as its owner, or through its group."""
    if way == "owner":
        os.chown(path, user.uid, -1)
    else:
        os.chown(path, -1, user.gid)
        path.chmod(path.stat().st_mode | 0o020)


def serve_argv(dockerd: Dockerd, config: Path, listen: Path) -> list[str]:
    return [
        "serve",
        f"--config={config}",
        f"--listen=unix://{listen}",
        f"--upstream=unix://{dockerd.socket}",
        "--metrics-listen=",
    ]


@pytest.mark.parametrize("way", ["owner", "group"])
@pytest.mark.parametrize("case", CASES)
def test_a_path_another_user_can_write_is_refused_by_serve_and_check(
    dockerd: Dockerd, make_user: Callable[..., User], open_folder: Path, case: str, way: str
) -> None:
    how, pick, role = CASES[case]
    lay = layout(open_folder, how)
    assert proxy_cli("check", f"--config={lay.config}").returncode == 0
    user = make_user()
    path = pick(lay)
    give(path, user, way)
    assert user.can_write(path)

    served = proxy_cli(*serve_argv(dockerd, lay.config, open_folder / "p.sock"), timeout=60)
    assert served.returncode == 2, served
    assert served.stdout == ""
    [line] = served.stderr.splitlines()
    assert line.startswith("docker-heal-proxy: root will not run what others can change: ")
    assert f"{path} (" in line and role in line and "; fix: ch" in line
    assert not (open_folder / "p.sock").exists()

    checked = proxy_cli("check", f"--config={lay.config}")
    assert checked.returncode == 2, checked
    refused = [line for line in checked.stdout.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 1 and f"{path} (" in refused[0], checked.stdout


@pytest.mark.parametrize("case", CASES)
def test_a_reload_that_would_trust_another_user_keeps_the_running_config(
    dockerd: Dockerd, make_proxy: MakeProxy, make_user: Callable[..., User], case: str
) -> None:
    how, pick, _ = CASES[case]
    proxy = make_proxy("")  # starts with an empty config next to its socket
    folder = Path(proxy.socket).parent
    folder.chmod(0o755)
    lay = layout(folder, how)  # rewrites the running proxy's config.toml
    user = make_user()
    path = pick(lay)
    give(path, user, "owner")
    assert user.can_write(path)

    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in proxy.log(), 20, "the reload to be refused")
    [line] = [line for line in proxy.log().splitlines() if "reload refused" in line]
    assert "keeping the running config: root will not run what others can change: " in line
    assert f"{path} (" in line
    assert heal_status(proxy)["recipes"] == []  # still the empty config


def readme_config(checkout: Path, state: Path) -> str:
    """The README's example config, pointed at ``checkout`` for ``/opt/nanoclaw``."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- config-example -->\n```toml\n", 1)[1].split("\n```", 1)[0]
    lines = [
        line
        for line in block.splitlines()
        if not line.startswith(("listen", "upstream", "state_dir"))
    ]
    text = "\n".join([f"state_dir = {toml_string(state)}", *lines])
    return text.replace("/opt/nanoclaw", str(checkout)).replace("proactive = true", "")


def test_the_readme_layout_is_accepted(
    dockerd: Dockerd, make_proxy: MakeProxy, make_user: Callable[..., User], open_folder: Path
) -> None:
    """An app checkout owned by the app user, who is in the docker group (root-
    equivalent already), with the files group-writable for the user's own group
    as a umask of 002 leaves them."""
    app = make_user("docker")
    checkout = open_folder / "opt" / "nanoclaw"
    (checkout / "container").mkdir(parents=True)
    (checkout / "data").mkdir()
    script = write_script(checkout / "container" / "build.sh", "exit 1\n")
    for path in (open_folder / "opt", checkout, checkout / "container", checkout / "data", script):
        os.chown(path, app.uid, app.gid)
        path.chmod(path.stat().st_mode | 0o020)
    config = open_folder / "config.toml"
    config.write_text(readme_config(checkout, open_folder / "state"))
    assert app.can_write(script)

    checked = proxy_cli("check", f"--config={config}")
    assert checked.returncode == 0, checked
    assert "refused" not in checked.stdout and "warning" not in checked.stdout
    proxy = make_proxy(config.read_text())
    assert heal_status(proxy)["recipes"][0]["match"] == "nanoclaw-agent-v2-1a2b3c4d:latest"

    # The same checkout, owned by a user outside the docker group, is refused.
    stranger = make_user()
    os.chown(script, stranger.uid, -1)
    refused = proxy_cli("check", f"--config={config}")
    assert refused.returncode == 2
    assert f"refused: {script} (images[0].command[0]) is owned by {stranger.name}" in (
        refused.stdout
    )


def test_check_as_another_user_warns_of_files_neither_root_nor_they_own(
    make_user: Callable[..., User], open_folder: Path
) -> None:
    lay = layout(open_folder, "command[0]")
    owner, runner = make_user(), make_user()
    os.chown(lay.script, owner.uid, -1)
    result = subprocess.run(
        [
            require("setpriv"),
            f"--reuid={runner.uid}",
            f"--regid={runner.gid}",
            "--init-groups",
            *PYTHON_M_PROXY,
            "check",
            f"--config={lay.config}",
            "--upstream=unix:///nonexistent.sock",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(open_folder)},
    )
    assert result.returncode == 0, result
    assert (
        f"warning: {lay.script} (images[0].command[0]) is owned by {owner.name}, "
        f"not root or {runner.name}"
    ) in result.stdout


def test_a_path_folder_another_user_can_write_before_the_program_is_refused(
    dockerd: Dockerd, make_user: Callable[..., User], open_folder: Path
) -> None:
    """``command = ["tool"]`` finds a root-owned ``tool`` in a later PATH folder;
    the user who can write an earlier one could drop a ``tool`` there, and the
    next heal would run theirs as root."""
    early, real = open_folder / "early", open_folder / "real"
    for folder in (early, real):
        folder.mkdir()
        folder.chmod(0o755)
    write_script(real / "tool", "exit 1\n")
    config = open_folder / "config.toml"
    config.write_text(
        f"state_dir = {toml_string(open_folder / 'state')}\n"
        f'[[images]]\nmatch = "127.0.0.1:1/dhp/trust:1"\ncommand = ["tool"]\n'
        f"workdir = {toml_string(open_folder)}\n"
        f"env = {{ PATH = {toml_string(f'{early}:{real}')} }}\n"
    )
    assert proxy_cli("check", f"--config={config}").returncode == 0
    user = make_user()
    os.chown(early, user.uid, -1)
    assert user.can_write(early)

    served = proxy_cli(*serve_argv(dockerd, config, open_folder / "p.sock"), timeout=60)
    assert served.returncode == 2, served
    [line] = served.stderr.splitlines()
    assert line.startswith(
        f"docker-heal-proxy: root will not run what others can change: {early} "
        f"(images[0].command[0], a folder on PATH searched before {real / 'tool'}) "
        f"is owned by {user.name}"
    ), line
    checked = proxy_cli("check", f"--config={config}")
    assert checked.returncode == 2, checked
    assert f"refused: {early} (" in checked.stdout


def test_a_script_not_there_yet_in_a_sticky_folder_is_refused(
    dockerd: Dockerd, make_user: Callable[..., User], open_folder: Path
) -> None:
    """``/tmp`` is sticky: no one may rename root's entries in it, but anyone
    may make one that is not there, here the script the next heal would run."""
    shared = open_folder / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    script = shared / "build.sh"
    config = open_folder / "config.toml"
    config.write_text(
        f"state_dir = {toml_string(open_folder / 'state')}\n"
        f'[[images]]\nmatch = "127.0.0.1:1/dhp/trust:1"\n'
        f"command = [{toml_string(script)}]\nworkdir = {toml_string(open_folder)}\n"
    )
    assert make_user().can_write(shared)
    checked = proxy_cli("check", f"--config={config}")
    assert checked.returncode == 2, checked
    assert (
        f"refused: {shared} (where images[0].command[0], not there yet, would be made) "
        "is writable by every user (mode 1777)"
    ) in checked.stdout
