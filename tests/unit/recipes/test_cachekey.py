"""The cache key: one tag per image, recipe, sources and platform."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from proxy.recipes.cachekey import cache_reference, cache_tag, readable_prefix, recipe_definition
from proxy.recipes.recipe import BuildSpec, ConcreteRecipe, Recipe

TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RECIPE = Recipe(index=0, match="app:{t}", kind="command", timeout=60)
CONCRETE = ConcreteRecipe(
    RECIPE,
    "docker.io/library/app:v1",
    "command",
    command=("./build.sh", "v1"),
    workdir=Path("/src"),
    env={"A": "1"},
    timeout=60,
)


def key(recipe: ConcreteRecipe = CONCRETE, inputs: str = "", platform: str = "linux/amd64") -> str:
    return cache_reference("reg:5000/heal-cache", recipe, inputs, platform)


def test_the_key_is_a_readable_prefix_and_16_hex() -> None:
    reference = key()
    repository, tag = reference.rsplit(":", 1)
    assert repository == "reg:5000/heal-cache"
    assert re.fullmatch(r"app-v1-[0-9a-f]{16}", tag)
    assert key() == reference, "the same inputs give the same key on every host"


def test_everything_that_changes_the_image_changes_the_key() -> None:
    keys = {
        key(),
        key(replace(CONCRETE, image="docker.io/library/app:v2")),
        key(replace(CONCRETE, command=("./build.sh", "v2"))),
        key(replace(CONCRETE, env={"A": "2"})),
        key(replace(CONCRETE, workdir=Path("/other"))),
        key(replace(CONCRETE, inputs=("src/**",))),
        key(replace(CONCRETE, depends_on=("docker.io/library/base:latest",))),
        key(inputs="sha256:1"),
        key(platform="linux/arm64"),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src")))),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src"), args={"X": "1"}))),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src"), target="t"))),
    }
    assert len(keys) == 12


def test_the_timeout_does_not_change_the_key() -> None:
    """Giving a slow host more time does not make it build what others cached."""
    assert key(replace(CONCRETE, timeout=3600)) == key()


def test_definition_is_canonical_json() -> None:
    reordered = replace(CONCRETE, env={"B": "2", "A": "1"})
    same = replace(CONCRETE, env={"A": "1", "B": "2"})
    assert recipe_definition(reordered) == recipe_definition(same)


def test_prefix_fits_the_tag_grammar() -> None:
    assert readable_prefix("reg.example/team/worker:1.0") == "team_worker-1.0"
    assert readable_prefix("docker.io/library/app:latest") == "app-latest"
    long = "docker.io/" + "/".join(["a" * 60] * 4) + ":" + "t" * 128
    for image in (long, "docker.io/library/app@sha256:" + "0" * 64):
        tag = cache_tag(image, "{}", "", "linux/amd64")
        assert TAG_RE.fullmatch(tag), tag
        assert len(tag) <= 128
