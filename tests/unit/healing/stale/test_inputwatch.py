"""inputwatch: which folders are watched, what a change re-hashes, and the watch itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.healing.sources.inputs import inputs_hash
from proxy.healing.stale.inputwatch import InputWatch, folders, hash_whole, rehash

GLOBS = ("src/**/*.py", "Dockerfile", "conf")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name, text in {
        "Dockerfile": "FROM scratch\n",
        "src/a.py": "a\n",
        "src/deep/b.py": "b\n",
        "conf/x": "x\n",
        "data/big": "not an input\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_only_the_folders_the_globs_reach_are_watched(tree: Path) -> None:
    found = folders([(tree, GLOBS)])
    assert found.deep == {tree / "src", tree / "conf"}
    assert found.flat == {tree}  # for Dockerfile: that folder alone, not data/


def test_a_changed_file_is_rehashed_alone_and_matches_a_whole_hash(tree: Path) -> None:
    before = hash_whole((tree, GLOBS))
    (tree / "src" / "a.py").write_text("a2\n")
    (tree / "src" / "new.py").write_text("n\n")
    (tree / "conf" / "x").unlink()
    (tree / "conf" / "y").write_text("y\n")
    (tree / "data" / "big").write_text("changed, but no input\n")
    changed = ["src/a.py", "src/new.py", "conf/x", "conf/y", "data/big"]
    after = rehash((tree, GLOBS), before, changed)
    assert after.hash == inputs_hash(tree, GLOBS) != before.hash
    assert sorted(after.entries) == [
        "Dockerfile",
        "conf/y",
        "src/a.py",
        "src/deep/b.py",
        "src/new.py",
    ]


def test_a_folder_moved_away_rehashes_the_whole(tree: Path) -> None:
    before = hash_whole((tree, GLOBS))
    (tree / "src" / "deep").rename(tree / "elsewhere")
    after = rehash((tree, GLOBS), before, ["src/deep"])
    assert after.hash == inputs_hash(tree, GLOBS)
    assert "src/deep/b.py" not in after.entries


def test_a_glob_that_matches_nothing_is_kept_as_the_error(tree: Path) -> None:
    (tree / "Dockerfile").unlink()
    found = hash_whole((tree, GLOBS))
    assert found.error is not None and "'Dockerfile' matches no file" in found.error


async def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


def test_an_edit_is_seen_and_reported_once_per_change(tree: Path) -> None:
    asyncio.run(an_edit_is_seen(tree))


async def an_edit_is_seen(tree: Path) -> None:
    changes: list[str] = []
    reported = asyncio.Event()

    def changed(tag: str) -> None:
        changes.append(tag)
        reported.set()

    watch = InputWatch(changed, rescan=3600)
    watch.start()
    try:
        await watch.track({"app": (tree, GLOBS)})
        first = await watch.settled("app")
        assert first is not None and first.hash == inputs_hash(tree, GLOBS)
        (tree / "data" / "big").write_text("no input\n")
        await write_until_reported(tree / "src" / "deep" / "b.py", "b2\n", reported)
        assert changes == ["app"]
        assert watch.sources["app"].hash == inputs_hash(tree, GLOBS)
        # One worker takes the events in order: once this edit is reported, every
        # rewrite of "b2" before it was taken too, and none of them was reported.
        reported.clear()
        await write_until_reported(tree / "src" / "a.py", "a2\n", reported)
        assert changes == ["app", "app"]
        assert watch.sources["app"].hash == inputs_hash(tree, GLOBS)
    finally:
        await watch.stop()


async def write_until_reported(path: Path, text: str, reported: asyncio.Event) -> None:
    """Write ``text`` to ``path`` until the watch reports a change.

    watchfiles gives no sign that its inotify watch is set, and a write before
    that is never seen (only the hourly rescan would find it). Writing the same
    text again is a new event, and changes the hash only the first time it is
    seen, so this reports one change however many writes it takes.
    """
    for _ in range(30):
        path.write_text(text)
        try:
            async with asyncio.timeout(1):
                await reported.wait()
            return
        except TimeoutError:
            continue
    raise AssertionError(f"no change reported for {path} in 30 writes")


def test_the_periodic_rescan_finds_what_no_event_said(tree: Path) -> None:
    asyncio.run(the_rescan_finds_it(tree))


async def the_rescan_finds_it(tree: Path) -> None:
    changes: list[str] = []
    watch = InputWatch(changes.append, rescan=0.2)
    watch.start()
    try:
        await watch.track({"app": (tree, ("data/big",))})  # a flat watch on data/
        await watch.settled("app")
        await watch._watch(folders([]))  # as if the watch had missed everything
        watch._watching = folders([(tree, ("data/big",))])
        (tree / "data" / "big").write_text("changed\n")
        await wait_for(lambda: changes)
        assert watch.sources["app"].hash == inputs_hash(tree, ("data/big",))
    finally:
        await watch.stop()


def test_tracks_at_once_leave_one_watch_per_kind(tree: Path) -> None:
    """Two retargets at once (a burst of tag events) must not each start watchers and
    leave the first's running, holding inotify watches nothing stops."""
    asyncio.run(tracks_at_once(tree))


def follows() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "InputWatch._follow"
    ]


async def tracks_at_once(tree: Path) -> None:
    watch = InputWatch(lambda tag: None, rescan=3600)
    watch.start()
    try:
        await watch.track({"app": (tree, GLOBS)})
        await asyncio.gather(
            watch.track({"app": (tree, ("src/**/*.py",))}),
            watch.track({"app": (tree, ("conf", "Dockerfile"))}),
        )
        assert len(follows()) == len(watch._watchers)
    finally:
        await watch.stop()
    assert follows() == []
