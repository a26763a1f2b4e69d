"""sessionheal: the verdict on a held Dockerfile heals its managed images, in order, once each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.healing.claims.healaccess import Refusal
from proxy.healing.claims.sessionheal import SessionHeal
from proxy.healing.core.dockerfileparse import MAX_PARSED, ParseFailed, ParseProcess
from proxy.healing.core.healer import HealFailed
from proxy.healing.core.planner import Planner
from proxy.recipes.config import Config, parse_config
from proxy.recipes.graph import HealPlan
from proxy.recipes.recipe import Recipe

CONFIG = parse_config(
    {
        "images": [
            {"match": "base:{tag}", "command": ["true"]},
            {"match": "tools:1", "command": ["true"]},
        ]
    },
    base_dir=Path("/"),
)


class FakeHealer:
    def __init__(self, failing: str | None = None) -> None:
        self.parser = ParseProcess()
        self.ensured: list[tuple[str, str]] = []
        self.failing = failing
        self.recipes: tuple[Recipe, ...] = ()

    async def ensure(self, image: str, trigger: str) -> None:
        self.ensured.append((image, trigger))
        if image == self.failing:
            raise HealFailed(f"docker-heal-proxy: cannot heal {image}: the recipe broke")

    async def plan(self, image: str) -> HealPlan:
        return await Planner(self.parser).plan(image, self.recipes)


def allowed(method: str, route: str) -> str | None:
    return None


def verdict(
    text: str, healer: FakeHealer, config: Config = CONFIG, refusal: Refusal = allowed
) -> str | None:
    healer.recipes = config.recipes

    async def main() -> str | None:
        try:
            return await SessionHeal(lambda: config, healer).held(text.encode(), refusal)  # type: ignore[arg-type]
        finally:
            await healer.parser.aclose()

    return asyncio.run(main())


DOCKERFILE = """\
ARG TAG=1
ARG FLAVOUR
FROM base:${TAG} AS build
COPY --from=tools:1 /bin/x /x
FROM other:1
FROM base:${FLAVOUR}-slim
FROM build
RUN --mount=type=bind,from=base:2,target=/b true
COPY --from=build /x /x
"""


def test_managed_images_heal_in_file_order_with_the_build_trigger() -> None:
    healer = FakeHealer()
    assert verdict(DOCKERFILE, healer) is None
    # Stages are not images; other:1 has no recipe; base:${FLAVOUR} needs a build arg.
    assert healer.ensured == [
        ("docker.io/library/base:1", "build"),
        ("docker.io/library/tools:1", "build"),
        ("docker.io/library/base:2", "build"),
    ]


def test_a_failed_heal_is_the_reason_and_stops_there() -> None:
    healer = FakeHealer(failing="docker.io/library/tools:1")
    reason = verdict(DOCKERFILE, healer)
    assert reason == "docker-heal-proxy: cannot heal docker.io/library/tools:1: the recipe broke"
    assert len(healer.ensured) == 2


def test_no_recipes_lets_every_build_go() -> None:
    healer = FakeHealer()
    assert verdict(DOCKERFILE, healer, parse_config({}, base_dir=Path("/"))) is None
    assert healer.ensured == []


def test_a_dockerfile_the_parser_will_not_take_raises_for_the_wire_to_splice() -> None:
    with pytest.raises(ParseFailed):
        verdict("FROM base:1\n" + "#" * MAX_PARSED, FakeHealer())


def test_the_limit_is_the_parser_s() -> None:
    assert SessionHeal.limit == MAX_PARSED


def test_a_base_is_healed_only_if_the_callers_policy_allows_its_kind() -> None:
    """A BuildKit build is allowed (/session, /grpc), but a pull recipe makes
    its base, and a pull heal needs POST /images/create: the build fails saying so."""
    pulled = parse_config({"images": [{"match": "base:{tag}", "pull": True}]}, base_dir=Path("/"))

    def no_pulls(method: str, route: str) -> str | None:
        return f"no {method} {route}" if route == "/images/create" else None

    healer = FakeHealer()
    reason = verdict("FROM base:1\n", healer, pulled, no_pulls)
    assert reason == "no POST /images/create, which a pull heal of docker.io/library/base:1 needs"
    assert healer.ensured == []
