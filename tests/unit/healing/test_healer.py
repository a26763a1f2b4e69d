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
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from support import FakeDaemon, proxy_cli

from proxy.healing import healer as healer_module
from proxy.healing.engine import Engine, EngineError
from proxy.healing.healer import Healer, HealFailed, Result, evict
from proxy.recipes.config import Config, parse_config

A = "127.0.0.1:1/a:1"
B = "127.0.0.1:1/b:1"


class MemoryEngine:
    """Images in a set; a pull of a ref in ``broken`` fails as a registry would."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.images: set[str] = set()
        self.broken = broken or set()
        self.pulls: list[str] = []
        self.call_timeout = 0.0

    async def image_exists(self, ref: str) -> bool:
        return ref in self.images

    async def pull(self, ref: str, auth_header: str | None, on_line: Any) -> None:
        self.pulls.append(ref)
        if ref in self.broken:
            raise EngineError(f"manifest for {ref} not found: manifest unknown", 404)
        self.images.add(ref)

    async def tag(self, source: str, target: str) -> None:
        self.images.add(target)


def config(*entries: dict[str, Any], **heal: Any) -> Config:
    return parse_config({"heal": heal, "images": list(entries)}, base_dir=Path("/cfg"))


def make_healer(cfg: Config, engine: object, state: Path) -> Healer:
    return Healer(cfg, cast(Engine, engine), "/nowhere.sock", state)


def heal(healer: Healer, image: str) -> str | None:
    """The failure message of one heal, or None when it worked."""

    async def once() -> None:
        try:
            await asyncio.wait_for(healer.heal(image, trigger="create"), 30)
        finally:
            await healer.parser.aclose()  # its worker belongs to this loop

    try:
        asyncio.run(once())
    except HealFailed as failure:
        return str(failure)
    return None


# -- a reload that changes a recipe ends its cooldown ----------------------------


def test_a_changed_recipe_gets_its_next_try_at_once(tmp_path: Path) -> None:
    engine = MemoryEngine(broken={A, B})
    broken = config({"match": A, "pull": True}, {"match": B, "pull": True})
    healer = make_healer(broken, engine, tmp_path)
    assert "manifest unknown" in (heal(healer, A) or "")
    assert "manifest unknown" in (heal(healer, B) or "")
    assert "in cooldown" in (heal(healer, A) or "")

    healer.reconfigure(broken)  # the same file again: nothing changed, cooldowns stay
    assert "in cooldown" in (heal(healer, A) or "")

    engine.images.add("127.0.0.1:1/fixed:1")
    fixed = config({"match": A, "pull": "127.0.0.1:1/fixed:1"}, {"match": B, "pull": True})
    healer.reconfigure(fixed)
    assert A not in healer.results
    assert heal(healer, A) is None
    assert healer.results[A].success
    assert "in cooldown" in (heal(healer, B) or ""), "B's recipe did not change"


def test_moving_an_entry_is_not_a_change(tmp_path: Path) -> None:
    engine = MemoryEngine(broken={A})
    first = config({"match": A, "pull": True}, {"match": B, "pull": True})
    healer = make_healer(first, engine, tmp_path)
    heal(healer, A)
    healer.reconfigure(config({"match": B, "pull": True}, {"match": A, "pull": True}))
    assert "in cooldown" in (heal(healer, A) or "")
    healer.reconfigure(config({"match": B, "pull": True}))
    assert A not in healer.results, "a removed recipe's cooldown has nothing left to protect"


# -- results are bounded ---------------------------------------------------------


def result(success: bool, retry_at: float = 0.0) -> Result:
    return Result(success, "m", "msg", 0.0, 0.0, retry_at=retry_at)


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
    healer = make_healer(config({"match": "127.0.0.1:1/app:{t}", "pull": True}), engine, tmp_path)
    images = [f"127.0.0.1:1/app:{n}" for n in range(5)]
    heal(healer, "127.0.0.1:1/app:bad")
    for image in images:
        assert heal(healer, image) is None
    assert list(healer.results) == ["127.0.0.1:1/app:bad", *images[-2:]]
    assert len(healer.snapshot()["last_results"]) == 3


def test_the_bound_is_a_thousand() -> None:
    assert healer_module.MAX_RESULTS == 1000


# -- short Engine calls are bounded ----------------------------------------------


class Silent(FakeDaemon):
    """Accepts, reads whatever comes, never answers: a wedged dockerd."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "silent.sock")
    daemon = Silent(path)
    yield path
    daemon.close()


def test_a_wedged_daemon_fails_the_heal_and_frees_its_lock(tmp_path: Path, silent: str) -> None:
    cfg = config({"match": A, "pull": True}, engine_timeout="300ms")
    state = tmp_path / "state"

    async def run() -> str:
        engine = Engine(silent)
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
    healer = make_healer(config(engine_timeout="2s"), engine, tmp_path)
    assert engine.call_timeout == 2.0
    healer.reconfigure(config(engine_timeout="1m"))
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
