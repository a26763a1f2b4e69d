"""One plan per heal: a chain's Dockerfiles each parsed once, in the plan queue,
whether a create or a reconcile asked.

A worker that runs its work in this process stands in for the parse process,
so that the parser itself can be counted where the work lands; a parse
anywhere else in this process is counted apart, and must not happen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import dockerfile
import pytest
from support import MemoryEngine, make_healer

from proxy.healing.background.proactive import Proactive
from proxy.healing.core.dockerfileparse import MAX_PARSED, ParseProcess
from proxy.healing.core.healer import Healer
from proxy.healing.core.planner import Planner
from proxy.healing.sources.engine import Engine
from proxy.recipes.config import Config, parse_config

T = TypeVar("T")


class InProcessWorker:
    """``ParseProcess.run`` without the process; notes where each parse happens."""

    def __init__(self, name: str, parses: Counter[tuple[str, str]]) -> None:
        self.name = name
        self.parses = parses
        self.busy = False

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        self.busy = True
        try:
            return work(*args)
        finally:
            self.busy = False

    async def aclose(self) -> None:
        pass


class BuildingEngine(MemoryEngine):
    """A daemon whose builds always work; it records their order."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.built: list[str] = []

    async def list_images(self) -> list[dict[str, Any]]:
        return [{"RepoTags": sorted(self.images)}]

    async def root_dir(self) -> str:
        return str(self.root)

    async def image_events(self, since: float, opened: Callable[[], None]) -> AsyncIterator[Any]:
        opened()
        await asyncio.Event().wait()
        yield {}

    async def build(self, context: AsyncIterable[bytes], *, tag: str, **params: Any) -> None:
        async for _ in context:
            pass
        self.built.append(tag)
        self.images.add(tag)


def chain(tmp_path: Path, depth: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """``app0`` FROM ``app1`` ... FROM an unmanaged image: each a build recipe."""
    texts: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for level in range(depth):
        base = f"app{level + 1}" if level + 1 < depth else "unmanaged"
        text = f"ARG V=1\nFROM {base}:$V\nRUN echo level {level}\n"
        context = tmp_path / f"ctx{level}"
        context.mkdir()
        (context / "Dockerfile").write_text(text)
        texts[f"app{level}"] = text
        entries.append({"match": f"app{level}:1", "build": {"context": str(context)}})
    return texts, entries


def counted_healer(
    config: Config, engine: BuildingEngine, state: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Healer, Counter[tuple[str, str]]]:
    """A healer whose two parse queues run here; each parse counted by where it ran."""
    parses: Counter[tuple[str, str]] = Counter()
    plans = InProcessWorker("plans", parses)
    builds = InProcessWorker("builds", parses)
    real_parse = dockerfile.parse_string

    def counted(text: str) -> Any:
        where = next((w.name for w in (plans, builds) if w.busy), "the proxy's process")
        parses[(where, text)] += 1
        return real_parse(text)

    monkeypatch.setattr(dockerfile, "parse_string", counted)
    healer = make_healer(config, engine, state)
    healer.parser = cast(ParseProcess, builds)
    healer.planner = Planner(cast(ParseProcess, plans))
    return healer, parses


def test_a_chain_of_depth_three_parses_each_dockerfile_once_in_the_plan_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, entries = chain(tmp_path, 3)
    engine = BuildingEngine(tmp_path)
    config = parse_config({"images": entries}, base_dir=tmp_path)
    healer, parses = counted_healer(config, engine, tmp_path, monkeypatch)

    asyncio.run(asyncio.wait_for(healer.heal("app0:1", trigger="create"), 60))

    assert engine.built == [f"docker.io/library/app{n}:1" for n in (2, 1, 0)]
    assert parses == Counter({("plans", text): 1 for text in texts.values()})


def test_a_reconcile_heals_with_the_plans_it_worked_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconcile's plans order its queue and are the plans its heals use."""
    texts, entries = chain(tmp_path, 3)
    entries[0]["proactive"] = True
    engine = BuildingEngine(tmp_path)
    config = parse_config({"heal": {"min_free": "0%"}, "images": entries}, base_dir=tmp_path)
    healer, parses = counted_healer(config, engine, tmp_path, monkeypatch)

    async def main() -> None:
        background = Proactive(lambda: config, healer, cast(Engine, engine), tmp_path)
        await background.start()
        try:
            async with asyncio.timeout(60):
                while len(engine.built) < 3 or background.pending or background.active:
                    await asyncio.sleep(0.01)
        finally:
            await background.stop()

    asyncio.run(main())
    assert engine.built == [f"docker.io/library/app{n}:1" for n in (2, 1, 0)]
    assert parses == Counter({("plans", text): 1 for text in texts.values()})


def test_an_unparsed_dockerfile_leaves_only_the_plans_above_it_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The top's Dockerfile is too large to parse, its base named in ``depends_on``:
    the top's plan is guessed, and so without the cache, but its base's plan, every
    Dockerfile of which was parsed, keeps its key."""
    texts, entries = chain(tmp_path, 2)
    (tmp_path / "ctx0" / "Dockerfile").write_text(texts["app0"] + "#" * (MAX_PARSED + 1) + "\n")
    entries[0]["depends_on"] = ["app1:1"]
    config = parse_config({"images": entries}, base_dir=tmp_path)
    healer, parses = counted_healer(config, BuildingEngine(tmp_path), tmp_path, monkeypatch)

    plan = asyncio.run(healer.plan("app0:1"))

    assert plan.bases == ("docker.io/library/app1:1",)
    assert plan.guessed
    assert not plan.of("docker.io/library/app1:1").guessed
    assert parses == Counter({("plans", texts["app1"]): 1})
