"""The shared registry cache, with two hosts: two private dockerds, a proxy on
each, one config, and one local registry behind htpasswd.

The recipe counts its runs per host in a marker file (it writes the
``DOCKER_HOST`` it was given, which names its host's dockerd) and sleeps
``RECIPE_SECONDS``, so a heal faster than that did not run it.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    MakeProxy,
    Proxy,
    Registry,
    docker,
    docker_run,
    free_port,
    heal_status,
    private_dockerd,
    proxy_cli,
    running_registry,
    toml_string,
    wait_for,
    write_script,
)

USER, PASSWORD = "fleet", "cache-pw"
RECIPE_SECONDS = 4
REPOSITORY = "heal-cache"


@pytest.fixture(scope="module")
def host_b(dockerd: Dockerd) -> Iterator[Dockerd]:
    """A second host: a dockerd of its own, with its own data root."""
    with private_dockerd("dhb-", dockerd.release) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def registry(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("cache"), (USER, PASSWORD)) as started:
        yield started


@dataclass
class Fleet:
    """What one test set up: a workdir with sources, a marker, credentials."""

    folder: Path
    marker: Path
    registry: str

    def runs(self, host: Dockerd) -> int:
        """How often the recipe ran on ``host``."""
        if not self.marker.exists():
            return 0
        return self.marker.read_text().splitlines().count(host.url)


@pytest.fixture
def fleet(tmp_path: Path, registry: Registry) -> Fleet:
    src = tmp_path / "work" / "src"
    src.mkdir(parents=True)
    (src / "app.txt").write_text("version 1\n")
    marker = tmp_path / "runs"
    write_script(
        tmp_path / "work" / "build.sh",
        f'echo "$DOCKER_HOST" >> "{marker}"\nsleep {RECIPE_SECONDS}\ndocker tag {BUSYBOX} "$1"\n',
    )
    return Fleet(tmp_path, marker, registry.host)


def config(fleet: Fleet, *, registry: str | None = None, push: bool = True, heal: str = "") -> str:
    """The one config every host runs (``push`` aside, for a pull-only host)."""
    return f"""
state_dir = "state"
[heal]
failure_cooldown = "1s"
{heal}
cache = {toml_string(f"{registry or fleet.registry}/{REPOSITORY}")}
cache_push = {str(push).lower()}
[[images]]
match = "127.0.0.1:1/dhp/fleet:{{t}}"
command = ["./build.sh", "127.0.0.1:1/dhp/fleet:{{t}}"]
workdir = {toml_string(fleet.folder / "work")}
cache = true
inputs = ["src/**", "build.sh"]
"""


def credentials(folder: Path, registry: str, helper: str | None = None) -> dict[str, str]:
    """The proxy user's environment: ``docker login``'s file, or a credential helper."""
    folder.mkdir(parents=True, exist_ok=True)
    if helper is None:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        settings: dict[str, object] = {"auths": {registry: {"auth": token}}}
    else:
        settings = {"credHelpers": {registry: helper}}
    (folder / "config.json").write_text(json.dumps(settings))
    # The helper first, then the session's PATH: its docker CLI is the one recipes run.
    return {"DOCKER_CONFIG": str(folder), "PATH": f"{folder}:{os.environ['PATH']}"}


def host_proxy(
    make_proxy: MakeProxy, daemon: Dockerd, text: str, env: dict[str, str], *args: str
) -> Proxy:
    """A proxy in front of ``daemon``, run as a user whose environment adds ``env``."""
    return make_proxy(text, daemon=daemon, env={**daemon.env, **env}, args=args)


def heal(proxy: Proxy, daemon: Dockerd, image: str) -> float:
    """``docker run`` a missing image through ``proxy``; the seconds it took."""
    docker(["rmi", "-f", image], env=daemon.env, check=False)
    started = time.monotonic()
    result = docker_run(image, proxy.env)
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr + proxy.log()
    assert "Unable to find image" not in stderr
    return elapsed


def cache_tags_left(daemon: Dockerd) -> list[str]:
    listed = docker(["images", "--format", "{{.Repository}}:{{.Tag}}"], env=daemon.env)
    return [line for line in listed.stdout.decode().split() if f"/{REPOSITORY}:" in line]


def registry_tags(registry: str) -> list[str]:
    request = urllib.request.Request(f"http://{registry}/v2/{REPOSITORY}/tags/list")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return sorted(json.load(response)["tags"] or [])
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise


def pushed(proxy: Proxy) -> str:
    """Wait for the background push to end well; the reference it pushed."""
    wait_for(lambda: "cache push of" in proxy.log(), 60, "the cache push")
    line = next(line for line in proxy.log().splitlines() if "cache push of" in line)
    assert "succeeded" in line, proxy.log()
    return line.split("cache push of ", 1)[1].split()[0]


def built_on_a(
    make_proxy: MakeProxy, a_daemon: Dockerd, fleet: Fleet, image: str, env: dict[str, str]
) -> str:
    """Host A heals ``image`` by its recipe and pushes it; the cache reference."""
    a = host_proxy(make_proxy, a_daemon, config(fleet), env)
    heal(a, a_daemon, image)
    assert fleet.runs(a_daemon) == 1
    reference = pushed(a)
    assert PASSWORD not in a.log(), "credentials are never logged"
    return reference


def log_lines(proxy: Proxy, *parts: str) -> list[str]:
    """The proxy's log lines that contain every one of ``parts``."""
    return [line for line in proxy.log().splitlines() if all(part in line for part in parts)]


