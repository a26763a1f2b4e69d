"""memory: which tags are kept, for how long and how many."""

from __future__ import annotations

from proxy.healing.background.memory import TagMemory, worth_remembering
from proxy.recipes.recipe import Recipe

RECIPES = (
    Recipe(index=0, match="base:latest", kind="command", command=("x",)),
    Recipe(index=1, match="agent:{group}", kind="command", command=("x",)),
)
DAY = 86400.0


def test_only_tags_of_template_recipes_are_worth_remembering() -> None:
    assert worth_remembering(RECIPES, "docker.io/library/agent:g1")
    assert not worth_remembering(RECIPES, "docker.io/library/base:latest")
    assert not worth_remembering(RECIPES, "docker.io/library/other:1")


def test_a_tag_unused_for_forget_after_is_forgotten() -> None:
    tags = TagMemory()
    tags.remember("a", 0.0)
    tags.remember("b", 10 * DAY)
    tags.dirty = False
    assert tags.forget_stale(30 * DAY + 1, 30 * DAY) == ["a"]
    assert tags.tags() == ["b"] and tags.dirty
    assert tags.forget_stale(30 * DAY + 2, 30 * DAY) == []


def test_using_a_tag_again_keeps_it() -> None:
    tags = TagMemory()
    tags.remember("a", 0.0)
    tags.remember("a", 20 * DAY)
    assert tags.forget_stale(40 * DAY, 30 * DAY) == []


def test_the_list_is_capped_oldest_use_out_first() -> None:
    tags = TagMemory(cap=3)
    for i, name in enumerate("abcd"):
        tags.remember(name, float(i))
    assert tags.tags() == ["b", "c", "d"]
    tags.remember("b", 10.0)  # used again: now the newest
    tags.remember("e", 11.0)
    assert tags.tags() == ["b", "d", "e"]


def test_a_proactive_heal_or_a_start_adds_a_tag_but_does_not_refresh_it() -> None:
    tags = TagMemory()
    tags.remember("a", 0.0)
    for night in range(1, 40):  # pruned and rebuilt every night, never run
        tags.remember("a", night * DAY, refresh=False)
    tags.remember("new", 39 * DAY, refresh=False)
    assert tags.forget_stale(40 * DAY, 30 * DAY) == ["a"]
    assert tags.tags() == ["new"]
