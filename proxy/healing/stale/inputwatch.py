"""Keep each stale-mode tag's inputs hashed as the files change.

Rules:
- The files are watched with ``watchfiles`` (Rust ``notify``: inotify on
  Linux). Only the folders the globs can reach are watched: a glob's literal
  leading folder (recursively, for a glob with wildcards or a named folder),
  or the folder holding a named file (that folder alone). A watch of the
  whole build context would cost a watch per folder of a tree that may hold
  data written at run time.
- A change re-hashes, off the loop, only the files that changed: a changed
  path that names an input file gets a new entry, a gone one loses it. A
  path that is now a folder, or was one holding inputs (a rename, a
  removal), re-hashes that tag's inputs whole.
- A full re-hash of every tag runs every ``rescan`` seconds anyway
  (``[heal] inputs_rescan``): a missed event (an overflowed inotify queue, a
  file system without events) then costs at most that long.
- Whatever goes wrong hashing (a glob that matches nothing, an unreadable
  file) is kept as the tag's ``Sources.error``; nothing is raised to the loop.
- ``on_change(tag)`` runs after a tag's hash changed, so the tracker can
  start the debounce of a proactive rebuild.

Theory of operation: ``track`` sets what is watched; when the set of
folders changes, the ``watchfiles`` tasks are started again over the new
set (one recursive, one not), one change of set at a time. Their batches, and the rescan timer, feed
one queue of (tag, changed paths or None for all) that a single worker
drains, so two hashes of one tag never race.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from ..sources.inputs import FileEntry, InputsError, file_entry, input_entries, named
from .decision import Sources

log = logging.getLogger(__name__)

STEP_MS = 250
"""How often the watch wakes (taking the GIL) to look for changes and for its stop:
watchfiles' default, 50 ms, costs an idle proxy 2.5 ms of CPU a second; at 250 ms
it is a fifth of that, and an edit reaches the hash within about half a second."""

Target = tuple[Path, tuple[str, ...]]
"""Where a tag's globs start, and the globs."""


@dataclass(frozen=True)
class Folders:
    """What to watch: folders whose whole subtree counts, and folders alone."""

    deep: frozenset[Path]
    flat: frozenset[Path]


def _existing(path: Path, root: Path) -> Path:
    """``path`` or its nearest folder that exists, never above ``root``."""
    while path != root and not path.is_dir():
        path = path.parent
    return path


def folders(targets: Iterable[Target]) -> Folders:
    """The folders to watch for these targets (blocking: looks at the disk)."""
    deep: set[Path] = set()
    flat: set[Path] = set()
    for root, patterns in targets:
        if not root.is_dir():
            continue
        for pattern in patterns:
            parts = [part for part in pattern.split("/") if part not in ("", ".")]
            literal = 0
            while literal < len(parts) and not glob.has_magic(parts[literal]):
                literal += 1
            whole = root.joinpath(*parts)
            if literal == len(parts) and not whole.is_dir():
                flat.add(_existing(whole.parent, root))
            else:
                deep.add(_existing(root.joinpath(*parts[:literal]), root))
    deep = {d for d in deep if not any(o in d.parents for o in deep)}
    flat = {f for f in flat if f not in deep and not any(d in f.parents for d in deep)}
    return Folders(frozenset(deep), frozenset(flat))


def hash_whole(target: Target) -> Sources:
    """Every input of a target, hashed (blocking)."""
    try:
        return Sources(input_entries(*target))
    except InputsError as exc:
        return Sources({}, str(exc))


def rehash(target: Target, before: Sources, changed: Iterable[str]) -> Sources:
    """``before`` with the changed relative paths re-hashed alone (blocking); the
    whole target again when a folder is involved (see the rules)."""
    root, patterns = target
    if before.error is not None:
        return hash_whole(target)
    entries: dict[str, FileEntry] = dict(before.entries)
    for relative in changed:
        path = root / relative
        inside = relative + "/"
        if (path.is_dir() and not path.is_symlink()) or any(p.startswith(inside) for p in entries):
            return hash_whole(target)
        if not named(patterns, relative):
            continue
        try:
            entry = file_entry(root, relative) if os.path.lexists(path) else None
        except OSError:
            return hash_whole(target)  # it went away while read; the whole says how
        if entry is None:
            entries.pop(relative, None)
        else:
            entries[relative] = entry
    if not entries:
        return hash_whole(target)  # names the glob that matches nothing now
    return Sources(entries)


def _relative(root: Path, path: str) -> str | None:
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return None
    text = relative.as_posix()
    return None if text == "." else text