def last_result(proxy: Proxy, image: str) -> dict[str, object]:
    return dict(heal_status(proxy)["last_results"][image])


def metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no sample {sample}")


def test_host_a_builds_and_pushes_host_b_pulls_instead_of_building(
    dockerd: Dockerd, host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    image = "127.0.0.1:1/dhp/fleet:one"
    env = credentials(fleet.folder / "login", fleet.registry)
    a = host_proxy(make_proxy, dockerd, config(fleet), env)
    b = host_proxy(make_proxy, host_b, config(fleet), env)

    config_file = next(arg.split("=", 1)[1] for arg in a.args if arg.startswith("--config="))
    checked = proxy_cli("check", image, f"--config={config_file}", f"--upstream={host_b.url}")
    assert checked.returncode == 0, checked.stderr

    heal(a, dockerd, image)
    assert (fleet.runs(dockerd), fleet.runs(host_b)) == (1, 0)
    reference = pushed(a)
    assert f"cache key  {reference} (linux/" in checked.stdout, "check names the key heals use"
    assert reference.startswith(f"{fleet.registry}/{REPOSITORY}:dhp_fleet-one-")
    # The registry is shared by the module's tests: only this image's tags count.
    mine = [tag for tag in registry_tags(fleet.registry) if tag.startswith("dhp_fleet-one-")]
    assert mine == [reference.rsplit(":", 1)[1]]
    assert last_result(a, image)["source"] == "recipe"

    heal(b, host_b, image)
    assert fleet.runs(host_b) == 0, b.log()
    assert log_lines(b, f"heal of {image} succeeded in", f"from the cache {reference}"), b.log()
    assert last_result(b, image)["source"] == "cache"
    assert last_result(b, image)["cache"] == reference
    assert "cache push of" not in b.log(), "a hit is not pushed back"
    assert cache_tags_left(dockerd) == cache_tags_left(host_b) == []


def test_changed_inputs_build_instead_of_pulling_and_push_a_new_key(
    dockerd: Dockerd, host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    image = "127.0.0.1:1/dhp/fleet:two"
    env = credentials(fleet.folder / "login", fleet.registry)
    first = built_on_a(make_proxy, dockerd, fleet, image, env)

    (fleet.folder / "work" / "src" / "app.txt").write_text("version 2\n")
    b = host_proxy(make_proxy, host_b, config(fleet), env)
    heal(b, host_b, image)
    assert fleet.runs(host_b) == 1, "changed sources must not pull the old build"
    assert "cache miss for" in b.log()
    second = pushed(b)
    assert second != first
    assert second.rsplit(":", 1)[1] in registry_tags(fleet.registry)
    assert first.rsplit(":", 1)[1] in registry_tags(fleet.registry)
    assert cache_tags_left(dockerd) == cache_tags_left(host_b) == []


def test_with_the_registry_down_the_recipe_heals_and_the_errors_are_counted(
    host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    image = "127.0.0.1:1/dhp/fleet:down"
    nobody = f"127.0.0.1:{free_port()}"
    port = free_port()
    b = host_proxy(
        make_proxy,
        host_b,
        config(fleet, registry=nobody),
        credentials(fleet.folder / "login", nobody),
        f"--metrics-listen=127.0.0.1:{port}",
    )
    heal(b, host_b, image)
    assert fleet.runs(host_b) == 1
    assert log_lines(b, f"cache pull of {nobody}/{REPOSITORY}:", " failed: "), b.log()
    assert last_result(b, image)["source"] == "recipe"
    wait_for(lambda: "cache push of" in b.log(), 60, "the push to fail")
    assert metric(port, 'docker_heal_proxy_cache_pulls_total{result="error"}') == 1
    assert metric(port, 'docker_heal_proxy_cache_pulls_total{result="miss"}') == 0
    wait_for(
        lambda: metric(port, 'docker_heal_proxy_cache_pushes_total{result="error"}') == 1,
        30,
        "the push error to be counted",
    )
    success = 'docker_heal_proxy_heals_total{image="127.0.0.1:1/dhp/fleet:{t}",result="success",'
    assert metric(port, success + 'source="recipe",trigger="create"}') == 1
    assert metric(port, success + 'source="cache",trigger="create"}') == 0
    assert cache_tags_left(host_b) == []


def test_credentials_from_a_cred_helper_and_a_hanging_helper_falls_back(
    dockerd: Dockerd, host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    """Host A's helper answers; host B's hangs, so B goes anonymous after the
    helper timeout, the registry refuses it, and B builds."""
    image = "127.0.0.1:1/dhp/fleet:helper"
    good = credentials(fleet.folder / "good", fleet.registry, helper="dhp-fleet")
    write_script(
        fleet.folder / "good" / "docker-credential-dhp-fleet",
        f'read host\n[ "$1 $host" = "get {fleet.registry}" ] || exit 7\n'
        f'echo \'{{"ServerURL":"{fleet.registry}","Username":"{USER}","Secret":"{PASSWORD}"}}\'\n',
    )
    hung = credentials(fleet.folder / "hung", fleet.registry, helper="dhp-hung")
    write_script(fleet.folder / "hung" / "docker-credential-dhp-hung", "sleep 300\n")

    reference = built_on_a(make_proxy, dockerd, fleet, image, good)

    b = host_proxy(make_proxy, host_b, config(fleet), hung)
    heal(b, host_b, image)
    assert fleet.runs(host_b) == 1
    assert "docker-credential-dhp-hung: no answer within 10s; going anonymous" in b.log()
    assert log_lines(b, f"cache pull of {reference} failed: "), b.log()
    # The heal's own time, as the proxy measured it (the container's start is not
    # part of it): the helper's bound, the refused pull and the recipe.
    took = last_result(b, image)["duration_seconds"]
    assert isinstance(took, float) and 10 + RECIPE_SECONDS <= took < 10 + RECIPE_SECONDS + 20
    # Its push goes anonymous too, and the registry refuses it.
    wait_for(lambda: "cache push of" in b.log(), 60, "host B's push to end")
    assert log_lines(b, f"cache push of {reference} failed: "), b.log()
    assert cache_tags_left(dockerd) == cache_tags_left(host_b) == []


def test_a_pull_only_host_pulls_but_never_pushes(
    dockerd: Dockerd, host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    env = credentials(fleet.folder / "login", fleet.registry)
    built_on_a(make_proxy, dockerd, fleet, "127.0.0.1:1/dhp/fleet:shared", env)
    before = registry_tags(fleet.registry)

    b = host_proxy(make_proxy, host_b, config(fleet, push=False), env)
    heal(b, host_b, "127.0.0.1:1/dhp/fleet:shared")
    assert fleet.runs(host_b) == 0
    heal(b, host_b, "127.0.0.1:1/dhp/fleet:only-b")
    assert fleet.runs(host_b) == 1
    assert "heal of 127.0.0.1:1/dhp/fleet:only-b succeeded" in b.log()
    assert "cache push" not in b.log()
    assert registry_tags(fleet.registry) == before
    assert cache_tags_left(dockerd) == cache_tags_left(host_b) == []


def test_the_heal_command_pushes_before_it_exits(
    dockerd: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    """``docker-heal-proxy heal`` from a shell waits for its background push: a
    process that exits first would take the push down with it."""
    image = "127.0.0.1:1/dhp/fleet:by-hand"
    docker(["rmi", "-f", image], env=dockerd.env, check=False)
    config_file = fleet.folder / "heal.toml"
    config_file.write_text(config(fleet))
    env = {**dockerd.env, **credentials(fleet.folder / "login", fleet.registry)}
    result = proxy_cli(
        "heal", image, f"--config={config_file}", f"--upstream={dockerd.url}", env=env
    )
    assert result.returncode == 0, result.stderr
    assert fleet.runs(dockerd) == 1
    tags = registry_tags(fleet.registry)
    assert any(tag.startswith("dhp_fleet-by-hand-") for tag in tags), tags
    assert cache_tags_left(dockerd) == []


@contextlib.contextmanager
def stalled_registry() -> Iterator[str]:
    """A registry that answers ``/v2/`` and then never a manifest; its host."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v2":
                release.wait(120)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_stalled_registry_costs_the_idle_bound_not_the_recipe_timeout(
    host_b: Dockerd, fleet: Fleet, make_proxy: MakeProxy
) -> None:
    image = "127.0.0.1:1/dhp/fleet:stalled"
    bound = 3
    port = free_port()
    with stalled_registry() as stalled:
        text = config(fleet, registry=stalled, push=False, heal=f'engine_timeout = "{bound}s"')
        b = host_proxy(
            make_proxy,
            host_b,
            text,
            credentials(fleet.folder / "login", stalled),
            f"--metrics-listen=127.0.0.1:{port}",
        )
        heal(b, host_b, image)
    assert fleet.runs(host_b) == 1
    assert log_lines(b, f"cache pull of {stalled}/", f" failed: no progress for {bound}s"), b.log()
    assert metric(port, 'docker_heal_proxy_cache_pulls_total{result="error"}') == 1
    # The heal's duration runs from its start: the cache try is part of it.
    took = last_result(b, image)["duration_seconds"]
    assert isinstance(took, float) and took >= bound + RECIPE_SECONDS - 0.5, took
