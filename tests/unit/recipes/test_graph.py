from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.recipes.dockerfile import from_images
from proxy.recipes.graph import (
    DependencyCycle,
    NamedImages,
    check_cycles,
    dependencies,
    drive,
    heal_plan,
    named_by,
    walk_plan,
)
from proxy.recipes.patterns import instantiate
from proxy.recipes.recipe import ConcreteRecipe, Recipe


def pull(index: int, match: str, *depends_on: str) -> Recipe:
    return Recipe(index=index, match=match, kind="pull", pull=match, depends_on=depends_on)


def build(index: int, match: str, *depends_on: str) -> Recipe:
    context = f"/ctx/{index}"
    return Recipe(
        index=index,
        match=match,
        kind="build",
        build={"context": context, "args": {"V": "{v}"} if "{v}" in match else {}},
        depends_on=depends_on,
    )


def dockerfiles(texts: dict[int, str]) -> tuple[list[int], NamedImages]:
    """Parsed Dockerfiles served by entry index, logging which were asked for."""
    calls: list[int] = []

    def read(concrete: ConcreteRecipe) -> str | None:
        calls.append(concrete.recipe.index)
        return texts.get(concrete.recipe.index)

    return calls, named_by(read, from_images)


def test_no_cycle_passes() -> None:
    check_cycles([pull(0, "a", "b"), pull(1, "b", "c"), pull(2, "c"), pull(3, "d", "a", "c")])


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        (
            [pull(0, "a", "b"), pull(1, "b", "a")],
            "images[0] -> images[1] -> images[0]: depends_on cycle",
        ),
        ([pull(0, "a", "docker.io/library/a:latest")], "images[0] -> images[0]: depends_on cycle"),
        (
            [pull(0, "x"), pull(1, "a", "b"), pull(2, "b", "c"), pull(3, "c", "b")],
            "images[2] -> images[3] -> images[2]: depends_on cycle",
        ),
    ],
)
def test_cycles_are_named_by_entry(recipes: list[Recipe], message: str) -> None:
    with pytest.raises(DependencyCycle) as raised:
        check_cycles(recipes)
    assert str(raised.value) == message


def test_templated_depends_on_waits_for_heal_time() -> None:
    check_cycles([pull(0, "a:{t}", "a:{t}")])


def test_dependencies_explicit_then_from_lines() -> None:
    recipes = [build(0, "app:{v}", "tools"), pull(1, "base:{t}"), pull(2, "tools")]
    concrete = instantiate(recipes[0], "app:2", {"v": "2"})
    text = "ARG V\nFROM base:$V\nFROM unknown:1\nFROM tools\nFROM app:2\nFROM Bad:x\nFROM base:2\n"
    named = named_by(lambda concrete: text, from_images)(concrete)
    assert dependencies(concrete, recipes, named) == [
        "docker.io/library/tools:latest",
        "docker.io/library/base:2",
    ]
    assert dependencies(concrete, recipes, None) == ["docker.io/library/tools:latest"]


def test_heal_plan_is_bases_first_each_once() -> None:
    recipes = [build(0, "app"), build(1, "left"), build(2, "right"), pull(3, "root"), pull(4, "z")]
    calls, read = dockerfiles({0: "FROM left\nFROM right\n", 1: "FROM root", 2: "FROM root"})
    plan = heal_plan("app:latest", recipes, read)
    assert [step.image for step in plan] == [
        "docker.io/library/root:latest",
        "docker.io/library/left:latest",
        "docker.io/library/right:latest",
        "docker.io/library/app:latest",
    ]
    assert calls == [0, 1, 2]  # never asked for a pull entry's Dockerfile
    assert heal_plan("nothing", recipes, read) == []


def test_heal_plan_finds_cycles_through_templates_and_from_lines() -> None:
    recipes = [build(0, "a:{v}"), pull(1, "b:{t}", "a:{t}")]
    _, read = dockerfiles({0: "ARG V\nFROM b:$V\n"})
    with pytest.raises(
        DependencyCycle, match=r"a:1 -> docker.io/library/b:1 -> .*a:1: dependency cycle"
    ):
        heal_plan("a:1", recipes, read)


def test_concrete_paths_come_from_the_recipe() -> None:
    (step,) = heal_plan("app", [build(0, "app")], lambda concrete: None)
    assert step.build is not None and step.build.context == Path("/ctx/0")


def test_one_walk_asks_for_each_dockerfile_once_and_serves_every_base() -> None:
    """A diamond whose root is built twice over: each Dockerfile read once, and a
    base's plan is the plan a walk of its own would have found."""
    recipes = [build(0, "app"), build(1, "left"), build(2, "right"), build(3, "root")]
    texts = {0: "FROM left\nFROM right\n", 1: "FROM root", 2: "FROM root", 3: "FROM scratch"}
    calls, named = dockerfiles(texts)
    plan = drive(walk_plan("app", recipes), named)
    assert sorted(calls) == [0, 1, 2, 3]
    assert plan.bases == ("docker.io/library/left:latest", "docker.io/library/right:latest")
    for step in plan.steps:
        _, own = dockerfiles(texts)
        assert plan.of(step.image).steps == heal_plan(step.image, recipes, own)
    assert plan.step.image == "docker.io/library/app:latest"


def test_the_graph_loads_no_parser() -> None:
    """serve imports the graph; the parser's native library is its worker's alone."""
    probe = (
        "import sys\n"
        "import proxy.recipes.graph, proxy.service.app, proxy.service.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dockerfile'"
        " or m == 'proxy.recipes.dockerfile'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_each_step_is_read_and_parsed_once() -> None:
    calls, named = dockerfiles({0: "FROM base\n", 1: "FROM scratch\n"})
    recipes = [build(0, "app"), build(1, "base")]
    for _ in range(3):
        heal_plan("app", recipes, named)
    assert calls == [0, 1]
