"""decision: fresh, stale (and why), or what is still needed, from facts in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.healing.sources.inputs import FileEntry
from proxy.healing.stale.decision import (
    Fresh,
    Sources,
    Stale,
    Unknown,
    adopt,
    created_seconds,
    decide,
    made,
)
from proxy.healing.stale.records import ImageRecord

BASE, APP = "docker.io/library/base:latest", "docker.io/library/app:g1"


def entry(content: str, mtime: float = 0.0) -> FileEntry:
    return FileEntry(b"100644", len(content), content.encode().hex().ljust(64, "0"), mtime)


def sources(**files: str) -> Sources:
    return Sources({name.replace("_", "/"): entry(text) for name, text in files.items()})


@dataclass
class World:
    ids: dict[str, str | None] = field(default_factory=dict)
    records: dict[str, ImageRecord] = field(default_factory=dict)
    current: dict[str, Sources] = field(default_factory=dict)

    def image_id(self, tag: str) -> str | None:
        return self.ids.get(tag, "")

    def record(self, image_id: str) -> ImageRecord | None:
        return self.records.get(image_id)

    def sources(self, tag: str) -> Sources | None:
        return self.current.get(tag)

    def stale_mode(self, tag: str) -> bool:
        return tag in self.current


def world() -> World:
    """base and app, each built by the proxy from its sources, app on base."""
    found = World(
        ids={BASE: "sha256:b1", APP: "sha256:a1"},
        current={BASE: sources(base_f="1"), APP: sources(src_a="1", src_b="1")},
    )
    found.records["sha256:b1"] = made(found.current[BASE], {}, 0.0)
    found.records["sha256:a1"] = made(found.current[APP], {BASE: "sha256:b1"}, 0.0)
    return found


def test_an_image_made_from_the_current_sources_is_fresh() -> None:
    assert decide(APP, world()) == Fresh()


def test_the_first_input_that_differs_is_named() -> None:
    facts = world()
    facts.current[APP] = sources(src_a="1", src_b="2", src_c="new")
    assert decide(APP, facts) == Stale("src/b changed")
    facts.current[APP] = sources(src_b="1")
    assert decide(APP, facts) == Stale("src/a was removed")
    facts.current[APP] = sources(src_a="1", src_aa="1", src_b="1")
    assert decide(APP, facts) == Stale("src/aa was added")


def test_a_record_without_file_keys_still_finds_the_change() -> None:
    facts = world()
    facts.records["sha256:a1"] = ImageRecord(facts.records["sha256:a1"].inputs, None, {}, 0.0)
    facts.current[APP] = sources(src_a="2", src_b="1")
    assert decide(APP, facts) == Stale("its inputs changed")


def test_a_base_rebuilt_after_the_image_or_stale_itself_makes_it_stale() -> None:
    facts = world()
    facts.ids[BASE] = "sha256:b2"
    assert decide(APP, facts) == Stale(f"its base {BASE} was rebuilt after it")
    facts = world()
    facts.current[BASE] = sources(base_f="2")
    assert decide(APP, facts) == Stale(f"its base {BASE} is stale: base/f changed")
    assert decide(BASE, facts) == Stale("base/f changed")


def test_a_missing_base_is_no_reason() -> None:
    facts = world()
    facts.ids[BASE] = ""
    assert decide(APP, facts) == Fresh()


def test_what_is_not_known_yet_is_said() -> None:
    facts = world()
    facts.ids[APP] = None
    assert decide(APP, facts) == Unknown("inspect", APP)
    facts = world()
    facts.ids[BASE] = None
    assert decide(APP, facts) == Unknown("inspect", BASE)
    facts = world()
    facts.ids[APP] = "sha256:hand-built"
    assert decide(APP, facts) == Unknown("adopt", APP)
    facts = world()
    del facts.current[APP]
    assert decide(APP, facts) == Unknown("hash", APP)


def test_a_missing_image_is_left_to_the_missing_path() -> None:
    facts = world()
    facts.ids[APP] = ""
    assert decide(APP, facts) == Fresh()


def test_sources_that_cannot_be_hashed_make_nothing_stale() -> None:
    facts = world()
    facts.current[APP] = Sources({}, "inputs: 'src' matches no file under /x")
    assert decide(APP, facts) == Fresh(note="inputs: 'src' matches no file under /x")


def test_an_image_built_by_hand_after_the_last_change_is_adopted_fresh() -> None:
    now = Sources({"src/a": entry("1", mtime=100.0), "src/b": entry("1", mtime=90.0)})
    fresh = adopt(created=150.0, sources=now, bases={}, now=200.0)
    assert fresh.inputs == now.hash and not fresh.reason and fresh.adopted
    stale = adopt(created=95.0, sources=now, bases={}, now=200.0)
    assert stale.reason == "built before src/a last changed (adopted stale)"
    facts = World(ids={APP: "sha256:h"}, records={"sha256:h": stale}, current={APP: now})
    assert decide(APP, facts) == Stale("built before src/a last changed (adopted stale)")
    facts.records["sha256:h"] = fresh
    assert decide(APP, facts) == Fresh()


def test_created_reads_docker_timestamps() -> None:
    assert created_seconds("1970-01-01T00:01:40.5Z") == 100.5
    assert created_seconds("2026-12-06T22:43:34.123456789Z") == 1796597014.123456789
    assert created_seconds("1970-01-01T00:00:07Z") == 7.0
