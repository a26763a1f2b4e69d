"""proactive (named apart from tests/e2e/test_proactive.py: pytest needs unique basenames):
what counts as a use of a tag, how its loops outlive failures, and reloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from proxy.healing.background import memoryfile
from proxy.healing.background import proactive as proactive_module
from proxy.healing.background.memory import TagMemory
from proxy.healing.background.proactive import Proactive
from proxy.healing.core.healer import Healer
from proxy.healing.core.slots import Slots
from proxy.healing.sources.engine import Engine, EngineError
from proxy.recipes.config import Config, HealSettings, MinFree
from proxy.recipes.graph import HealPlan, drive, walk_plan
from proxy.recipes.recipe import Recipe

GROUP = "docker.io/library/agent:g1"
AGENT = Recipe(index=0, match="agent:{group}", kind="command", command=("x",), proactive=True)
CONFIG = Config(recipes=(AGENT,))
DAY = 86400.0


def proactive(tmp_path: Path, engine: Any = None, config: Config = CONFIG) -> Proactive:
    return Proactive(lambda: config, cast(Healer, None), cast(Engine, engine), tmp_path)


@pytest.mark.parametrize(("trigger", "refreshed"), [("proactive", False), ("create", True)])
def test_only_a_heal_someone_asked_for_refreshes_a_tag(
    tmp_path: Path, trigger: Any, refreshed: bool
) -> None:
    background = proactive(tmp_path)
    background.memory.remember(GROUP, 0.0)
    background.healed(GROUP, trigger)
    assert (background.memory.last_used[GROUP] > DAY) is refreshed


def test_a_reload_changes_the_debounce_and_the_interval(tmp_path: Path) -> None:
    current = [CONFIG]
    background = Proactive(lambda: current[0], cast(Healer, None), cast(Engine, None), tmp_path)
    assert (background.schedule.quiet, background.schedule.interval) == (5.0, 900.0)
    current[0] = Config(heal=HealSettings(reconcile_debounce=30.0, reconcile_interval=60.0))
    background.reconfigure()
    assert (background.schedule.quiet, background.schedule.interval) == (30.0, 60.0)


class FakeEngine:
    """dockerd as proactive sees it: its list of images fails ``failures`` times."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        self.root, self.failures, self.lists, self.streams = root, failures, 0, 0
        self.images: list[dict[str, Any]] = []
        self.exists = False

    async def list_images(self) -> list[dict[str, Any]]:
        self.lists += 1
        if self.lists <= self.failures:
            raise RuntimeError("boom: a bug, not a daemon error")
        return self.images

    async def root_dir(self) -> str:
        return str(self.root)

    async def image_exists(self, image: str) -> bool:
        return self.exists

    async def image_events(self, since: float, opened: Callable[[], None]) -> AsyncIterator[Any]:
        self.streams += 1
        opened()
        await asyncio.Event().wait()
        yield {}


class FakeHealer:
    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config
        self.slots = Slots(1)
        self.ensured: list[str] = []

    async def plan(self, image: str) -> HealPlan:
        return drive(walk_plan(image, self.config().recipes), lambda concrete: None)

    async def ensure(self, image: str, *, trigger: str, plan: HealPlan | None = None) -> str:
        self.ensured.append(image)
        return "healed"


STATIC = Recipe(index=0, match="static:1", kind="command", command=("x",), proactive=True)


def settings(**heal: Any) -> Config:
    return Config(heal=HealSettings(**heal), recipes=(STATIC,))


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run_proactive(
    tmp_path: Path, engine: FakeEngine, current: list[Config], body: Callable[..., Any]
) -> FakeHealer:
    healer = FakeHealer(lambda: current[0])

    async def main() -> None:
        background = Proactive(
            lambda: current[0], cast(Healer, healer), cast(Engine, engine), tmp_path
        )
        await background.start()
        try:
            await body(background)
        finally:
            await background.stop()

    asyncio.run(main())
    return healer


def test_a_loop_that_fails_unexpectedly_is_logged_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proactive_module, "CRASH_PAUSE", 0.01)
    engine = FakeEngine(tmp_path, failures=2)

    async def body(background: Proactive) -> None:
        await until(lambda: background.reconciles == 1, "a reconcile after the failures")
        await until(lambda: not background.view()["queued"], "its background heal")

    healer = run_proactive(tmp_path, engine, [settings(min_free=MinFree(percent=0.0))], body)
    assert engine.lists == 3
    assert caplog.text.count("the reconcile schedule failed; restarting it") == 2
    assert "RuntimeError: boom" in caplog.text, "the traceback is logged"
    assert healer.ensured == ["docker.io/library/static:1"]


def test_a_reload_turning_proactive_off_stops_everything_but_the_flusher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    engine = FakeEngine(tmp_path)
    current = [settings(min_free=MinFree(percent=100.0))]  # no disk is that free

    async def body(background: Proactive) -> None:
        await until(lambda: background.disk is not None, "the heal to wait for disk space")
        assert background.blocked() == {"min_free": True} and background.events_up
        current[0] = Config(heal=HealSettings(min_free=MinFree(percent=100.0)))
        background.reconfigure()
        await until(lambda: not background._retiring, "the stopped tasks to end")
        assert not background.enabled and not background.watcher.up
        assert background.blocked() == {"min_free": False}
        assert background.view()["queued"] == []

    healer = run_proactive(tmp_path, engine, current, body)
    assert healer.ensured == []
    assert caplog.text.count("proactive heals wait") == 1


