"""When to reconcile, and what a reconcile heals: the pure decisions of proactive healing.

Rules:
- A reconcile compares the images the daemon lists with the tags proactive
  recipes want: each placeholder-free ``match`` of a ``proactive = true``
  entry, and each remembered tag whose first matching entry is proactive.
  The one that matches decides, as for a heal.
- Events only say *that* something changed, never *what*: dockerd 20.10's
  ``untag`` names the image id, not the tag. So every trigger leads to the
  same full comparison.
- A burst of image events (a prune deletes hundreds) leads to one reconcile,
  ``quiet`` seconds after the last of them; a daemon that never goes quiet
  still gets one ``max_delay`` after the burst began.
- Start, a reconnected event stream and a reload ask for a reconcile at once;
  one also runs every ``interval`` in case an event was lost.
- The queue is bases first, each image once, and holds only images that are
  not there: a missing base that is not itself proactive still comes back
  before the proactive image built FROM it.
- A tag whose proactive heal failed is left out until the next periodic
  reconcile, so a broken recipe is not retried on every image event its own
  failed build causes.

Theory of operation: ``Schedule`` is a clock-free state machine (times are
passed in); ``wanted``, ``present`` and ``queue`` are plain functions.
``proactive`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...recipes.patterns import Pattern, find_recipe
from ...recipes.recipe import Recipe
from ...recipes.reference import InvalidReference, normalize

TRIGGER_ACTIONS = frozenset({"untag", "delete", "prune"})
"""Image event actions that can mean a managed image went away."""


@dataclass
class Schedule:
    """When the next reconcile is due; all times are one monotonic clock's."""

    quiet: float = 5.0
    max_delay: float = 60.0
    interval: float = 900.0
    last_run: float = float("-inf")
    burst_start: float | None = None
    last_event: float = 0.0
    asap: bool = True
    """True at start: the first reconcile runs at once."""

    def event(self, now: float) -> None:
        if self.burst_start is None:
            self.burst_start = now
        self.last_event = now

    def request(self) -> None:
        self.asap = True

    def next_at(self) -> float:
        if self.asap:
            return float("-inf")
        due = self.last_run + self.interval
        if self.burst_start is not None:
            due = min(due, self.last_event + self.quiet, self.burst_start + self.max_delay)
        return due

    def ran(self, now: float) -> None:
        self.last_run = now
        self.burst_start = None
        self.asap = False


def is_trigger(event: Mapping[str, Any]) -> bool:
    """Does this event (from ``/events``) possibly mean an image was removed?"""
    return event.get("Type") == "image" and event.get("Action") in TRIGGER_ACTIONS


def wanted(recipes: Sequence[Recipe], remembered: Iterable[str]) -> set[str]:
    """The normalised tags that proactive entries should keep present."""
    tags = {
        normalize(recipe.match)
        for recipe in recipes
        if recipe.proactive and not Pattern.compile(recipe.match).is_template
    }
    for image in remembered:
        found = find_recipe(recipes, image)
        if found is not None and found[0].proactive:
            tags.add(image)
    return tags


def present(images: Iterable[Mapping[str, Any]]) -> set[str]:
    """The normalised tags in a ``GET /images/json`` answer."""
    tags: set[str] = set()
    for image in images:
        for tag in image.get("RepoTags") or ():
            try:
                tags.add(normalize(tag))
            except InvalidReference:
                continue  # "<none>:<none>" on old daemons
    return tags


def queue(missing: Iterable[str], plans: Mapping[str, Sequence[str]], have: set[str]) -> list[str]:
    """Images to heal, bases first, each once; ``plans`` maps a tag to its heal plan."""
    order: dict[str, None] = {}
    for image in sorted(missing):
        for step in plans.get(image, (image,)):
            if step not in have:
                order.setdefault(step)
    return list(order)
