"""BuildKit builds FROM a pruned managed base, through the proxy: the /session relay heals it.

``docker build`` is buildx, and compose v2 builds the same way: the
Dockerfile travels over the hijacked ``/session``, where the proxy holds its
end until the managed bases it names are there (``wire.buildsession``,
``healing.claims.sessionheal``). Each test prunes the base, builds through
the proxy, and counts the recipe's runs in a marker file.

The daemon has no bridge: these Dockerfiles have no ``RUN``.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    MakeProxy,
    Proxy,
    back_to,
    command_config,
    docker,
    gated_tagging_script,
    image_exists,
    line_count,
    remove,
    tagging_script,
    usage,
    wait_for,
    write_script,
)

pytestmark = [pytest.mark.daemon, pytest.mark.usefixtures("docker_cli")]


@dataclass
class Case:
    dockerd: Dockerd
    proxy: Proxy
    base: str
    marker: Path
    ctx: Path
    tag: str

    def build(self, *extra: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run(["docker", "build", "-t", self.tag, *extra, str(self.ctx)], self.proxy, stdin)


def run(
    argv: list[str], proxy: Proxy, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, env=proxy.env, input=stdin, capture_output=True, timeout=180, cwd=cwd
    )


def dockerfile(base: str) -> str:
    return f"FROM {base}\nCOPY a.txt /a.txt\n"


def context(tmp_path: Path, base: str) -> Path:
    """A build context FROM ``base`` that copies one file: no RUN (no bridge)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile(base))
    (ctx / "a.txt").write_text("hello\n")
    return ctx


@pytest.fixture
def case(dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path) -> Iterator[Case]:
    token = uuid.uuid4().hex[:12]
    base = f"dhp/bkbase:{token}"
    marker = tmp_path / "runs"
    script = tagging_script(tmp_path / "make-base.sh", marker, BUSYBOX, base)
    proxy = make_proxy(command_config(tmp_path, base, script))
    ctx = context(tmp_path, base)
    made = Case(dockerd, proxy, base, marker, ctx, f"dhp/bkchild:{token}")
    remove(dockerd.env, base)
    yield made
    remove(dockerd.env, base, made.tag)


