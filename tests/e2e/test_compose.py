"""docker-compose as the client: it pulls a missing image before it creates.

Compose (Debian's 1.29, on docker-py) checks the image, finds it missing and
asks for a pull; only then does it create. So for compose the heal has to
happen on the pull, answered in pull progress format, or ``up`` fails
before the create the proxy would otherwise heal on.

The private dockerd has no bridge, so the service uses ``network_mode:
none``; with that compose creates no network of its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import (
    Dockerd,
    MakeProxy,
    docker,
    image_exists,
    line_count,
    require,
    toml_string,
    write_script,
)

COMPOSE = "/usr/bin/docker-compose"


def compose(
    project: str, folder: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [COMPOSE, "-p", project, "-f", str(folder / "docker-compose.yml"), *args],
        env=env,
        cwd=folder,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_compose_up_heals_a_pruned_service_image(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """``docker-compose up`` of a service whose image was pruned must run it."""
    require(COMPOSE)
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
"""
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
        up = compose(project, tmp_path, proxy.env, "up", "--no-build", "--abort-on-container-exit")
        output = up.stdout.decode() + up.stderr.decode()
        assert up.returncode == 0, output
        assert "ok" in up.stdout.decode().split(), output
        assert "Healed by docker-heal-proxy" in output, "compose should heal through its pull"
        assert line_count(marker) == 1
        assert image_exists(dockerd.env, image)
    finally:
        down = compose(project, tmp_path, proxy.env, "down")
    assert down.returncode == 0, down.stderr.decode()
