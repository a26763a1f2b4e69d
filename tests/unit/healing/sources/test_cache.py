"""The cache's decisions, against a recording stand-in for the Engine.

The real registry and daemons are in tests/e2e/test_heal_cache.py; this pins
the outcomes a real registry rarely produces on demand (a tag that fails
after a good pull, an untag of a name already gone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from proxy.healing.sources.cache import RegistryCache
from proxy.healing.sources.engine import Engine, EngineError
from proxy.recipes.graph import HealPlan
from proxy.recipes.recipe import ConcreteRecipe, Recipe

REFERENCE = "reg:5000/heal-cache:app-1-0123456789abcdef"


class FakeEngine:
    def __init__(self, fail: dict[str, EngineError] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[str, ...]] = []

    def _call(self, *call: str) -> None:
        self.calls.append(call)
        if call[0] in self.fail:
            raise self.fail[call[0]]

    async def platform(self) -> str:
        self._call("platform")
        return "linux/amd64"

    async def pull(self, ref: str, auth: str | None, on_line: Callable[[str], None]) -> None:
        self._call("pull", ref)

    async def push(self, ref: str, auth: str | None, on_line: Callable[[str], None]) -> None:
        self._call("push", ref)

    async def tag(self, source: str, target: str) -> None:
        self._call("tag", source, target)

    async def untag(self, ref: str) -> None:
        self._call("untag", ref)

    async def image_id(self, ref: str) -> str:
        self._call("image_id", ref)
        return "sha256:abc"


class Counts:
    def __init__(self) -> None:
        self.pulls: list[str] = []
        self.pushes: list[str] = []

    def cache_pulled(self, result: str) -> None:
        self.pulls.append(result)

    def cache_pushed(self, result: str) -> None:
        self.pushes.append(result)


def recipe(tmp_path: Path, inputs: tuple[str, ...] = ()) -> ConcreteRecipe:
    entry = Recipe(index=0, match="app:{t}", kind="command", cache=True)
    image = "docker.io/library/app:1"
    return ConcreteRecipe(entry, image, "command", workdir=tmp_path, cache=True, inputs=inputs)


def alone(concrete: ConcreteRecipe) -> HealPlan:
    """The plan of a recipe with no bases."""
    return HealPlan(concrete.image, (), {concrete.image: concrete}, {concrete.image: ()})


def cache(engine: FakeEngine, counts: Counts) -> RegistryCache:
    return RegistryCache(cast(Engine, engine), "reg:5000/heal-cache", counts)


@pytest.fixture(autouse=True)
def anonymous(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-config"))


def pull(engine: FakeEngine, counts: Counts, tmp_path: Path) -> bool:
    return asyncio.run(cache(engine, counts).pull(recipe(tmp_path), REFERENCE, print))


def test_a_hit_is_tagged_as_the_wanted_tag_then_the_cache_tag_is_dropped(tmp_path: Path) -> None:
    engine, counts = FakeEngine(), Counts()
    assert pull(engine, counts, tmp_path)
    assert engine.calls == [
        ("pull", REFERENCE),
        ("tag", REFERENCE, "docker.io/library/app:1"),
        ("untag", REFERENCE),
    ]
    assert counts.pulls == ["hit"]


MISSING = "manifest for reg:5000/heal-cache:x not found: manifest unknown: manifest unknown"
DENIED = (
    "pull access denied for reg:5000/heal-cache, repository does not exist or may require "
    "'docker login': denied: requested access to the resource is denied"
)


@pytest.mark.parametrize(
    ("message", "status", "result"),
    [
        (MISSING, 404, "miss"),
        ("repository reg:5000/heal-cache not found: name unknown", 404, "miss"),
        (DENIED, 404, "error"),
        ("no", 404, "error"),
        (MISSING, 500, "error"),
        ("no", None, "error"),
    ],
)
def test_a_missing_manifest_is_a_miss_and_anything_else_an_error(
    tmp_path: Path, message: str, status: int | None, result: str
) -> None:
    """dockerd maps a token registry's DENIED to 404 too: refused credentials
    must not pass for the quiet miss of the first host."""
    engine, counts = FakeEngine({"pull": EngineError(message, status)}), Counts()
    assert not pull(engine, counts, tmp_path)
    assert engine.calls == [("pull", REFERENCE)], "nothing was pulled, so nothing to untag"
    assert counts.pulls == [result]


def test_a_hit_that_cannot_be_tagged_is_an_error_and_still_untagged(tmp_path: Path) -> None:
    engine, counts = FakeEngine({"tag": EngineError("tag refused", 500)}), Counts()
    assert not pull(engine, counts, tmp_path)
    assert engine.calls[-1] == ("untag", REFERENCE)
    assert counts.pulls == ["error"]


def test_an_untag_of_a_name_already_gone_is_not_a_failure(tmp_path: Path) -> None:
    engine, counts = FakeEngine({"untag": EngineError("No such image", 404)}), Counts()
    assert pull(engine, counts, tmp_path)
    assert counts.pulls == ["hit"]


def test_a_push_pins_the_image_id_and_untags_whatever_happens(tmp_path: Path) -> None:
    for fail, result in (({}, "success"), ({"push": EngineError("denied")}, "error")):
        engine, counts = FakeEngine(fail), Counts()
        asyncio.run(cache(engine, counts).push("docker.io/library/app:1", REFERENCE))
        assert engine.calls == [
            ("image_id", "docker.io/library/app:1"),
            ("tag", "sha256:abc", REFERENCE),
            ("push", REFERENCE),
            ("untag", REFERENCE),
        ]
        assert counts.pushes == [result]


class StuckPush(FakeEngine):
    async def push(self, ref: str, auth: str | None, on_line: Callable[[str], None]) -> None:
        self._call("push", ref)
        await asyncio.sleep(3600)


def test_a_push_is_bounded_by_the_recipe_timeout_and_still_untagged(tmp_path: Path) -> None:
    engine, counts = StuckPush(), Counts()
    asyncio.run(cache(engine, counts).push("docker.io/library/app:1", REFERENCE, 0.05))
    assert engine.calls[-2:] == [("push", REFERENCE), ("untag", REFERENCE)]
    assert counts.pushes == ["error"]


def test_inputs_that_cannot_be_hashed_mean_no_cache_and_an_error(tmp_path: Path) -> None:
    engine, counts = FakeEngine(), Counts()
    found = asyncio.run(cache(engine, counts).reference(alone(recipe(tmp_path, ("missing/**",)))))
    assert found is None
    assert counts.pulls == ["error"]


def test_the_reference_is_the_repository_and_the_key(tmp_path: Path) -> None:
    engine, counts = FakeEngine(), Counts()
    found = asyncio.run(cache(engine, counts).reference(alone(recipe(tmp_path))))
    assert found is not None and found.startswith("reg:5000/heal-cache:app-1-")
    assert counts.pulls == []


def test_a_guessed_plan_means_no_cache_and_an_error(tmp_path: Path) -> None:
    """A Dockerfile that could not be parsed left bases out: another host's key differs."""
    engine, counts = FakeEngine(), Counts()
    plan = alone(recipe(tmp_path))
    guessed = replace(plan, unknown=frozenset({plan.image}))
    assert guessed.guessed
    assert asyncio.run(cache(engine, counts).reference(guessed)) is None
    assert counts.pulls == ["error"]
    assert engine.calls == []


