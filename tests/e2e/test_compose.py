"""Compose as the client: it pulls a missing image before it creates.

Both compose v1 (Debian 12's ``docker-compose`` 1.29, on docker-py) and
compose v2 (``docker compose``, the CLI plugin a user has today) check the
image, find it missing and ask for a pull; only then do they create. So for
compose the heal has to happen on the pull, answered in pull progress
format, or ``up`` fails before the create the proxy would otherwise heal on.

The private dockerd has no bridge, so the service uses ``network_mode:
none``; with that compose creates no network of its own.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import (
    Dockerd,
    MakeProxy,
    docker,
    free_port,
    image_exists,
    line_count,
    metric,
    require,
    toml_string,
    write_script,
)

COMPOSE = "/usr/bin/docker-compose"
CLIENTS = {"v1": (COMPOSE,), "v2": ("docker", "compose")}
"""Each compose, as its command line starts."""


def compose(
    client: str, project: str, folder: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENTS[client], "-p", project, "-f", str(folder / "docker-compose.yml"), *args],
        env=env,
        cwd=folder,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_compose_up_heals_a_pruned_service_image(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path, client: str
) -> None:
    """``docker-compose up`` / ``docker compose up`` of a service whose image
    was pruned must run it, healed on compose's pull."""
    require(CLIENTS[client][0])
    port = free_port()
    image = "127.0.0.1:1/dhp/composed:1"
    marker = tmp_path / "marker"
    script = write_script(
        tmp_path / "recipe.sh", f'echo run >> "{marker}"\ndocker tag {busybox} {image}\n'
    )
    proxy = make_proxy(
        f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = {toml_string(image)}
command = [{toml_string(script)}]
""",
        args=[f"--metrics-listen=127.0.0.1:{port}"],
    )
    (tmp_path / "docker-compose.yml").write_text(
        f"""version: "2.4"
services:
  job:
    image: {image}
    command: echo ok
    network_mode: none
"""
    )
    docker(["rmi", "-f", image], env=dockerd.env, check=False)
    assert not image_exists(dockerd.env, image)
    project = f"dhp{tmp_path.name.lower().replace('_', '')[-20:]}"

    try:
        up = compose(
            client, project, tmp_path, proxy.env, "up", "--no-build", "--abort-on-container-exit"
        )
        output = up.stdout.decode() + up.stderr.decode()
        assert up.returncode == 0, output
        # Each line is the container's name, "|" and what it printed, in colour.
        lines = re.sub(r"\x1b\[[0-9;]*m", "", up.stdout.decode()).splitlines()
        assert "ok" in [line.split("|")[-1].strip() for line in lines], output
        healed = "docker_heal_proxy_heals_total"
        assert metric(port, healed, trigger="pull", result="success", source="recipe") == 1, output
        if client == "v1":  # v2 shows a pull's progress messages only as "Pulled"
            assert "Healed by docker-heal-proxy" in output
        assert line_count(marker) == 1
        assert image_exists(dockerd.env, image)
    finally:
        down = compose(client, project, tmp_path, proxy.env, "down")
    assert down.returncode == 0, down.stderr.decode()
