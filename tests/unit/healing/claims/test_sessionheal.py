"""sessionheal: the verdict on a held Dockerfile heals its managed images, in order, once each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.healing.claims.sessionheal import SessionHeal
from proxy.healing.core.dockerfileparse import MAX_PARSED, ParseFailed, ParseProcess
from proxy.healing.core.healer import HealFailed
from proxy.recipes.config import parse_config

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

    async def ensure(self, image: str, trigger: str) -> None:
        self.ensured.append((image, trigger))
        if image == self.failing:
            raise HealFailed(f"docker-heal-proxy: cannot heal {image}: the recipe broke")


def verdict(text: str, healer: FakeHealer, config: object = CONFIG) -> str | None:
    async def main() -> str | None:
        try:
            return await SessionHeal(lambda: config, healer).held(text.encode())  # type: ignore[arg-type,return-value]
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
