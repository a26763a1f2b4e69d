"""A heal's plan, worked out once: files read here, Dockerfiles parsed in the worker.

Rules:
- One walk per heal. The plan a heal starts with is handed down to its
  bases' heals (``HealPlan.of``), to the cache key and to proactive heals,
  so each Dockerfile of a chain is parsed once per heal, not once per level.
- The proxy's process reads each Dockerfile (in a thread: it is file I/O)
  and hands the worker its text; the worker reads nothing (``dockerfileparse``).
- Recipe plans have a parse queue of their own: a client's build body,
  parsed in the other queue, never waits ahead of a create's heal here.
- A Dockerfile that cannot be parsed in time costs its bases, not the heal:
  the step counts only its ``depends_on``, with a log line, and is marked
  ``unknown``: the plan of that image and of every image built on it is
  ``guessed``, and the cache stays out of those heals, since a key without
  the bases is not the key other hosts compute. The bases below it, their
  Dockerfiles parsed, keep theirs.
- A build recipe anywhere is what starts the worker; a config without one
  never starts it.

Theory of operation: ``graph.walk_plan`` is a generator that yields each
build step; ``Planner.plan`` reads its Dockerfile, sends the text through
the parse queue, and sends the images back into the walk until it returns
the plan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from ...recipes.graph import HealPlan, walk_plan
from ...recipes.recipe import ConcreteRecipe, Recipe
from ..sources.buildcontext import read_dockerfile_from_disk
from .dockerfileparse import MAX_PARSED, ParseFailed, ParseProcess, dockerfile_images

log = logging.getLogger(__name__)


class Planner:
    """Heal plans, their Dockerfiles parsed in a worker queue of their own."""

    def __init__(self, parser: ParseProcess | None = None) -> None:
        self.parser = parser or ParseProcess(name="plans")

    async def plan(self, image: str, recipes: Sequence[Recipe]) -> HealPlan:
        """``image``'s plan; raises InvalidReference and DependencyCycle as ``walk_plan`` does."""
        walk = walk_plan(image, recipes)
        unknown: set[str] = set()
        try:
            step = next(walk)
            while True:
                try:
                    named = await self._named(step)
                except ParseFailed as exc:
                    log.warning(
                        "heal of %s: its Dockerfile's bases are unknown: %s", step.image, exc
                    )
                    named = None
                    unknown.add(step.image)
                step = walk.send(named)
        except StopIteration as done:
            plan: HealPlan = done.value
        return replace(plan, unknown=frozenset(unknown)) if unknown else plan

    async def _named(self, step: ConcreteRecipe) -> list[str] | None:
        """What ``step``'s Dockerfile names; None when it cannot be read (the
        build will say why); ParseFailed when it cannot be parsed."""
        build = step.build
        text = await asyncio.to_thread(read_dockerfile_from_disk, step, limit=MAX_PARSED)
        if text is None or build is None:
            return None
        return await dockerfile_images(self.parser, text, build.args, build.target)

    async def aclose(self) -> None:
        """Stop the worker (shutdown)."""
        await self.parser.aclose()
