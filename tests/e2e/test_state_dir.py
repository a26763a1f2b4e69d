"""``state_dir`` as root keeps it: refused when it is not the proxy's alone, and
never reached through a link planted in it (a heal fails with the reason, or
goes on, and the link's target is left as it was)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from support import (
    Dockerd,
    MakeProxy,
    docker,
    line_count,
    proxy_cli,
    remove,
    tagging_script,
    toml_string,
)

IMAGE = "127.0.0.1:1/dhp/statedir:1"


def config_text(tmp_path: Path, busybox: str) -> str:
    script = tagging_script(tmp_path / "recipe.sh", tmp_path / "marker", busybox, IMAGE)
    return (
        f"state_dir = {toml_string(tmp_path / 'state')}\n"
        f"[[images]]\nmatch = {toml_string(IMAGE)}\ncommand = [{toml_string(script)}]\n"
    )


def snapshot(folder: Path) -> list[tuple[str, int, bytes]]:
    """Each entry's name, mode and content: what a planted link must not change."""
    return [(folder.name, stat.S_IMODE(folder.stat().st_mode), b"")] + [
        (p.name, stat.S_IMODE(p.stat().st_mode), p.read_bytes()) for p in sorted(folder.iterdir())
    ]


def test_serve_refuses_a_state_dir_another_user_owns(dockerd: Dockerd, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    config = tmp_path / "config.toml"
    config.write_text(f"state_dir = {toml_string(state)}\n")

    result = proxy_cli(
        "serve",
        f"--config={config}",
        f"--listen=unix://{tmp_path / 'proxy.sock'}",
        f"--upstream={dockerd.url}",
        "--metrics-listen=",
        timeout=30,
    )

    assert result.returncode == 1
    assert result.stderr == (
        f"docker-heal-proxy: state_dir {state}: {state} is owned by uid 65534, "
        "not by this user (uid 0); chown it, or choose another state_dir\n"
    )
    assert not (tmp_path / "proxy.sock").exists()


def test_planted_links_fail_a_heal_with_the_reason_and_leave_their_targets(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    (target / "precious").write_bytes(b"root's own file")
    (target / "precious").chmod(0o644)
    before = snapshot(target)
    proxy = make_proxy(config_text(tmp_path, busybox))
    state = tmp_path / "state"
    for name in ("logs", "spool"):  # made empty at start; planted in their place
        (state / name).rmdir()
        (state / name).symlink_to(target)
    remove(dockerd.env, IMAGE)

    run = docker(["run", "--rm", IMAGE, "true"], env=proxy.env, check=False)

    assert run.returncode != 0
    assert f"{state / 'logs'} is a symbolic link or not what it should be; remove it" in (
        run.stderr.decode()
    )
    assert line_count(tmp_path / "marker") == 0

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox}\n")
    built = docker(["build", "-q", str(context)], env={**proxy.env, "DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0
    assert f"forwarded unhealed: no spool file: {state / 'spool'} is a symbolic link" in (
        proxy.log()
    )
    assert snapshot(target) == before

    (state / "logs").unlink()  # the fix the message names: the heal then works
    again = docker(["run", "--rm", IMAGE, "true"], env=proxy.env, check=False)
    assert again.returncode == 0, again.stderr.decode()
    assert line_count(tmp_path / "marker") == 1
    assert snapshot(target) == before
