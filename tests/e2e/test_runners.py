"""Recipes run against a real private dockerd: each kind, and each way to fail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from support import Dockerd, docker, wait_for

from proxy.healing.core import runners
from proxy.healing.core.runners import RecipeFailed, run_recipe
from proxy.healing.core.statefiles import LogFile
from proxy.healing.sources.engine import Engine, EngineError
from proxy.recipes.recipe import BuildSpec, ConcreteRecipe, Kind, Recipe


def recipe(kind: Kind, image: str, **fields: Any) -> ConcreteRecipe:
    return ConcreteRecipe(Recipe(0, image, kind), image, kind, **fields)


def with_engine(dockerd: Dockerd, use: Callable[[Engine], Coroutine[Any, Any, Any]]) -> Any:
    async def main() -> Any:
        engine = Engine(dockerd.socket, 60.0)
        try:
            return await use(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


def heal(
    dockerd: Dockerd, concrete: ConcreteRecipe, log: Path, lines: list[str] | None = None
) -> None:
    async def run(engine: Engine) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        transcript = LogFile(open(log, "a", encoding="utf-8"), log)  # noqa: SIM115 (closed below)
        try:
            await run_recipe(
                concrete,
                upstream=dockerd.socket,
                log=transcript,
                engine=engine,
                on_line=None if lines is None else lines.append,
            )
        finally:
            await transcript.close()

    with_engine(dockerd, run)


def failure(dockerd: Dockerd, concrete: ConcreteRecipe, log: Path) -> RecipeFailed:
    with pytest.raises(RecipeFailed) as caught:
        heal(dockerd, concrete, log)
    return caught.value


def exists(dockerd: Dockerd, image: str) -> bool:
    return bool(with_engine(dockerd, lambda engine: engine.image_exists(image)))


def sh(script: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", script)


def test_command_produces_the_image(
    dockerd: Dockerd, busybox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = "127.0.0.1:1/dhp/command:1"
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "3")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    script = (
        'echo "greeting=$GREETING"; echo "host=$DOCKER_HOST"; '
        'echo "private=${NOTIFY_SOCKET-}${LISTEN_FDS-}"; touch marker; '
        f"docker tag {busybox} {image}"
    )
    concrete = recipe(
        "command", image, command=sh(script), workdir=tmp_path, env={"GREETING": "hi"}
    )
    lines: list[str] = []
    log = tmp_path / "logs" / "heal.log"
    heal(dockerd, concrete, log, lines)
    assert exists(dockerd, image)
    assert (tmp_path / "marker").exists()
    assert lines == ["greeting=hi", f"host=unix://{dockerd.socket}", "private="]
    text = log.read_text()
    assert text.splitlines()[0].endswith(f"images[0] ({image}): command recipe for {image}")
    assert "greeting=hi\n" in text
    assert f"produced {image}" in text


def test_nonzero_exit_fails_with_the_tail(dockerd: Dockerd, tmp_path: Path) -> None:
    script = "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; exit 3"
    concrete = recipe("command", "127.0.0.1:1/dhp/fails:1", command=sh(script), workdir=tmp_path)
    failed = failure(dockerd, concrete, tmp_path / "heal.log")
    assert failed.reason == "exited with status 3"
    assert failed.tail == [f"line {i}" for i in range(12, 31)] + ["oops"]
    assert "failed after" in (tmp_path / "heal.log").read_text()


def test_exit_zero_without_the_image_fails(dockerd: Dockerd, tmp_path: Path) -> None:
    image = "127.0.0.1:1/dhp/never:1"
    concrete = recipe("command", image, command=("true",), workdir=tmp_path)
    assert failure(dockerd, concrete, tmp_path / "heal.log").reason == (
        f"finished but did not produce {image}"
    )


@pytest.mark.parametrize(("program", "workdir"), [("/no/such/prog", "/"), ("true", "/no/such/dir")])
def test_missing_program_or_workdir_says_which(
    dockerd: Dockerd, tmp_path: Path, program: str, workdir: str
) -> None:
    missing = program if workdir == "/" else workdir
    concrete = recipe("command", "127.0.0.1:1/dhp/x:1", command=(program,), workdir=Path(workdir))
    reason = failure(dockerd, concrete, tmp_path / "heal.log").reason
    assert reason == f"could not start: {missing}: No such file or directory"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}  # an orphan's zombie is dead, just not yet reaped


def test_timeout_kills_the_whole_process_group(
    dockerd: Dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners, "KILL_GRACE", 0.5)
    # Both ignore SIGTERM, so only the SIGKILL that follows can end them.
    script = "trap '' TERM; sleep 1000 & echo $!; wait"
    concrete = recipe(
        "command", "127.0.0.1:1/dhp/slow:1", command=sh(script), workdir=tmp_path, timeout=1.5
    )
    lines: list[str] = []
    try:
        with pytest.raises(RecipeFailed) as caught:
            heal(dockerd, concrete, tmp_path / "heal.log", lines)
        assert caught.value.reason == "timed out after 1.5s"
        child = int(lines[0])
        wait_for(lambda: _gone(child), 15, f"the recipe's child {child} to be killed")
    finally:
        # Never leak the child, whatever failed above.
        if lines and lines[0].isdigit() and not _gone(int(lines[0])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(lines[0]), signal.SIGKILL)


@pytest.fixture
def build_context(tmp_path: Path, busybox: str) -> Path:
    context = tmp_path / "ctx"
    (context / "docker").mkdir(parents=True)
    (context / "docker" / "app.Dockerfile").write_text(
        f"FROM {busybox} AS base\n"
        "ARG GREETING=unset\n"
        "COPY . /ctx/\n"
        'RUN echo "$GREETING" > /greeting\n'
        "FROM base AS broken\n"
        "RUN exit 9\n"
    )
    (context / ".dockerignore").write_text("*.secret\ndocker\n")
    (context / "app.txt").write_text("app")
    (context / "token.secret").write_text("do not send")
    return context


def test_build_honours_dockerignore_args_and_target(
    dockerd: Dockerd, build_context: Path, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/built:1"
    spec = BuildSpec(build_context, "docker/app.Dockerfile", {"GREETING": "hello"}, "base")
    lines: list[str] = []
    heal(dockerd, recipe("build", image, build=spec), tmp_path / "heal.log", lines)
    assert any(line.startswith("Step 1/") for line in lines)
    shown = docker(
        [
            "run",
            "--rm",
            "--network=none",
            image,
            "sh",
            "-c",
            "cat /greeting; ls -A /ctx /ctx/docker",
        ],
        env=dockerd.env,
    ).stdout.decode()
    assert shown.split() == [
        "hello",
        "/ctx:",
        ".dockerignore",
        "app.txt",
        "docker",
        "/ctx/docker:",
    ]  # dockerd reads the excluded Dockerfile, then drops it from the context as docker does


def test_build_failure_carries_the_builder_output(
    dockerd: Dockerd, build_context: Path, tmp_path: Path
) -> None:
    spec = BuildSpec(build_context, "docker/app.Dockerfile", target="broken")
    failed = failure(
        dockerd, recipe("build", "127.0.0.1:1/dhp/broken:1", build=spec), tmp_path / "l"
    )
    assert "returned a non-zero code: 9" in failed.reason
    assert any("RUN exit 9" in line for line in failed.tail)


def test_unreadable_context_fails_with_its_own_error(
    dockerd: Dockerd, build_context: Path, tmp_path: Path
) -> None:
    (build_context / ".dockerignore").write_text("[unclosed\n")
    spec = BuildSpec(build_context, "docker/app.Dockerfile")
    failed = failure(dockerd, recipe("build", "127.0.0.1:1/dhp/ctx:1", build=spec), tmp_path / "l")
    assert "bad .dockerignore pattern '[unclosed'" in failed.reason


def test_load_of_a_saved_archive(dockerd: Dockerd, busybox: str, tmp_path: Path) -> None:
    image = "127.0.0.1:1/dhp/loaded:1"
    archive = tmp_path / "image.tar"
    docker(["tag", busybox, image], env=dockerd.env)
    docker(["save", "-o", str(archive), image], env=dockerd.env)
    docker(["rmi", image], env=dockerd.env)
    assert not exists(dockerd, image)
    lines: list[str] = []
    heal(dockerd, recipe("load", image, load=archive), tmp_path / "heal.log", lines)
    assert exists(dockerd, image)
    assert lines == [f"Loaded image: {image}"]


def test_load_of_a_missing_archive(dockerd: Dockerd, tmp_path: Path) -> None:
    concrete = recipe("load", "127.0.0.1:1/dhp/x:1", load=tmp_path / "absent.tar")
    assert failure(dockerd, concrete, tmp_path / "heal.log").reason == (
        f"cannot read {tmp_path / 'absent.tar'}: No such file or directory"
    )


def test_pull_failure_reports_dockerd(dockerd: Dockerd, tmp_path: Path) -> None:
    concrete = recipe("pull", "127.0.0.1:1/dhp/x:1", pull="127.0.0.1:1/dhp/absent:2")
    reason = failure(dockerd, concrete, tmp_path / "heal.log").reason
    assert "127.0.0.1:1" in reason and "connection refused" in reason


def test_tag_and_image_exists(dockerd: Dockerd, busybox: str) -> None:
    target = "127.0.0.1:1/dhp/tagged:2"

    async def use(engine: Engine) -> tuple[bool, bool]:
        before = await engine.image_exists(target)
        await engine.tag(busybox, target)
        return before, await engine.image_exists(target)

    assert with_engine(dockerd, use) == (False, True)
    with pytest.raises(EngineError, match="No such image") as caught:
        with_engine(dockerd, lambda engine: engine.tag("127.0.0.1:1/dhp/none:1", target))
    assert caught.value.status == 404
