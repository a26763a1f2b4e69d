"""tracker: decisions from memory, and what it fetches when memory lacks a fact."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.healing.stale.decision import Fresh, Stale
from proxy.healing.stale.tracker import StaleTracker, load
from proxy.recipes.config import Config, parse_config

APP = "docker.io/library/app:latest"
GROUP = "docker.io/library/group:g1"


class FakeEngine:
    """The two calls the tracker makes, counted."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.inspects = 0
        self.lists = 0

    async def inspect(self, ref: str) -> Mapping[str, Any] | None:
        self.inspects += 1
        return self.images.get(ref)

    async def list_images(self) -> list[dict[str, Any]]:
        self.lists += 1
        return [{"Id": i["Id"], "RepoTags": [tag]} for tag, i in self.images.items()]


def config(tmp_path: Path) -> Config:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "msg").write_text("v1\n")
    return parse_config(
        {
            "images": [
                {"match": "app", "command": ["x"], "inputs": ["src"], "rebuild_when": "stale"},
                {
                    "match": "group:{g}",
                    "command": ["x"],
                    "inputs": ["src"],
                    "rebuild_when": "stale",
                },
                {"match": "plain", "command": ["x"]},
            ]
        },
        base_dir=tmp_path,
    )


def run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        engine = FakeEngine()
        settings = config(tmp_path)
        tracker = StaleTracker(lambda: settings, engine, tmp_path / "state")  # type: ignore[arg-type]
        await tracker.start()
        try:
            await body(tracker, engine)
        finally:
            await tracker.stop()

    asyncio.run(main())


def test_a_made_image_is_fresh_until_an_input_changes(tmp_path: Path) -> None:
    async def body(tracker: StaleTracker, engine: FakeEngine) -> None:
        before = await tracker.before(APP)
        engine.images[APP] = {"Id": "sha256:1", "Created": "2000-01-01T00:00:00Z"}
        await tracker.made(APP, before, ())
        calls = engine.inspects
        assert tracker.decide(APP) == Fresh()
        assert engine.inspects == calls  # from memory
        (tmp_path / "src" / "msg").write_text("v2\n")
        async with asyncio.timeout(10):
            while not isinstance(tracker.decide(APP), Stale):
                await asyncio.sleep(0.02)
        assert tracker.decide(APP) == Stale("src/msg changed")
        assert tracker.stale() == {APP: "src/msg changed"}
        assert load(tmp_path / "state").get("sha256:1") is not None  # written at once

    run(tmp_path, body)


def test_a_hand_built_image_is_adopted_by_its_created_time(tmp_path: Path) -> None:
    async def body(tracker: StaleTracker, engine: FakeEngine) -> None:
        os.utime(tmp_path / "src" / "msg", (1000, 1000))
        engine.images[APP] = {"Id": "sha256:new", "Created": "1970-01-01T00:20:00Z"}
        assert await tracker.judge(APP) == Fresh()
        engine.images[APP] = {"Id": "sha256:old", "Created": "1970-01-01T00:10:00Z"}
        tracker.tags.set(APP, "sha256:old")
        found = await tracker.judge(APP)
        assert found == Stale("built before src/msg last changed (adopted stale)")

    run(tmp_path, body)


def test_a_dirty_map_costs_one_inspect_and_a_relist(tmp_path: Path) -> None:
    async def body(tracker: StaleTracker, engine: FakeEngine) -> None:
        before = await tracker.before(APP)
        engine.images[APP] = {"Id": "sha256:1", "Created": "2000-01-01T00:00:00Z"}
        await tracker.made(APP, before, ())
        tracker.event({"Type": "image", "Action": "load", "Actor": {"ID": "x"}})
        assert tracker.tags.image_id(APP) is None
        calls = engine.inspects
        assert await tracker.judge(APP) == Fresh()
        assert engine.inspects == calls + 1
        async with asyncio.timeout(10):
            while tracker.tags.dirty:
                await asyncio.sleep(0.02)
        assert engine.lists >= 1

    run(tmp_path, body)


class GatedEngine(FakeEngine):
    """Inspects wait for ``gate``; ``asked`` is set when one does."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()

    async def inspect(self, ref: str) -> Mapping[str, Any] | None:
        self.asked.set()
        await self.gate.wait()
        return await super().inspect(ref)


def test_a_map_dirtied_while_a_relist_adopts_is_relisted_again(tmp_path: Path) -> None:
    """The event stream connecting (as it does at start) while the first relist is
    still adopting what it found must not leave the map dirty for good."""

    async def main() -> None:
        engine = GatedEngine()
        engine.images[APP] = {"Id": "sha256:1", "Created": "2000-01-01T00:00:00Z"}
        settings = config(tmp_path)
        tracker = StaleTracker(lambda: settings, engine, tmp_path / "state")  # type: ignore[arg-type]
        starting = asyncio.create_task(tracker.start())
        try:
            async with asyncio.timeout(10):
                await engine.asked.wait()  # listed; the relist is adopting APP
            tracker.connected()
            engine.gate.set()
            async with asyncio.timeout(10):
                await starting
                while tracker.tags.dirty:
                    await asyncio.sleep(0.02)
        finally:
            await tracker.stop()

    asyncio.run(main())


def test_a_tag_event_of_a_template_entry_starts_watching_that_tag(tmp_path: Path) -> None:
    async def body(tracker: StaleTracker, engine: FakeEngine) -> None:
        async with asyncio.timeout(10):
            while tracker.tags.dirty:
                await asyncio.sleep(0.02)
        assert sorted(tracker.watch.targets) == [APP]
        actor = {"ID": "sha256:g", "Attributes": {"name": "group:g1"}}
        tracker.event({"Type": "image", "Action": "tag", "Actor": actor})
        async with asyncio.timeout(10):
            while GROUP not in tracker.watch.targets:
                await asyncio.sleep(0.02)
        assert tracker.decide("docker.io/library/plain:latest") == Fresh()

    run(tmp_path, body)


def test_an_edit_while_a_recipe_ran_is_reported_once_the_image_is_recorded(
    tmp_path: Path,
) -> None:
    """The record keeps the hash taken before the recipe ran; an edit made while it ran
    is reported (``on_inputs_changed``), so one more rebuild follows."""
    changed: list[str] = []

    async def body(tracker: StaleTracker, engine: FakeEngine) -> None:
        tracker.on_inputs_changed = changed.append
        tracker.watch.on_change = lambda tag: None  # the file watch's own report aside
        before = await tracker.before(APP)
        engine.images[APP] = {"Id": "sha256:1", "Created": "2000-01-01T00:00:00Z"}
        await tracker.made(APP, before, ())
        assert changed == []  # nothing moved while it ran
        before = await tracker.before(APP)
        (tmp_path / "src" / "msg").write_text("v2, saved mid-build\n")
        engine.images[APP] = {"Id": "sha256:2", "Created": "2000-01-01T00:00:00Z"}
        await tracker.made(APP, before, ())
        assert changed == [APP]
        assert load(tmp_path / "state").get("sha256:2") is not None

    run(tmp_path, body)
