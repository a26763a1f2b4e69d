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

- Nothing here parses a Dockerfile. What a build's Dockerfile names comes
  from the caller (``NamedImages``; ``dockerfile.from_images`` does the
  parsing): importing the graph must not load the ``dockerfile`` package,
  whose native parser ``serve`` runs only in its worker process.

Theory of operation: ``check_cycles`` walks the entry-to-entry graph that
literal ``depends_on`` strings give, depth first. ``walk_plan`` walks the
image-to-image graph for one image, instantiating recipes as it goes; it is
a generator that hands out each build step and is handed back what that
step's Dockerfile names, so the caller decides where files are read and
parsed (``heal_plan`` here, in the caller's thread; the healer through its
parse worker). Each image is visited once, so each Dockerfile is asked for
once per plan. The ``HealPlan`` it returns keeps every step and its direct
dependencies, so a base's own plan is a view of it (``HealPlan.of``), never
a second walk.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace

from .patterns import Pattern, find_recipe, instantiate
from .recipe import ConcreteRecipe, Recipe
from .reference import InvalidReference, normalize

Parse = Callable[[str, Mapping[str, str], str | None], list[str]]
"""``dockerfile.from_images``: a Dockerfile's text, build args and target to the images it names."""
ReadDockerfile = Callable[[ConcreteRecipe], str | None]
"""A build's Dockerfile text, or None when it is not a build or cannot be read."""
NamedImages = Callable[[ConcreteRecipe], Sequence[str] | None]
"""The images a build step's Dockerfile names, or None when they are unknown."""


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


def named_by(read_dockerfile: ReadDockerfile, parse: Parse) -> NamedImages:
    """Read, then parse, in the caller's own thread (``check``, ``heal``'s report).

    Each step is read and parsed once however often it is asked for: ``check``
    walks one chain for its plan, its cache reference and its report, and a
    Dockerfile it cannot use is warned about once, not once a walk.
    """
    known: dict[tuple[int, str], list[str] | None] = {}

    def named(concrete: ConcreteRecipe) -> list[str] | None:
        key = (concrete.recipe.index, concrete.image)
        if key not in known:
            text = read_dockerfile(concrete)
            build = concrete.build
            known[key] = (
                None if text is None or build is None else parse(text, build.args, build.target)
            )
        return known[key]

    return named


def dependencies(
    concrete: ConcreteRecipe, recipes: Sequence[Recipe], named: Sequence[str] | None
) -> list[str]:
    """The normalised images to heal before ``concrete``, in order.

    ``named`` is what the build's Dockerfile names, or None when it is not a
    build or the file cannot be read or parsed (then only ``depends_on`` counts).
    """
    found = list(concrete.depends_on)
    if concrete.build is not None and named is not None:
        for image in named:
            try:
                base = normalize(image)
            except InvalidReference:
                continue  # the build will report it far better than we could
            if find_recipe(recipes, base) is not None:
                found.append(base)
    return [image for image in dict.fromkeys(found) if image != concrete.image]


@dataclass(frozen=True)
class HealPlan:
    """The chain that heals ``image``, worked out once and shared by its bases' heals."""

    image: str
    """The normalised image this plan heals; its own step is the last."""
    recipes: Sequence[Recipe]
    """The config's entries it was worked out from: a reload makes it stale."""
    found: Mapping[str, ConcreteRecipe]
    """Every image of the chain that a recipe makes, filled in."""
    needs: Mapping[str, tuple[str, ...]]
    """Each of those images' dependencies (``dependencies``), in order."""
    unknown: frozenset[str] = frozenset()
    """The images whose Dockerfile could not be parsed: their bases were left out."""

    @property
    def guessed(self) -> bool:
        """Some Dockerfile of this image's own chain could not be parsed.

        Asked of each step's plan (``of``): a base whose chain was parsed whole is
        not guessed because an image built on it was.
        """
        return any(step.image in self.unknown for step in self.steps)

    @property
    def step(self) -> ConcreteRecipe:
        """The recipe of ``image`` itself (KeyError when no recipe makes it)."""
        return self.found[self.image]

    @property
    def bases(self) -> tuple[str, ...]:
        """What ``image`` waits for: its own dependencies, recipe or not."""
        return self.needs.get(self.image, ())

    @property
    def steps(self) -> list[ConcreteRecipe]:
        """The recipes that would heal ``image``, bases first, each image once."""
        order: dict[str, None] = {}

        def visit(target: str) -> None:
            if target in order or target not in self.found:
                return
            for dependency in self.needs[target]:
                visit(dependency)
            order[target] = None

        visit(self.image)
        return [self.found[image] for image in order]

    def of(self, base: str) -> HealPlan:
        """The plan of one of the chain's images, without walking again."""
        return replace(self, image=base)


PlanWalk = Generator[ConcreteRecipe, Sequence[str] | None, HealPlan]


def walk_plan(image: str, recipes: Sequence[Recipe]) -> PlanWalk:
    """Work out ``image``'s plan; yields each build step, to be sent what it names.

    Raises InvalidReference for a bad ``image`` (or a capture that makes a bad
    reference) and DependencyCycle.
    """
    found: dict[str, ConcreteRecipe] = {}
    needs: dict[str, tuple[str, ...]] = {}
    finished: set[str] = set()

    def visit(target: str, path: list[str]) -> Generator[ConcreteRecipe, Sequence[str] | None]:
        if target in path:
            raise DependencyCycle([*path[path.index(target) :], target], "dependency")
        if target in finished:
            return
        match = find_recipe(recipes, target)
        if match is not None:
            concrete = instantiate(match[0], target, match[1])
            named = (yield concrete) if concrete.build is not None else None
            needs[target] = tuple(dependencies(concrete, recipes, named))
            for dependency in needs[target]:
                yield from visit(dependency, [*path, target])
            found[target] = concrete
        finished.add(target)

    normal = normalize(image)
    yield from visit(normal, [])
    return HealPlan(normal, recipes, found, needs)


def drive(walk: PlanWalk, named: NamedImages) -> HealPlan:
    """Run ``walk`` to its end, answering each step with ``named``."""
    try:
        concrete = next(walk)
        while True:
            concrete = walk.send(named(concrete))
    except StopIteration as done:
        plan: HealPlan = done.value
        return plan


def heal_plan(image: str, recipes: Sequence[Recipe], named: NamedImages) -> list[ConcreteRecipe]:
    """The recipes that would heal ``image``, bases first, each image once.

    Empty when no recipe matches ``image``. Raises what ``walk_plan`` raises.
    """
    return drive(walk_plan(image, recipes), named).steps
