"""What ``docker-heal-proxy check [IMAGE]`` tells a person.

Everything the proxy says about its recipes before any heal runs lives here:
the config as the proxy understood it, and for one image the chain of heals
it would run. It exists so that a wrong ``match``, a missing base or a
surprising order shows up while someone is editing the config, not when a
container create hangs at 3 a.m.

Rules:

- Text only, for people; nothing here is meant to be parsed.
- A recipe's ``env`` shows its names, never its values: env is where a recipe
  keeps tokens, and ``check`` output ends up in tickets and chat.
- Without IMAGE: every entry in file order (first match wins), with its
  normalised pattern, what it runs and what it waits for. Dockerfile bases are
  listed only for placeholder-free build entries; a template's Dockerfile can
  depend on the image, so ``check IMAGE`` is the way to see those.
- With IMAGE: the entry that matches and its captures (and any entry above
  it that a capture kept from matching: ``app:v{x}`` refuses ``x=..``), the
  recipe filled in,
  the cache reference a heal would try first (for a cached entry), the heal
  order, bases first, and whether it is healed proactively after a prune. A
  bad IMAGE or a cycle is reported in the text rather than raised: it is
  exactly what ``check`` is for.
- With IMAGE of a ``rebuild_when = "stale"`` entry: whether the image the tag
  names now is stale and why (the first input that differs, a base rebuilt
  after it), as a running proxy would judge it from the records in
  ``state_dir`` and the files as they are now.
- A ``min_free`` that cannot be checked (the daemon's root folder is not
  visible from here) is said once, under every proactive config.
- Files root would not trust (``trust``) come first, one line each, as the
  caller worded them: refused as root, warnings for another user. The
  listeners' warnings (``listeners.warnings``) follow them.

Theory of operation: ``describe`` only formats; matching, filling in and
ordering come from ``patterns`` and ``graph``, the same calls the healer
makes, so ``check`` cannot drift from what a heal would do. What each
Dockerfile names (read and parsed by the caller) and the cache reference
(which hashes the inputs and asks the daemon its platform) are passed in,
so the text can be produced without touching disk or a daemon.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence

from ..recipes.config import Config, format_duration
from ..recipes.graph import DependencyCycle, NamedImages, dependencies, heal_plan
from ..recipes.patterns import Pattern, build_spec, find_recipe, instantiate
from ..recipes.recipe import BuildSpec, ConcreteRecipe, Recipe
from ..recipes.reference import InvalidReference, normalize

CacheReference = Callable[[ConcreteRecipe], str]
"""The cache reference a heal of a cached recipe would try, or why none."""
Staleness = Callable[[str], str]
"""Whether the image a stale-mode tag names now is stale, and why, in a few words."""


def describe(
    config: Config,
    image: str | None,
    named: NamedImages,
    cache_reference: CacheReference,
    disk: str | None = None,
    untrusted: Sequence[str] = (),
    staleness: Staleness | None = None,
) -> str:
    """The ``check`` report: all recipes, or how ``image`` would be healed.

    ``disk`` is a sentence about ``min_free`` (see the rules), or None;
    ``untrusted`` the lines about files root would not trust (and the
    listeners' warnings after them, see ``listeners.warnings``); ``staleness``
    answers for an image of a stale-mode entry (see the rules).
    """
    source = f"config {config.path}" if config.path else "no config file: built-in defaults"
    notes = [*untrusted]
    if disk and any(r.proactive for r in config.recipes):
        notes.append(f"warning: {disk}")
    if image is None:
        return "\n".join([source, *notes, *_recipes(config.recipes, named)])
    lines = _image(config.recipes, image, named, cache_reference, staleness)
    return "\n".join([source, *notes, *lines])


def _recipes(recipes: tuple[Recipe, ...], named: NamedImages) -> list[str]:
    if not recipes:
        return ["no [[images]] entries: nothing can be healed"]
    lines = [f"{len(recipes)} [[images]] entries; the first that matches an image heals it"]
    for recipe in recipes:
        pattern = Pattern.compile(recipe.match)
        fields = [("matches", pattern.normalized)]
        fields += _fields(recipe, build_spec(recipe, _unfilled(pattern)))
        if recipe.kind == "build" and pattern.is_template:
            fields.append(("bases", "found per image from the Dockerfile; see check IMAGE"))
        elif recipe.kind == "build":
            concrete = instantiate(recipe, pattern.normalized, {})
            found = dependencies(concrete, recipes, named(concrete))
            bases = [base for base in found if base not in concrete.depends_on]
            fields.append(("bases", ", ".join(bases) or "none with a recipe in the Dockerfile"))
        lines += ["", f"images[{recipe.index}]  {recipe.match}", *_table(fields)]
    return lines


def _image(
    recipes: tuple[Recipe, ...],
    image: str,
    named: NamedImages,
    cache_reference: CacheReference,
    staleness: Staleness | None,
) -> list[str]:
    try:
        normal = normalize(image)
        found = find_recipe(recipes, normal)
        if found is None:
            return [f"no recipe matches {image} ({normal})", *_refusals(recipes, normal)]
        recipe, captures = found
        concrete = instantiate(recipe, image, captures)
        plan = heal_plan(image, recipes, named)
    except (InvalidReference, DependencyCycle) as error:
        return [f"{image}: cannot heal: {error}"]
    with_captures = ", ".join(f"{name}={value}" for name, value in sorted(captures.items()))
    lines = [
        f"{concrete.image} is matched by {recipe.name}",
        *([f"  captures  {with_captures}"] if with_captures else []),
        *_refusals(recipes[: recipes.index(recipe)], normal),
        "",
        "recipe, filled in:",
        *_table(
            _fields(concrete, concrete.build)
            + ([("cache key", cache_reference(concrete))] if recipe.cache else [])
        ),
        "",
        "heal order, bases first (each is skipped if the image already exists):",
    ]
    for step, item in enumerate(plan, 1):
        lines.append(f"  {step}. {item.image}  by images[{item.recipe.index}] ({item.kind})")
    lines += ["", _proactive(recipe, concrete.image)]
    if recipe.rebuild_when == "stale" and staleness is not None:
        lines.append(f"stale: {staleness(concrete.image)}")
    return lines


def _refusals(recipes: tuple[Recipe, ...], image: str) -> list[str]:
    """The entries of the image's shape that a capture kept from matching it."""
    refused = ((recipe, Pattern.compile(recipe.match).refusal(image)) for recipe in recipes)
    return [f"  {recipe.name} does not match: {reason}" for recipe, reason in refused if reason]


def _proactive(recipe: Recipe, image: str) -> str:
    if not recipe.proactive:
        return f"proactive: no ({recipe.name} heals only when a create or pull asks)"
    if Pattern.compile(recipe.match).is_template:
        return (
            f"proactive: yes, once the proxy has seen {image} exist (a heal, a create "
            "through the proxy, or present at start); forgotten after [heal] forget_after unused"
        )
    return f"proactive: yes, {image} is healed right after a prune"


def _unfilled(pattern: Pattern) -> dict[str, str]:
    """Captures that put each placeholder back, to show a template as written."""
    return {name: f"{{{name}}}" for name in pattern.placeholders}


def _fields(item: Recipe | ConcreteRecipe, build: BuildSpec | None) -> list[tuple[str, str]]:
    """What a recipe runs, shared by the template and the filled-in view."""
    fields: list[tuple[str, str]] = []
    if item.command:
        fields += [("command", shlex.join(item.command)), ("workdir", str(item.workdir))]
    if build is not None:
        fields.append(("build", _build(build)))
    if item.pull is not None:
        fields.append(("pull", item.pull))
    if item.load is not None:
        fields.append(("load", str(item.load)))
    if item.env:
        # Names only: env is where recipes keep tokens, and check output gets pasted.
        fields.append(("env", " ".join(item.env)))
    if item.depends_on:
        fields.append(("depends on", ", ".join(item.depends_on)))
    if item.inputs:
        fields.append(("inputs", " ".join(item.inputs)))
    if item.cache:
        fields.append(("cached", "yes: tries [heal] cache before running"))
    recipe = item if isinstance(item, Recipe) else item.recipe
    if recipe.rebuild_when == "stale":
        sources = "its archive" if item.kind == "load" else "its inputs"
        fields.append(("rebuilt", f"when stale: {sources} or a managed base changed"))
        fields.append(("on stale", _ON_STALE[recipe.on_stale]))
    fields.append(("timeout", format_duration(item.timeout)))
    if isinstance(item, Recipe) and item.proactive:
        fields.append(("proactive", "yes: healed right after a prune"))
    return fields


_ON_STALE = {
    "rebuild": "rebuild first; if that fails, run the old image",
    "strict": "rebuild first; if that fails, the create fails",
    "background": "run the old image at once and rebuild behind it",
}


def _build(build: BuildSpec) -> str:
    options = [f"-f {build.dockerfile}"]
    if build.target is not None:
        options.append(f"--target {build.target}")
    options += [f"--build-arg {pair}" for pair in _pairs(build.args)]
    return f"{build.context} ({', '.join(options)})"


def _pairs(values: Mapping[str, str]) -> list[str]:
    return [f"{key}={shlex.quote(value)}" for key, value in values.items()]


def _table(fields: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in fields)
    return [f"  {label.ljust(width)}  {value}" for label, value in fields]