def test_an_unexpected_failure_of_the_key_means_no_cache_and_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache must never fail a heal, not even with a bug of its own."""

    def broken(*args: object) -> str:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr("proxy.healing.sources.cache.inputs_hash", broken)
    engine, counts = FakeEngine(), Counts()
    found = asyncio.run(cache(engine, counts).reference(alone(recipe(tmp_path, ("x",)))))
    assert found is None
    assert counts.pulls == ["error"]
    assert any(record.exc_info for record in caplog.records)


class SlowPull(FakeEngine):
    """A registry that answers ``lines`` progress lines ``gap`` seconds apart, then hangs."""

    def __init__(self, lines: int, gap: float, hang: bool) -> None:
        super().__init__()
        self.lines, self.gap, self.hang = lines, gap, hang

    async def pull(self, ref: str, auth: str | None, on_line: Callable[[str], None]) -> None:
        self._call("pull", ref)
        for _ in range(self.lines):
            await asyncio.sleep(self.gap)
            on_line("Downloading")
        if self.hang:
            await asyncio.Event().wait()


def slow_pull(engine: SlowPull, counts: Counts, tmp_path: Path) -> bool:
    stalled = RegistryCache(cast(Engine, engine), "reg:5000/heal-cache", counts, idle_timeout=0.3)
    return asyncio.run(stalled.pull(recipe(tmp_path), REFERENCE, lambda line: None))


def test_a_pull_without_progress_is_cut_by_the_idle_bound_and_an_error(tmp_path: Path) -> None:
    engine, counts = SlowPull(lines=0, gap=0, hang=True), Counts()
    started = time.monotonic()
    assert not slow_pull(engine, counts, tmp_path)
    assert time.monotonic() - started < 5
    assert counts.pulls == ["error"]
    engine, counts = SlowPull(lines=3, gap=0.1, hang=True), Counts()
    assert not slow_pull(engine, counts, tmp_path)
    assert counts.pulls == ["error"]


def test_a_pull_that_makes_progress_is_not_cut(tmp_path: Path) -> None:
    engine, counts = SlowPull(lines=8, gap=0.1, hang=False), Counts()
    assert slow_pull(engine, counts, tmp_path)
    assert counts.pulls == ["hit"]


class HeldPush(FakeEngine):
    """A push that waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.pushing = asyncio.Event()
        self.go = asyncio.Event()

    async def push(self, ref: str, auth: str | None, on_line: Callable[[str], None]) -> None:
        self._call("push", ref)
        self.pushing.set()
        await self.go.wait()


def test_a_pull_waits_for_a_push_of_the_same_reference_to_untag(tmp_path: Path) -> None:
    """Otherwise the push's untag could remove the name between the pull and its tag."""

    async def race() -> list[tuple[str, ...]]:
        engine, counts = HeldPush(), Counts()
        shared = cache(engine, counts)
        other = RegistryCache(
            cast(Engine, engine), "reg:5000/heal-cache", counts, locks=shared.locks
        )
        pushing = asyncio.create_task(shared.push("docker.io/library/app:1", REFERENCE))
        await asyncio.wait_for(engine.pushing.wait(), 10)
        pulling = asyncio.create_task(other.pull(recipe(tmp_path), REFERENCE, print))
        for _ in range(20):  # every chance to run ahead, were it not waiting
            await asyncio.sleep(0)
        engine.go.set()
        await asyncio.wait_for(asyncio.gather(pushing, pulling), 10)
        return engine.calls

    calls = asyncio.run(race())
    assert calls.index(("pull", REFERENCE)) > calls.index(("untag", REFERENCE)), calls
    assert calls[-2:] == [("tag", REFERENCE, "docker.io/library/app:1"), ("untag", REFERENCE)]
