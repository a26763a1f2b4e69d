"""tagmap: the tag -> image id map, from events and listings."""

from __future__ import annotations

from typing import Any

from proxy.healing.stale.tagmap import TagMap

APP = "docker.io/library/app:latest"


def tag_event(name: str, image_id: str) -> dict[str, Any]:
    return {
        "Type": "image",
        "Action": "tag",
        "Actor": {"ID": image_id, "Attributes": {"name": name}},
    }


def listed(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"Id": image_id, "RepoTags": [tag]} for tag, image_id in pairs]


def test_nothing_is_known_before_the_first_listing() -> None:
    tags = TagMap()
    assert tags.image_id(APP) is None
    tags.listed(listed(("app:latest", "sha256:1")), tags.listing())
    assert tags.image_id(APP) == "sha256:1"
    assert tags.image_id("docker.io/library/other:latest") == ""


def test_a_tag_event_moves_the_tag_in_place() -> None:
    tags = TagMap()
    tags.listed([], tags.listing())
    assert not tags.event(tag_event("app", "sha256:2"))
    assert tags.image_id(APP) == "sha256:2"


def test_events_that_name_no_tag_make_the_map_dirty_until_relisted() -> None:
    for action in ("untag", "delete", "load", "import", "pull"):
        tags = TagMap()
        tags.listed(listed(("app:latest", "sha256:1")), tags.listing())
        assert tags.event({"Type": "image", "Action": action, "Actor": {"ID": "sha256:1"}})
        assert tags.image_id(APP) is None
        tags.listed(listed(("app:latest", "sha256:3")), tags.listing())
        assert tags.image_id(APP) == "sha256:3"


def test_a_listing_never_rolls_back_an_event_that_came_during_it() -> None:
    tags = TagMap()
    started = tags.listing()
    tags.event(tag_event("app:latest", "sha256:new"))
    tags.listed(listed(("app:latest", "sha256:old")), started)
    assert tags.image_id(APP) == "sha256:new"
    started = tags.listing()
    tags.event({"Type": "image", "Action": "untag", "Actor": {"ID": "sha256:new"}})
    tags.listed(listed(("app:latest", "sha256:new")), started)
    assert tags.image_id(APP) is None


def test_other_events_and_odd_ones_change_nothing() -> None:
    tags = TagMap()
    tags.listed([], tags.listing())
    assert not tags.event({"Type": "container", "Action": "delete"})
    assert not tags.event({"Type": "image", "Action": "tag", "Actor": {"ID": "x"}})
    assert not tags.event(tag_event("Not Valid", "sha256:1"))
    assert not tags.event({"Type": "image", "Action": "save"})
    assert tags.ids == {} and not tags.dirty


def test_an_inspect_while_dirty_answers_for_its_tag_until_the_next_dirtying_event() -> None:
    tags = TagMap()
    tags.set(APP, "sha256:1")
    assert tags.image_id(APP) == "sha256:1"
    assert tags.image_id("docker.io/library/other:latest") is None
    tags.event({"Type": "image", "Action": "delete", "Actor": {"ID": "sha256:1"}})
    assert tags.image_id(APP) is None
    tags.set(APP, "")
    assert tags.image_id(APP) == "" and APP not in tags.ids
