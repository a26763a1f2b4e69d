"""Which images must be healed before which.

Everything that orders heals lives here. An image is healed after the images
it depends on, because its recipe would otherwise fail on, or worse pull a
different copy of, a base that the same prune deleted.

Rules:

- An image depends on its recipe's explicit ``depends_on`` and, for a build
  recipe, on every FROM image of its Dockerfile (with its build args) that
  some recipe matches. A FROM image no recipe matches is left to the build
  itself: the proxy has no way to produce it.
- Dependencies are compared normalised, kept once in first-seen order, and an
  image never depends on itself (a Dockerfile may well build ``app`` FROM an
  older ``app``).
- A cycle is an error. Among explicit, placeholder-free ``depends_on`` it is
  found when the config loads; through placeholders or FROM lines it can only
  show once an image is known, so it is found when the chain is worked out.

Theory of operation: ``check_cycles`` walks the entry-to-entry graph that
literal ``depends_on`` strings give, depth first. ``heal_plan`` walks the
image-to-image graph for one image, instantiating recipes and reading
Dockerfiles as it goes, and lists each image after everything it needs. The
runtime healer does its own walk (it needs locks and waits per image) but
builds it from the same ``dependencies``, so both see the same edges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .dockerfile import from_images
from .patterns import Pattern, find_recipe, instantiate
from .recipe import ConcreteRecipe, Recipe
from .reference import InvalidReference, normalize


class DependencyCycle(Exception):
    """Images, or entries, that each wait for the next and so can never heal."""

    def __init__(self, cycle: Sequence[str], what: str) -> None:
        super().__init__(f"{' -> '.join(cycle)}: {what} cycle")
        self.cycle = tuple(cycle)


def check_cycles(recipes: Sequence[Recipe]) -> None:
    """Raise DependencyCycle for a cycle through literal ``depends_on`` entries."""
    edges: dict[int, list[int]] = {}
    for recipe in recipes:
        edges[recipe.index] = []
        for dependency in recipe.depends_on:
            if Pattern.compile(dependency).is_template:
                continue
            found = find_recipe(recipes, dependency)
            if found is not None:
                edges[recipe.index].append(found[0].index)

    finished: set[int] = set()

    def visit(index: int, path: list[int]) -> None:
        if index in path:
            cycle = [*path[path.index(index) :], index]
            raise DependencyCycle([f"images[{i}]" for i in cycle], "depends_on")
        if index in finished:
            return
        for dependency in edges[index]:
            visit(dependency, [*path, index])
        finished.add(index)

    for index in edges:
        visit(index, [])


def dependencies(
    concrete: ConcreteRecipe, recipes: Sequence[Recipe], dockerfile_text: str | None
) -> list[str]:
    """The normalised images to heal before ``concrete``, in order.

    ``dockerfile_text`` is the build's Dockerfile, or None when it is not a
    build or the file cannot be read (then only ``depends_on`` counts).
    """
    found = list(concrete.depends_on)
    if concrete.build is not None and dockerfile_text is not None:
        for image in from_images(dockerfile_text, concrete.build.args, concrete.build.target):
            try:
                base = normalize(image)
            except InvalidReference:
                continue  # the build will report it far better than we could
            if find_recipe(recipes, base) is not None:
                found.append(base)
    return [image for image in dict.fromkeys(found) if image != concrete.image]


def heal_plan(
    image: str,
    recipes: Sequence[Recipe],
    read_dockerfile: Callable[[ConcreteRecipe], str | None],
) -> list[ConcreteRecipe]:
    """The recipes that would heal ``image``, bases first, each image once.

    Empty when no recipe matches ``image``. Raises InvalidReference for a bad
    ``image`` (or a capture that makes a bad reference) and DependencyCycle.
    """
    plan: list[ConcreteRecipe] = []
    finished: set[str] = set()

    def visit(target: str, path: list[str]) -> None:
        if target in path:
            raise DependencyCycle([*path[path.index(target) :], target], "dependency")
        if target in finished:
            return
        found = find_recipe(recipes, target)
        if found is not None:
            concrete = instantiate(found[0], target, found[1])
            text = read_dockerfile(concrete) if concrete.build is not None else None
            for dependency in dependencies(concrete, recipes, text):
                visit(dependency, [*path, target])
            plan.append(concrete)
        finished.add(target)

    visit(normalize(image), [])
    return plan