def healed_once(case: Case, result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr.decode()
    assert line_count(case.marker) == 1
    assert image_exists(case.dockerd.env, case.base)


def warm_up(proxy: Proxy, ctx: Path) -> tuple[int, int]:
    """A build that needs no heal (its parse starts the parse worker); then the baseline."""
    real = (ctx / "Dockerfile").read_text()
    (ctx / "Dockerfile").write_text(dockerfile(BUSYBOX))
    assert run(["docker", "build", str(ctx)], proxy).returncode == 0
    (ctx / "Dockerfile").write_text(real)
    return usage(proxy)


def test_a_build_from_a_pruned_managed_base_heals_it_once(case: Case) -> None:
    baseline = warm_up(case.proxy, case.ctx)
    healed_once(case, case.build())
    assert image_exists(case.dockerd.env, case.tag)
    ran = docker(["run", "--rm", "--network=none", case.tag, "cat", "/a.txt"], env=case.dockerd.env)
    assert ran.stdout == b"hello\n"
    back_to(case.proxy, baseline, "a healed BuildKit build")


def test_a_repeated_build_of_the_unchanged_folder_heals_the_base_again(case: Case) -> None:
    """dockerd 20.10 does not send an unchanged Dockerfile again: the proxy's memory serves."""
    warm_up(case.proxy, case.ctx)
    healed_once(case, case.build())
    remove(case.dockerd.env, case.base)
    again = case.build()
    assert again.returncode == 0, again.stderr.decode()
    assert line_count(case.marker) == 2
    assert image_exists(case.dockerd.env, case.base)


def test_a_repeated_build_of_the_unchanged_folder_fails_with_the_proxy_reason(
    case: Case, tmp_path: Path
) -> None:
    """On dockerd 20.10 the refusal takes the place of the CLI's answer to the daemon's FIN."""
    warm_up(case.proxy, case.ctx)
    healed_once(case, case.build())
    remove(case.dockerd.env, case.base)
    write_script(tmp_path / "make-base.sh", "echo 'the base recipe broke here' >&2\nexit 3\n")
    again = case.build()
    err = again.stderr.decode()
    assert again.returncode != 0
    assert "failed to read dockerfile: error from sender: docker-heal-proxy: cannot heal" in err
    assert "the base recipe broke here" in err, err


def test_with_a_dockerignore_beside_the_dockerfile(case: Case) -> None:
    (case.ctx / "Dockerfile.dockerignore").write_text("*.log\n")
    (case.ctx / "x.log").write_text("left out\n")
    healed_once(case, case.build())


def test_with_the_dockerfile_on_stdin(case: Case) -> None:
    (case.ctx / "Dockerfile").unlink()
    healed_once(case, case.build("-f", "-", stdin=dockerfile(case.base).encode()))


@pytest.mark.parametrize("command", [["build"], ["up", "--build", "--exit-code-from", "app"]])
def test_compose_builds_heal_the_base(case: Case, command: list[str]) -> None:
    (case.ctx / "compose.yaml").write_text(
        f"""services:
  app:
    image: {case.tag}
    build: .
    command: ["cat", "/a.txt"]
    network_mode: none
"""
    )
    project = f"dhp{uuid.uuid4().hex[:8]}"
    try:
        result = run(["docker", "compose", "-p", project, *command], case.proxy, cwd=case.ctx)
        healed_once(case, result)
    finally:
        run(["docker", "compose", "-p", project, "down"], case.proxy, cwd=case.ctx)


def test_an_unmanaged_missing_base_fails_as_it_does_direct(case: Case) -> None:
    (case.ctx / "Dockerfile").write_text(dockerfile(f"dhp/nosuch:{uuid.uuid4().hex[:12]}"))
    through = case.build()
    direct = subprocess.run(
        ["docker", "build", "-t", case.tag, str(case.ctx)],
        env=case.dockerd.env,
        capture_output=True,
        timeout=180,
    )
    assert through.returncode == direct.returncode != 0
    last = [r.stderr.decode().strip().splitlines()[-1] for r in (through, direct)]
    assert last[0] == last[1], last
    assert line_count(case.marker) == 0


LONG_LINES = "for i in $(seq 20); do echo \"$i $(head -c 2000 /dev/zero | tr '\\0' x)\"; done\n"
"""Output that makes the reason (its last 20 lines) longer than one HTTP/2 frame may be."""


@pytest.mark.parametrize("output", ["", LONG_LINES], ids=["short", "long lines"])
def test_a_broken_base_recipe_fails_the_build_with_the_proxy_reason(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path, output: str
) -> None:
    base = f"dhp/bkbroken:{uuid.uuid4().hex[:12]}"
    script = write_script(
        tmp_path / "broken.sh", output + "echo 'the base recipe broke here' >&2\nexit 3\n"
    )
    proxy = make_proxy(command_config(tmp_path, base, script))
    ctx = context(tmp_path, base)
    baseline = warm_up(proxy, ctx)
    result = run(["docker", "build", str(ctx)], proxy)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "failed to read dockerfile: error from sender: docker-heal-proxy: cannot heal" in err
    assert base in err and "the base recipe broke here" in err, err
    back_to(proxy, baseline, "a refused BuildKit build")


def test_twenty_concurrent_builds_heal_the_base_once(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    base = f"dhp/bkmany:{uuid.uuid4().hex[:12]}"
    marker, gate = tmp_path / "runs", tmp_path / "gate"
    script = gated_tagging_script(tmp_path / "make.sh", marker, BUSYBOX, base, gate)
    proxy = make_proxy(command_config(tmp_path, base, script))
    ctx = context(tmp_path, base)
    baseline = warm_up(proxy, ctx)
    results: list[subprocess.CompletedProcess[bytes]] = []

    def build(i: int) -> None:
        results.append(run(["docker", "build", "-t", f"dhp/bkmany-{i}:1", str(ctx)], proxy))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(20)]
    held = "a BuildKit build's Dockerfile is held"
    before = proxy.log().count(held)  # the warm-up's
    try:
        for t in threads:
            t.start()
        wait_for(lambda: proxy.log().count(held) == before + 20, 120, "all 20 Dockerfiles held")
        wait_for(lambda: line_count(marker) == 1, 30, "the one heal to start")
        gate.touch()
        for t in threads:
            t.join(180)
        assert [r.returncode for r in results] == [0] * 20, [r.stderr[-500:] for r in results]
        assert line_count(marker) == 1
        back_to(proxy, baseline, "twenty healed BuildKit builds")
    finally:
        gate.touch()
        remove(dockerd.env, base, *(f"dhp/bkmany-{i}:1" for i in range(20)))


def test_a_heal_longer_than_the_session_timeout_still_lets_the_build_go_on(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """BuildKit ends a session after 30 s without a health check: the checks must keep
    flowing while the Dockerfile's end is held, so a 35 s heal is still a build that works."""
    base = f"dhp/bkslow:{uuid.uuid4().hex[:12]}"
    marker, gate = tmp_path / "runs", tmp_path / "gate"
    script = gated_tagging_script(tmp_path / "make.sh", marker, BUSYBOX, base, gate)
    proxy = make_proxy(command_config(tmp_path, base, script))
    ctx = context(tmp_path, base)
    results: list[subprocess.CompletedProcess[bytes]] = []
    thread = threading.Thread(
        target=lambda: results.append(run(["docker", "build", str(ctx)], proxy))
    )
    try:
        thread.start()
        wait_for(lambda: line_count(marker) == 1, 60, "the heal to start")
        time.sleep(35)  # the hold itself is what is tested: longer than BuildKit's 30 s
        gate.touch()
        thread.join(180)
        assert results and results[0].returncode == 0, results and results[0].stderr.decode()
        assert line_count(marker) == 1
    finally:
        gate.touch()
        remove(dockerd.env, base)
