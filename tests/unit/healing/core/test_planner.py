"""One plan per heal: a chain's Dockerfiles each parsed once, in the plan queue.

A worker that runs its work in this process stands in for the parse process,
so that the parser itself can be counted where the work lands; a parse
anywhere else in this process is counted apart, and must not happen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import dockerfile
import pytest
from support import MemoryEngine, make_healer

from proxy.healing.core.dockerfileparse import ParseProcess
from proxy.healing.core.planner import Planner
from proxy.recipes.config import parse_config

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

    def __init__(self) -> None:
        super().__init__()
        self.built: list[str] = []

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


def test_a_chain_of_depth_three_parses_each_dockerfile_once_in_the_plan_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, entries = chain(tmp_path, 3)
    parses: Counter[tuple[str, str]] = Counter()
    plans = InProcessWorker("plans", parses)
    builds = InProcessWorker("builds", parses)
    real_parse = dockerfile.parse_string

    def counted(text: str) -> Any:
        where = next((w.name for w in (plans, builds) if w.busy), "the proxy's process")
        parses[(where, text)] += 1
        return real_parse(text)

    monkeypatch.setattr(dockerfile, "parse_string", counted)
    engine = BuildingEngine()
    healer = make_healer(parse_config({"images": entries}, base_dir=tmp_path), engine, tmp_path)
    healer.parser = cast(ParseProcess, builds)
    healer.planner = Planner(cast(ParseProcess, plans))

    asyncio.run(asyncio.wait_for(healer.heal("app0:1", trigger="create"), 60))

    assert engine.built == [f"docker.io/library/app{n}:1" for n in (2, 1, 0)]
    assert parses == Counter({("plans", text): 1 for text in texts.values()})