class InputWatch:
    """The current sources of every tracked tag, kept current off the loop."""

    def __init__(self, on_change: Callable[[str], None], rescan: float) -> None:
        self.on_change = on_change
        self.rescan = rescan
        self.sources: dict[str, Sources] = {}
        self.targets: dict[str, Target] = {}
        self.version = 0
        """Counts every change of ``sources`` (see ``TagMap.version``)."""
        self._watching = Folders(frozenset(), frozenset())
        self._watchers: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[tuple[str, frozenset[str] | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._rewatching = asyncio.Lock()
        self.hashed = asyncio.Event()
        """Set whenever a hash finished; ``settled`` waits on it."""

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()), loop.create_task(self._rescans())]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._watchers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._watchers = [], []

    async def track(self, targets: Mapping[str, Target]) -> None:
        """Watch these tags' inputs from now on; new or changed ones are hashed."""
        self.version += 1
        for tag in set(self.targets) - set(targets):
            self.sources.pop(tag, None)
        for tag, target in targets.items():
            if self.targets.get(tag) != target:
                self.sources.pop(tag, None)
                self._queue.put_nowait((tag, None))
        self.targets = dict(targets)
        await self._rewatch()

    async def _rewatch(self, restart: bool = False) -> None:
        """Watch the folders the targets reach now, if they differ from those
        watched (or ``restart``). One at a time: two at once would each start
        watchers, and the first's would run on, unstopped."""
        async with self._rewatching:
            wanted = await asyncio.to_thread(folders, self.targets.values())
            if restart or wanted != self._watching:
                await self._watch(wanted)

    async def fresh(self, tag: str) -> Sources | None:
        """The tag's sources hashed whole now, bypassing the watcher (a rebuild
        takes its hash this way before and after its recipe runs)."""
        target = self.targets.get(tag)
        if target is None:
            return None
        return await asyncio.to_thread(hash_whole, target)

    async def _watch(self, wanted: Folders) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watching = wanted
        loop = asyncio.get_running_loop()
        self._watchers = [
            loop.create_task(self._follow(paths, recursive))
            for paths, recursive in ((wanted.deep, True), (wanted.flat, False))
            if paths
        ]

    async def _follow(self, paths: frozenset[Path], recursive: bool) -> None:
        try:
            async for batch in watchfiles.awatch(
                *sorted(paths),
                watch_filter=None,
                debounce=STEP_MS,
                step=STEP_MS,
                recursive=recursive,
            ):
                self._changed(path for _, path in batch)
        except (OSError, RuntimeError) as exc:
            # A folder removed under the watch ends it; the rescan goes on.
            log.warning("stale mode: watching %s stopped: %s", ", ".join(map(str, paths)), exc)

    def _changed(self, paths: Iterable[str]) -> None:
        by_tag: dict[str, set[str]] = {}
        for path in paths:
            for tag, (root, _) in self.targets.items():
                relative = _relative(root, path)
                if relative is not None:
                    by_tag.setdefault(tag, set()).add(relative)
        for tag, changed in by_tag.items():
            self._queue.put_nowait((tag, frozenset(changed)))

    async def _rescans(self) -> None:
        while True:
            await asyncio.sleep(self.rescan)
            for tag in self.targets:
                self._queue.put_nowait((tag, None))
            # Folders made since, or a watch that ended.
            await self._rewatch(restart=any(t.done() for t in self._watchers))

    async def _worker(self) -> None:
        while True:
            tag, changed = await self._queue.get()
            target = self.targets.get(tag)
            if target is None:
                continue
            before = self.sources.get(tag)
            try:
                if before is None or changed is None:
                    after = await asyncio.to_thread(hash_whole, target)
                else:
                    after = await asyncio.to_thread(rehash, target, before, changed)
            except Exception:
                log.exception("stale mode: hashing the inputs of %s failed", tag)
                continue
            if self.targets.get(tag) != target:
                continue  # re-targeted meanwhile; its own hash is queued
            self.sources[tag] = after
            self.version += 1
            self.hashed.set()
            self.hashed = asyncio.Event()
            if before is not None and (before.hash, before.error) != (after.hash, after.error):
                log.info("stale mode: the inputs of %s changed", tag)
                self.on_change(tag)

    async def settled(self, tag: str) -> Sources | None:
        """The tag's sources once hashed at least once (None: not tracked)."""
        while tag in self.targets and tag not in self.sources:
            await self.hashed.wait()
        return self.sources.get(tag)