def test_a_reload_changes_how_many_background_heals_run(tmp_path: Path) -> None:
    current = [settings()]

    async def body(background: Proactive) -> None:
        current[0] = settings(background_parallel=3)
        background.reconfigure()
        assert len(background._workers) == 3
        current[0] = settings(background_parallel=1)
        background.reconfigure()
        assert len(background._workers) == 1
        await until(lambda: not background._retiring, "the two workers to end")

    run_proactive(tmp_path, FakeEngine(tmp_path), current, body)


def test_a_tag_present_at_start_keeps_its_last_use(tmp_path: Path) -> None:
    saved, yesterday = TagMemory(), time.time() - DAY
    saved.remember(GROUP, yesterday)
    memoryfile.save(tmp_path, saved.dumps())
    engine = FakeEngine(tmp_path)
    engine.images = [{"RepoTags": ["agent:g1", "agent:g2"]}]

    async def body(background: Proactive) -> None:
        await until(lambda: background.reconciles == 1, "the start-up reconcile")
        assert background.memory.last_used[GROUP] == yesterday, "a restart is not a use"
        assert "docker.io/library/agent:g2" in background.memory.last_used

    run_proactive(tmp_path, engine, [CONFIG], body)


def test_a_daemon_error_while_listing_is_logged_and_the_next_trigger_reconciles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a timed-out call to a wedged daemon raises: the schedule goes on."""
    engine = FakeEngine(tmp_path)
    wedged = [True]
    listed = engine.list_images

    async def list_images() -> list[dict[str, Any]]:
        if wedged[0]:
            raise EngineError("the Docker daemon did not answer within 30s")
        return await listed()

    engine.list_images = list_images  # type: ignore[method-assign]

    async def body(background: Proactive) -> None:
        await until(lambda: "cannot list images" in caplog.text, "the failed reconcile")
        wedged[0] = False
        background.schedule.quiet = 0.0
        background._event()
        await until(lambda: background.reconciles == 1, "the reconcile after the next event")

    run_proactive(tmp_path, engine, [settings(min_free=MinFree(percent=0.0))], body)
    assert "Traceback" not in caplog.text


def test_a_heal_waiting_for_disk_space_gives_up_when_a_create_healed_the_image(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(tmp_path)

    async def body(background: Proactive) -> None:
        await until(lambda: background.disk is not None, "the heal to wait for disk space")
        engine.exists = True  # a create healed it meanwhile
        background._recheck.set()  # as the next check of the disk would
        await until(lambda: not background.view()["queued"], "the waiting heal to give up")
        assert background.blocked() == {"min_free": False}

    healer = run_proactive(tmp_path, engine, [settings(min_free=MinFree(percent=100.0))], body)
    assert healer.ensured == []


def test_inputs_changed_queues_one_rebuild_once_they_are_quiet(tmp_path: Path) -> None:
    """Stale mode: a burst of saves leads to one background rebuild, debounce after the
    last; an entry that is not proactive is left to the next create."""
    stale = Recipe(index=1, match="plain:1", kind="command", command=("x",))
    config = Config(
        heal=HealSettings(inputs_debounce=0.2, min_free=MinFree(percent=0.0)),
        recipes=(STATIC, stale),
    )
    engine = FakeEngine(tmp_path)
    engine.exists = True
    engine.images = [{"RepoTags": ["static:1", "plain:1"]}]
    static = "docker.io/library/static:1"

    async def body(background: Proactive) -> None:
        await until(lambda: background.reconciles == 1, "the start-up reconcile")
        started = time.monotonic()
        for _ in range(3):
            background.inputs_changed(static)
            background.inputs_changed("docker.io/library/plain:1")
            await asyncio.sleep(0.1)
        assert healer_of(background).ensured == [], "queued before the inputs were quiet"
        await until(lambda: healer_of(background).ensured == [static], "the rebuild")
        assert time.monotonic() - started >= 0.2 + 0.2

    healer = run_proactive(tmp_path, engine, [config], body)
    assert healer.ensured == [static]


def healer_of(background: Proactive) -> FakeHealer:
    return cast(FakeHealer, background.healer)


def test_a_reload_that_turns_proactive_off_drops_the_rebuilds_waiting_for_quiet(
    tmp_path: Path,
) -> None:
    """Stale mode: a change seen just before a reload that turns ``proactive`` off is
    not queued once its debounce ends: nothing background runs, nothing shows queued."""
    on = Config(
        heal=HealSettings(inputs_debounce=0.2, min_free=MinFree(percent=0.0)), recipes=(STATIC,)
    )
    off = replace(on, recipes=(replace(STATIC, proactive=False),))
    current = [on]
    engine = FakeEngine(tmp_path)
    engine.exists = True
    engine.images = [{"RepoTags": ["static:1"]}]

    async def body(background: Proactive) -> None:
        await until(lambda: background.reconciles == 1, "the start-up reconcile")
        background.inputs_changed("docker.io/library/static:1")
        current[0] = off
        background.reconfigure()
        await asyncio.sleep(0.2 + 0.3)  # past the debounce: what it would have queued
        assert background.view()["queued"] == []

    healer = run_proactive(tmp_path, engine, current, body)
    assert healer.ensured == []
