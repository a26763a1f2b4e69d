"""memory: which tags are kept, for how long, how many, and the file they live in."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.healing import memory
from proxy.healing.memory import TagMemory, worth_remembering
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


def test_the_file_reads_back_in_order_of_use(tmp_path: Path) -> None:
    tags = TagMemory()
    tags.remember("new", 5.0)
    tags.remember("old", 1.0)
    tags.remember("new", 9.0)
    memory.save(tmp_path / "state", tags.dumps())
    path = tmp_path / "state" / memory.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    again = memory.load(tmp_path / "state")
    assert again.last_used == {"old": 1.0, "new": 9.0} and not again.dirty
    again.cap = 1
    again.remember("x", 10.0)
    assert again.tags() == ["x"]


def test_a_missing_file_is_an_empty_memory(tmp_path: Path) -> None:
    assert memory.load(tmp_path).tags() == []


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"last_used": []}', '{"last_used": {"a": "x"}}', '{"last_used": {"a": true}}'],
)
def test_a_damaged_file_is_an_empty_memory_with_a_warning(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / memory.FILE_NAME).write_text(text)
    assert memory.load(tmp_path).tags() == []
    assert "cannot read remembered tags" in caplog.text


def test_a_proactive_heal_or_a_start_adds_a_tag_but_does_not_refresh_it() -> None:
    tags = TagMemory()
    tags.remember("a", 0.0)
    for night in range(1, 40):  # pruned and rebuilt every night, never run
        tags.remember("a", night * DAY, refresh=False)
    tags.remember("new", 39 * DAY, refresh=False)
    assert tags.forget_stale(40 * DAY, 30 * DAY) == ["a"]
    assert tags.tags() == ["new"]
