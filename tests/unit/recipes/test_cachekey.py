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


BASE = ConcreteRecipe(
    Recipe(index=1, match="base:{t}", kind="command"),
    "docker.io/library/base:v1",
    "command",
    command=("./base.sh",),
    workdir=Path("/src/base"),
)


def key(
    recipe: ConcreteRecipe = CONCRETE,
    inputs: str = "",
    platform: str = "linux/amd64",
    bases: tuple[tuple[ConcreteRecipe, str], ...] = (),
    config_dir: Path | None = None,
) -> str:
    plan = [*(base for base, _ in bases), recipe]
    hashes = [*(digest for _, digest in bases), inputs]
    return cache_reference("reg:5000/heal-cache", plan, hashes, platform, config_dir)


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
        key(replace(CONCRETE, workdir=Path("/other")), config_dir=Path("/")),
        key(replace(CONCRETE, inputs=("src/**",))),
        key(replace(CONCRETE, depends_on=("docker.io/library/base:latest",))),
        key(inputs="sha256:1"),
        key(platform="linux/arm64"),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src")))),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src"), args={"X": "1"}))),
        key(replace(CONCRETE, kind="build", build=BuildSpec(Path("/src"), target="t"))),
        key(bases=((BASE, ""),)),
        key(bases=((replace(BASE, command=("./base.sh", "v2")), ""),)),
        key(bases=((BASE, "sha256:1"),)),
    }
    assert len(keys) == 15


def test_a_changed_base_anywhere_below_changes_the_key() -> None:
    """A dependent built on an old base must not be served once the base's recipe changed."""
    root = replace(BASE, image="docker.io/library/root:v1", command=("./root.sh",))
    first = key(bases=((root, ""), (BASE, "")))
    assert key(bases=((replace(root, env={"X": "1"}), ""), (BASE, ""))) != first
    assert key(bases=((root, "sha256:2"), (BASE, ""))) != first
    assert key(bases=((root, ""), (BASE, ""))) == first


def test_the_same_config_in_two_folders_gives_one_key() -> None:
    """A fleet shares one config, checked out wherever each host likes."""

    def under(folder: str) -> str:
        moved = replace(CONCRETE, workdir=Path(folder) / "app")
        built = replace(
            moved, kind="build", build=BuildSpec(Path(folder) / "app" / "ctx", args={"X": "1"})
        )
        base = replace(BASE, workdir=Path(folder) / "base")
        return key(built, bases=((base, ""),), config_dir=Path(folder))

    assert under("/srv/heal") == under("/home/ops/checkout")
    here = Path("/srv/heal")
    assert key(replace(CONCRETE, workdir=here / "app"), config_dir=here) != key(
        replace(CONCRETE, workdir=here / "other"), config_dir=here
    ), "where the recipe runs, relative to its config, still counts"


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
        tag = cache_tag(image, "{}", "linux/amd64")
        assert TAG_RE.fullmatch(tag), tag
        assert len(tag) <= 128
