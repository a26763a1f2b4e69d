"""``pull`` and ``load`` recipes: images that come from a registry or an archive.

A real registry (Debian's ``docker-registry``) runs on loopback, once open and
once behind htpasswd, because what matters is what dockerd does with the
proxy's pull: which credentials it sends and what it says when they are
missing. 127.0.0.0/8 is an insecure registry by default, so plain HTTP works.

The sign that the proxy healed (rather than the docker CLI pulling by itself
after a 404) is the absence of "Unable to find image" in the CLI's output.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    Dockerd,
    MakeProxy,
    Proxy,
    Registry,
    docker,
    docker_run,
    image_exists,
    running_registry,
    toml_string,
)

USER, PASSWORD = "healer", "s3cret-pw"


@pytest.fixture(scope="module")
def open_registry(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("open")) as registry:
        yield registry


@pytest.fixture(scope="module")
def auth_registry(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("auth"), (USER, PASSWORD)) as registry:
        yield registry


def docker_config(folder: Path, registry: Registry | None) -> Path:
    """A ``DOCKER_CONFIG`` folder holding ``docker login``'s credentials, or none."""
    folder.mkdir(parents=True, exist_ok=True)
    auths = {}
    if registry is not None:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        auths[registry.host] = {"auth": token}
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return folder


def publish(dockerd: Dockerd, source: str, target: str, config: Path | None = None) -> None:
    """Push ``source`` as ``target`` straight through dockerd, then drop it locally."""
    env = dict(dockerd.env)
    if config is not None:
        env["DOCKER_CONFIG"] = str(config)
    docker(["tag", source, target], env=env)
    docker(["push", target], env=env)
    docker(["rmi", target], env=env)
    assert not image_exists(env, target)


def pull_config(tmp_path: Path, match: str, pull: str = "true") -> str:
    return f"""
state_dir = {toml_string(tmp_path / "state")}
[heal]
failure_cooldown = "1s"
[[images]]
match = {toml_string(match)}
pull = {pull}
"""


def client_env(proxy: Proxy, tmp_path: Path) -> dict[str, str]:
    """The CLI with no credentials of its own: any pull that works is the proxy's."""
    return {**proxy.env, "DOCKER_CONFIG": str(docker_config(tmp_path / "client", None))}


@pytest.fixture
def made(dockerd: Dockerd) -> Iterator[list[str]]:
    """Images a test makes in the session's daemon; removed however the test ends."""
    images: list[str] = []
    try:
        yield images
    finally:
        for image in images:
            docker(["rmi", "-f", image], env=dockerd.env, check=False)


def assert_healed(result: subprocess.CompletedProcess[bytes]) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert result.stdout.decode().strip() == "ok"
    assert "Unable to find image" not in stderr, "the CLI pulled, not the proxy"


def test_pull_recipe_heals_from_an_open_registry(
    dockerd: Dockerd,
    busybox: str,
    open_registry: Registry,
    make_proxy: MakeProxy,
    tmp_path: Path,
    made: list[str],
) -> None:
    """``pull = true``: the tag that was asked for comes back from its registry."""
    image = f"{open_registry.host}/team/worker:1"
    made.append(image)
    publish(dockerd, busybox, image)
    proxy = make_proxy(pull_config(tmp_path, f"{open_registry.host}/team/worker:{{tag}}"))

    assert_healed(docker_run(image, client_env(proxy, tmp_path)))
    assert image_exists(dockerd.env, image)


def test_pull_recipe_with_another_reference_pulls_and_retags(
    dockerd: Dockerd,
    busybox: str,
    open_registry: Registry,
    make_proxy: MakeProxy,
    tmp_path: Path,
    made: list[str],
) -> None:
    """``pull = "other/ref:{tag}"``: the image is pulled under its registry name
    and tagged as the name the client asked for."""
    source = f"{open_registry.host}/team/source:7"
    image = "127.0.0.1:1/dhp/retagged:7"
    made.extend([source, image])
    publish(dockerd, busybox, source)
    docker(["rmi", "-f", image], env=dockerd.env, check=False)
    pull = toml_string(f"{open_registry.host}/team/source:{{tag}}")
    proxy = make_proxy(pull_config(tmp_path, "127.0.0.1:1/dhp/retagged:{tag}", pull))

    assert_healed(docker_run(image, client_env(proxy, tmp_path)))
    assert image_exists(dockerd.env, image)
    assert image_exists(dockerd.env, source)


def test_pull_recipe_uses_the_proxy_users_registry_credentials(
    dockerd: Dockerd,
    busybox: str,
    auth_registry: Registry,
    make_proxy: MakeProxy,
    tmp_path: Path,
    made: list[str],
) -> None:
    """The proxy pulls with what ``docker login`` stored for its own user."""
    credentials = docker_config(tmp_path / "proxy-user", auth_registry)
    image = f"{auth_registry.host}/team/private:1"
    made.append(image)
    publish(dockerd, busybox, image, credentials)
    proxy = make_proxy(
        pull_config(tmp_path, f"{auth_registry.host}/team/private:{{tag}}"),
        env={**dockerd.env, "DOCKER_CONFIG": str(credentials)},
    )

    assert_healed(docker_run(image, client_env(proxy, tmp_path)))
    assert image_exists(dockerd.env, image)


def test_pull_recipe_without_credentials_says_the_registry_refused(
    dockerd: Dockerd,
    busybox: str,
    auth_registry: Registry,
    make_proxy: MakeProxy,
    tmp_path: Path,
    made: list[str],
) -> None:
    """No credentials: the create fails with dockerd's own reason, not a 404."""
    image = f"{auth_registry.host}/team/locked:1"
    made.append(image)
    publish(dockerd, busybox, image, docker_config(tmp_path / "pusher", auth_registry))
    proxy = make_proxy(
        pull_config(tmp_path, f"{auth_registry.host}/team/locked:{{tag}}"),
        env={**dockerd.env, "DOCKER_CONFIG": str(docker_config(tmp_path / "nobody", None))},
    )

    result = docker_run(image, client_env(proxy, tmp_path))
    stderr = result.stderr.decode()
    assert result.returncode == 125, stderr
    assert f"cannot heal {image}" in stderr
    assert "(pull)" in stderr
    assert "no basic auth credentials" in stderr or "unauthorized" in stderr, stderr
    assert "Unable to find image" not in stderr
    assert not image_exists(dockerd.env, image)


def test_load_recipe_heals_from_a_saved_archive(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path, made: list[str]
) -> None:
    """``load``: an image kept as a ``docker save`` archive comes back from it."""
    image = "127.0.0.1:1/dhp/tool:1.2"
    made.append(image)
    archive = tmp_path / "tool.tar"
    docker(["tag", busybox, image], env=dockerd.env)
    docker(["save", "-o", str(archive), image], env=dockerd.env)
    docker(["rmi", image], env=dockerd.env)
    assert not image_exists(dockerd.env, image)
    proxy = make_proxy(
        f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = {toml_string(image)}
load = {toml_string(archive)}
"""
    )

    assert_healed(docker_run(image, proxy.env))
    assert image_exists(dockerd.env, image)
