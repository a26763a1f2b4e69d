"""The healer without a daemon: cooldowns across reloads, bounded results, bounded Engine calls.

A small in-memory engine stands in for dockerd where only the healer's own
bookkeeping is under test; the Engine bound is tested with the real ``Engine``
against a socket that accepts and never answers, which a real dockerd cannot
be made to do on cue.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import IMAGE_A as A
from support import IMAGE_B as B
from support import MemoryEngine, heal_config, heal_once, make_healer, proxy_cli

from proxy.healing.core import healer as healer_module
from proxy.healing.core.healer import Healer, HealFailed, Result, evict
from proxy.healing.sources.engine import Engine, EngineError
from proxy.recipes.recipe import Recipe

# -- a reload that changes a recipe ends its cooldown ----------------------------


def test_a_changed_recipe_gets_its_next_try_at_once(tmp_path: Path) -> None:
    engine = MemoryEngine(broken={A, B})
    broken = heal_config({"match": A, "pull": True}, {"match": B, "pull": True})
    healer = make_healer(broken, engine, tmp_path)
    assert "manifest unknown" in (heal_once(healer, A) or "")
    assert "manifest unknown" in (heal_once(healer, B) or "")
    assert "in cooldown" in (heal_once(healer, A) or "")

    healer.reconfigure(broken)  # the same file again: nothing changed, cooldowns stay
    assert "in cooldown" in (heal_once(healer, A) or "")

    engine.images.add("127.0.0.1:1/fixed:1")
    fixed = heal_config({"match": A, "pull": "127.0.0.1:1/fixed:1"}, {"match": B, "pull": True})
    healer.reconfigure(fixed)
    assert healer.cooldown_counts() == {A: 0, B: 1}
    assert heal_once(healer, A) is None
    assert healer.results[A].success
    assert "in cooldown" in (heal_once(healer, B) or ""), "B's recipe did not change"


def test_moving_an_entry_is_not_a_change(tmp_path: Path) -> None:
    engine = MemoryEngine(broken={A})
    first = heal_config({"match": A, "pull": True}, {"match": B, "pull": True})
    healer = make_healer(first, engine, tmp_path)
    heal_once(healer, A)
    healer.reconfigure(heal_config({"match": B, "pull": True}, {"match": A, "pull": True}))
    assert "in cooldown" in (heal_once(healer, A) or "")
    healer.reconfigure(heal_config({"match": B, "pull": True}))
    assert healer.cooldown_counts() == {B: 0}, "a removed recipe's cooldown protects nothing"


class GatedEngine(MemoryEngine):
    """Pulls wait for ``gate``: a recipe still running when the reload comes."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__(broken)
        self.pulling = asyncio.Event()
        self.gate = asyncio.Event()

    async def pull(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pulling.set()
        await self.gate.wait()
        await super().pull(ref, auth_header, on_line)


def test_a_heal_asked_for_after_shutdown_began_never_starts(tmp_path: Path) -> None:
    """An ``on_stale = "background"`` rebuild's task, created before ``cancel`` and first run
    after it, must not start a recipe that nothing would stop (shutdown waits for it)."""
    engine = GatedEngine(broken=set())
    healer = make_healer(heal_config({"match": A, "pull": True}), engine, tmp_path)

    async def run() -> bool:
        behind = asyncio.get_running_loop().create_task(healer.heal(A, trigger="stale"))
        await healer.cancel()
        with pytest.raises(HealFailed, match="shutting down"):
            await asyncio.wait_for(behind, 5)
        return engine.pulling.is_set()

    assert asyncio.run(run()) is False
    assert healer.inflight == {}


def test_a_reload_during_the_failing_heal_still_ends_its_cooldown(tmp_path: Path) -> None:
    """The heal that fails after the reload records a cooldown of the old recipe;
    it must not hold back the fixed one."""
    fixed = "127.0.0.1:1/fixed:1"

    async def run() -> Healer:
        engine = GatedEngine(broken={A})
        engine.images.add(fixed)
        healer = make_healer(heal_config({"match": A, "pull": True}), engine, tmp_path)
        first = asyncio.ensure_future(healer.heal(A, trigger="create"))
        await asyncio.wait_for(engine.pulling.wait(), 10)
        healer.reconfigure(heal_config({"match": A, "pull": fixed}))
        engine.gate.set()
        with pytest.raises(HealFailed, match="manifest unknown"):
            await asyncio.wait_for(first, 10)
        await asyncio.wait_for(healer.heal(A, trigger="create"), 10)
        return healer

    assert asyncio.run(run()).results[A].success


# -- results are bounded ---------------------------------------------------------


def result(success: bool, retry_at: float = 0.0) -> Result:
    return Result(success, "m", "msg", 0.0, 0.0, Recipe(0, "m", "pull"), retry_at=retry_at)


def test_evict_takes_old_successes_then_ended_cooldowns_and_never_a_running_one() -> None:
    now = 100.0
    results = {
        "cooling-1": result(False, retry_at=now + 10),
        "ended-1": result(False, retry_at=now - 10),
        "ok-1": result(True),
        "ended-2": result(False, retry_at=now - 1),
        "ok-2": result(True),
        "cooling-2": result(False, retry_at=now + 10),
    }
    evict(results, 5, now)
    assert list(results) == ["cooling-1", "ended-1", "ended-2", "ok-2", "cooling-2"]
    evict(results, 3, now)
    assert list(results) == ["cooling-1", "ended-2", "cooling-2"]
    evict(results, 1, now)
    assert list(results) == ["cooling-1", "cooling-2"], "cooldowns outlive the bound"


def test_the_healer_keeps_the_most_recent_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(healer_module, "MAX_RESULTS", 3)
    engine = MemoryEngine(broken={"127.0.0.1:1/app:bad"})
    healer = make_healer(
        heal_config({"match": "127.0.0.1:1/app:{t}", "pull": True}), engine, tmp_path
    )
    images = [f"127.0.0.1:1/app:{n}" for n in range(5)]
    heal_once(healer, "127.0.0.1:1/app:bad")
    for image in images:
        assert heal_once(healer, image) is None
    assert list(healer.results) == ["127.0.0.1:1/app:bad", *images[-2:]]
    assert len(healer.snapshot()["last_results"]) == 3


def test_the_bound_is_a_thousand() -> None:
    assert healer_module.MAX_RESULTS == 1000


# -- short Engine calls are bounded ----------------------------------------------


def test_a_wedged_daemon_fails_the_heal_and_frees_its_lock(tmp_path: Path, silent: str) -> None:
    cfg = heal_config({"match": A, "pull": True}, engine_timeout="300ms")
    state = tmp_path / "state"

    async def run() -> str:
        engine = Engine(silent, cfg.heal.engine_timeout)
        healer = Healer(cfg, engine, silent, state)
        try:
            with pytest.raises(HealFailed) as failed:
                await asyncio.wait_for(healer.heal(A, trigger="create"), 30)
            return str(failed.value)
        finally:
            await healer.parser.aclose()
            await engine.close()

    started = time.monotonic()
    message = asyncio.run(run())
    assert time.monotonic() - started < 10
    assert message == (
        f"docker-heal-proxy: cannot look up {A}: the Docker daemon at {silent} "
        f"did not answer an inspect of {A} within 0.3s"
    )
    (lock,) = (state / "locks").glob("*.lock")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the heal still held it
    finally:
        os.close(fd)


def test_a_reload_changes_the_engine_bound(tmp_path: Path) -> None:
    engine = MemoryEngine()
    healer = make_healer(heal_config(engine_timeout="2s"), engine, tmp_path)
    healer.reconfigure(heal_config(engine_timeout="1m"))
    assert engine.call_timeout == 60.0


def test_heal_from_a_shell_gives_up_on_a_wedged_daemon(tmp_path: Path, silent: str) -> None:
    """``docker-heal-proxy heal`` shares the lock; it must neither hang nor keep it."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'state_dir = "{tmp_path}/state"\n[heal]\nengine_timeout = "500ms"\n'
        f'[[images]]\nmatch = "{A}"\npull = true\n'
    )
    started = time.monotonic()
    result = proxy_cli("heal", A, f"--config={path}", f"--upstream=unix://{silent}", timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert f"did not answer an inspect of {A} within 0.5s" in result.stderr


# -- the registry cache, as the healer uses it -------------------------------------

CACHE = "127.0.0.1:2/heal-cache"


class CachingEngine(MemoryEngine):
    """A registry cache that holds every cache reference, and records pushes."""

    def __init__(self, broken: set[str] | None = None) -> None:
        super().__init__(broken)
        self.pushes: list[str] = []

    async def platform(self) -> str:
        return "linux/amd64"

    async def untag(self, ref: str) -> None:
        self.images.discard(ref)

    async def image_id(self, ref: str) -> str:
        return "sha256:abc"

    async def push(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pushes.append(ref)


@pytest.fixture
def anonymous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


@pytest.mark.usefixtures("anonymous")
def test_a_cache_hit_heals_no_base(tmp_path: Path) -> None:
    engine = CachingEngine(broken={B})
    cfg = heal_config(
        {"match": A, "command": ["false"], "cache": True, "depends_on": [B]},
        {"match": B, "pull": True},
        cache=CACHE,
    )
    healer = make_healer(cfg, engine, tmp_path)
    assert heal_once(healer, A) is None
    assert B not in engine.pulls, "a hit needs no base"
    assert A in engine.images and healer.results[A].source == "cache"


@pytest.mark.usefixtures("anonymous")
def test_force_builds_afresh_instead_of_pulling_and_still_pushes(tmp_path: Path) -> None:
    engine = CachingEngine()
    engine.images.add(A)
    cfg = heal_config(
        {"match": A, "command": ["true"], "cache": True, "workdir": str(tmp_path)}, cache=CACHE
    )
    healer = make_healer(cfg, engine, tmp_path)

    async def forced() -> None:
        await healer.heal(A, trigger="create", force=True)
        await healer.settle()

    asyncio.run(forced())
    assert not any(ref.startswith(CACHE) for ref in engine.pulls), engine.pulls
    assert healer.results[A].source == "recipe"
    assert [ref.rsplit(":", 1)[0] for ref in engine.pushes] == [CACHE]


@pytest.mark.usefixtures("anonymous")
def test_no_push_with_cache_push_false(tmp_path: Path) -> None:
    engine = CachingEngine()
    entry = {"match": A, "command": ["true"], "cache": True, "workdir": str(tmp_path)}
    cfg = heal_config(entry, cache=CACHE, cache_push=False)
    healer = make_healer(cfg, engine, tmp_path)
    engine.images.add(A)

    async def forced() -> None:
        await healer.heal(A, trigger="create", force=True)
        await healer.settle()

    asyncio.run(forced())
    assert healer.results[A].success and engine.pushes == []


class StuckPushEngine(CachingEngine):
    """A cache that misses, and a push that never ends on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.pushing = asyncio.Event()

    async def pull(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pulls.append(ref)
        raise EngineError(f"manifest for {ref} not found: manifest unknown", 404)

    async def push(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pushes.append(ref)
        self.pushing.set()
        await asyncio.Event().wait()


@pytest.mark.usefixtures("anonymous")
def test_a_stuck_push_is_listed_does_not_hold_the_client_and_is_cancelled(
    tmp_path: Path,
) -> None:
    engine = StuckPushEngine()
    script = tmp_path / "build.sh"
    script.write_text(f"#!/bin/sh\necho built > {tmp_path}/built\n")
    script.chmod(0o755)
    entry = {"match": A, "command": ["./build.sh"], "cache": True, "workdir": str(tmp_path)}
    healer = make_healer(heal_config(entry, cache=CACHE), engine, tmp_path)

    async def run() -> tuple[list[str], list[str], bool]:
        engine.images.add(A)  # what the recipe makes, as far as this engine can tell
        await asyncio.wait_for(healer.heal(A, trigger="create", force=True), 30)
        # The client has its answer; the push is still held by the registry.
        await asyncio.wait_for(engine.pushing.wait(), 10)
        listed = list(healer.snapshot()["cache_pushes"])
        (push,) = healer.pushes
        await asyncio.wait_for(healer.cancel(), 10)
        return listed, list(healer.snapshot()["cache_pushes"]), push.cancelled()

    listed, after, cancelled = asyncio.run(run())
    assert [ref.rsplit(":", 1)[0] for ref in listed] == [CACHE]
    assert after == [] and cancelled
