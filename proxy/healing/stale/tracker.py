"""Stale mode for the life of the process: what is stale now, from memory.

Rules:
- Only while some entry has ``rebuild_when = "stale"``; otherwise nothing
  is watched, listed or recorded, and ``judge`` says fresh.
- ``decide(tag)`` answers from memory (the tag map, the records, the hashes
  the input watch keeps): a create of a present, fresh image costs no daemon
  round trip and no file I/O. ``judge(tag)`` completes what memory lacks:
  one inspect while the tag map is dirty, one inspect (for ``Created``) to
  adopt an image the proxy did not make, or the wait for a first hash.
- A decision is kept with the versions of the facts it came from (the tag
  map's, the records', the hashes', the config's); until one changes, a
  create of the same tag reads it back rather than walk the rule again.
- The tags watched are every placeholder-free ``match`` of a stale-mode
  entry, and each tag the daemon has that a stale-mode template matches
  first (``app:{group}``: the groups that exist). Each is watched with its
  own filled-in sources.
- An adopted image is judged by its own inputs: which managed bases it was
  built on is not known, so a base rebuilt after it counts only from its
  first rebuild by the proxy.
- An adoption never replaces a record: a heal that made the image records
  it while its tag event may already be adopting it, and the heal knows
  (a build cache hit has an old ``Created``).
- The tracker is the healer's ``StaleMode`` (``core.healer``): ``reason``,
  ``before`` and ``made``. ``made`` records what a heal or rebuild made,
  from the sources hashed *before* its recipe ran (``before``), and hashes
  them again: a change meanwhile goes to ``on_inputs_changed``. The records are written to
  ``state_dir`` at once (a rebuild is rare; losing its record would make
  the image look hand-built), as a state file (``core.statefiles``).
- The tag map is relisted off the loop after an event that names no tag
  (``tagmap``), at start and when the event stream comes back. After each
  listing, and each tag event that moved a watched tag, what is not known
  about the watched tags is learnt (an adoption, say), so ``status`` and
  the ``stale_images`` gauge are right before anyone runs the image.
- ``on_inputs_changed(tag)`` runs when a watched tag's sources changed, for
  proactive rebuilds; ``failures`` keeps why the last stale rebuild of a
  tag failed, for ``status``.

Theory of operation: one object on one loop; its tasks are the input
watch's and a relist task started on demand (one at a time, again if
dirtied meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...recipes.config import Config
from ...recipes.patterns import Pattern, find_recipe, instantiate
from ...recipes.reference import InvalidReference, normalize
from ..core.statefiles import read_state, save_state
from ..sources.engine import Engine, EngineError
from .decision import Decision, Fresh, Sources, Stale, Unknown, adopt, created_seconds, decide, made
from .inputwatch import InputWatch, Target, hash_whole
from .records import ImageRecord, RecordStore
from .tagmap import TagMap

log = logging.getLogger(__name__)

FILE_NAME = "image-records.json"
MEMO_CAP = 4096
"""Tags whose normal form and mode are kept, at most; past it they start over."""
JUDGE_STEPS = 8
"""Facts ``judge`` may fetch for one answer: a tag and a few bases."""


def enabled(config: Config) -> bool:
    return any(recipe.rebuild_when == "stale" for recipe in config.recipes)


def load(state_dir: Path) -> RecordStore:
    return read_state(state_dir, FILE_NAME, RecordStore.loads, RecordStore, "image records")


class StaleTracker:
    def __init__(
        self,
        config: Callable[[], Config],
        engine: Engine,
        state_dir: Path,
        on_inputs_changed: Callable[[str], None] = lambda tag: None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.state_dir = state_dir
        self.on_inputs_changed = on_inputs_changed
        self.tags = TagMap()
        self.records = RecordStore()
        self.watch = InputWatch(self._changed, config().heal.inputs_rescan)
        self.failures: dict[str, str] = {}
        """Why the last stale rebuild of a tag failed; cleared by one that worked."""
        self._relist: asyncio.Task[None] | None = None
        self._retargets: set[asyncio.Task[None]] = set()
        self._started = False
        self.persist = True
        """False for ``check``, which looks and must change nothing."""
        self._modes: dict[str, bool] = {}
        """``stale_mode`` by tag, for the config in ``_modes_of``: matching a tag
        against the recipes costs more than the whole rest of a decision."""
        self._modes_of: Config | None = None
        self._tags: dict[str, str] = {}
        """Normalised tags by the reference a create names, for the same reason."""
        self._decided: dict[str, tuple[tuple[int, int, int, int], Decision]] = {}
        """The last decision per tag, and the versions of the facts it was drawn
        from: a create of an unchanged tag reads it back (see the rules)."""

    # -- the facts decision asks for --------------------------------------------

    def image_id(self, tag: str) -> str | None:
        return self.tags.image_id(tag)

    def record(self, image_id: str) -> ImageRecord | None:
        return self.records.get(image_id)

    def sources(self, tag: str) -> Sources | None:
        return self.watch.sources.get(tag)

    def stale_mode(self, tag: str) -> bool:
        config = self.config()
        if config is not self._modes_of:
            self._modes.clear()
            self._modes_of = config
        mode = self._modes.get(tag)
        if mode is None:
            found = find_recipe(config.recipes, tag)
            mode = found is not None and found[0].rebuild_when == "stale"
            if len(self._modes) >= MEMO_CAP:
                self._modes.clear()
            self._modes[tag] = mode
        return mode

    def tag(self, reference: str) -> str:
        """``reference`` normalised, from memory when a create named it before;
        raises InvalidReference."""
        tag = self._tags.get(reference)
        if tag is None:
            tag = normalize(reference)
            if len(self._tags) >= MEMO_CAP:
                self._tags.clear()
            self._tags[reference] = tag
        return tag

    # -- what the healer, the create path and status ask ------------------------

    def decide(self, tag: str) -> Decision:
        """From memory only; ``Fresh`` for a tag not in stale mode."""
        config = self.config()
        key = (self.tags.version, self.records.version, self.watch.version, id(config))
        kept = self._decided.get(tag)
        if kept is not None and kept[0] == key:
            return kept[1]
        found = decide(tag, self) if self.stale_mode(tag) else Fresh()
        if len(self._decided) >= MEMO_CAP:
            self._decided.clear()
        self._decided[tag] = (key, found)
        return found

    async def judge(self, tag: str) -> Decision:
        """``decide``, with what memory lacks fetched (see the rules)."""
        for _ in range(JUDGE_STEPS):
            found = self.decide(tag)
            if not isinstance(found, Unknown):
                return found
            try:
                await self._learn(found)
            except EngineError as exc:
                return Fresh(note=f"cannot tell whether {found.tag} is stale: {exc}")
        return Fresh(note=f"cannot tell whether {tag} is stale yet")

    async def _learn(self, unknown: Unknown) -> None:
        tag = unknown.tag
        if unknown.need == "hash":
            if tag not in self.watch.targets:
                await self._retarget(extra=(tag,))
            await self.watch.settled(tag)
            return
        found = await self.engine.inspect(tag)
        image_id = str(found["Id"]) if found is not None else ""
        self.tags.set(tag, image_id)
        if unknown.need == "adopt" and found is not None:
            await self._adopt(tag, image_id, str(found.get("Created", "")))

    async def _adopt(self, tag: str, image_id: str, created: str) -> None:
        sources = await self.watch.fresh(tag) if tag in self.watch.targets else None
        if sources is None:
            await self._retarget(extra=(tag,))
            sources = await self.watch.settled(tag)
        if sources is None or sources.error is not None:
            return  # decide says why, from the sources
        try:
            seconds = created_seconds(created)
        except ValueError:
            seconds = 0.0  # no usable time: only a rebuild can vouch for it
        record = adopt(seconds, sources, {}, time.time())
        if self.records.get(image_id) is not None:
            return  # a heal recorded it meanwhile: it knows better than a Created time
        log.info(
            "stale mode: adopted %s (%s) %s",
            tag,
            image_id[:19],
            f"as stale: {record.reason}" if record.reason else "as fresh",
        )
        await self._put(image_id, record)

    async def reason(self, tag: str) -> str | None:
        """Why the present ``tag`` must be rebuilt, or None (``judge``; the healer asks)."""
        found = await self.judge(tag)
        return found.reason if isinstance(found, Stale) else None

    async def made(self, tag: str, before: Sources, bases: Sequence[str]) -> None:
        """A heal or rebuild made ``tag`` from ``before`` on ``bases``: record it, then
        hash the sources again; an edit made while it ran leads to one more rebuild."""
        await self._record(tag, before, bases)
        after = await self.before(tag)
        if after is not None and after.hash != before.hash:
            log.info("rebuild of %s: its inputs changed while it ran; one more follows", tag)
            self.on_inputs_changed(tag)

    async def _record(self, tag: str, before: Sources, bases: Sequence[str]) -> None:
        if before.error is not None or not self.stale_mode(tag):
            return
        try:
            found = await self.engine.inspect(tag)
        except EngineError as exc:
            log.warning("stale mode: cannot record what %s is now: %s", tag, exc)
            return
        if found is None:
            return
        image_id = str(found["Id"])
        self.tags.set(tag, image_id)
        self.failures.pop(tag, None)
        await self._put(image_id, made(before, await self._base_ids(bases), time.time()))
        if tag not in self.watch.targets:
            await self._retarget()

    async def _base_ids(self, bases: Iterable[str]) -> dict[str, str]:
        """The image ids of ``bases`` now (one inspect each), for the record."""
        ids: dict[str, str] = {}
        for base in bases:
            try:
                found = await self.engine.inspect(base)
            except EngineError:
                continue
            if found is not None:
                ids[base] = str(found["Id"])
        return ids

    async def before(self, tag: str) -> Sources | None:
        """A stale-mode tag's sources hashed whole, now: before (and after) a recipe."""
        if not self.stale_mode(tag):
            return None
        if tag not in self.watch.targets:
            await self._retarget(extra=(tag,))
        return await self.watch.fresh(tag)

    def failed(self, tag: str, reason: str) -> None:
        self.failures[tag] = reason

    def stale(self) -> dict[str, str]:
        """Each watched tag that is stale now, and why (from memory)."""
        found: dict[str, str] = {}
        for tag in sorted(self.watch.targets):
            decision = self.decide(tag)
            if isinstance(decision, Stale):
                found[tag] = decision.reason
        return found

    def view(self) -> dict[str, Any]:
        problems = {
            tag: s.error for tag, s in sorted(self.watch.sources.items()) if s.error is not None
        }
        adopted = {}
        for tag in sorted(self.watch.targets):
            record = self.records.get(self.tags.ids.get(tag, ""))
            if record is not None and record.adopted:
                adopted[tag] = f"stale: {record.reason}" if record.reason else "fresh"
        return {
            "enabled": enabled(self.config()),
            "watched": sorted(self.watch.targets),
            "stale": self.stale(),
            "adopted": adopted,
            "inputs_problems": problems,
            "failed_rebuilds": dict(sorted(self.failures.items())),
            "tag_map": "relisting" if self.tags.dirty else "current",
            "records": len(self.records.records),
        }

    # -- events, lifecycle --------------------------------------------------------

    def event(self, event: Mapping[str, Any]) -> None:
        """One image event from the stream the proxy follows."""
        if not self._started:
            return
        before = dict(self.tags.ids)
        if self.tags.event(event):
            self._relist_soon()
        elif self.tags.ids != before:
            self._retarget_soon()  # a new tag to watch, or a watched one moved

    def connected(self) -> None:
        """The event stream (re)opened: what happened meanwhile is unknown."""
        if self._started:
            self.tags.dirtied()
            self._relist_soon()

    async def start(self) -> None:
        self.records = await asyncio.to_thread(load, self.state_dir)
        self.watch.start()
        self._started = True
        if enabled(self.config()):
            self._relist_soon()
        await self._retarget()

    def reconfigure(self) -> None:
        """After a reload: the rescan period, the tags to watch, a fresh listing."""
        self.watch.rescan = self.config().heal.inputs_rescan
        self.tags.dirtied()
        self._relist_soon()
        self._retarget_soon()

    async def stop(self) -> None:
        self._started = False
        tasks = [*self._retargets, *([self._relist] if self._relist is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.watch.stop()

    def _relist_soon(self) -> None:
        if self._relist is None or self._relist.done():
            self._relist = asyncio.get_running_loop().create_task(self._relisting())

    async def _relisting(self) -> None:
        while True:
            while self.tags.dirty and enabled(self.config()):
                generation = self.tags.listing()
                try:
                    images = await self.engine.list_images()
                except EngineError as exc:
                    log.warning("stale mode: cannot list images: %s", exc)
                    return  # until the next event or reconnection; judge inspects meanwhile
                self.tags.listed(images, generation)
            await self._retarget()
            # An event that dirtied the map during the retarget found this task
            # running and started none: relist for it here, or nothing would.
            if not (self.tags.dirty and enabled(self.config())):
                return

    def targets(self, extra: tuple[str, ...] = ()) -> dict[str, Target]:
        """Each stale-mode tag to watch, with its filled-in sources."""
        recipes = self.config().recipes
        if not enabled(self.config()):
            return {}
        tags = {
            normalize(recipe.match)
            for recipe in recipes
            if recipe.rebuild_when == "stale" and not Pattern.compile(recipe.match).is_template
        }
        tags.update(tag for tag in (*self.tags.ids, *extra) if self.stale_mode(tag))
        found: dict[str, Target] = {}
        for tag in tags:
            match = find_recipe(recipes, tag)
            if match is None:
                continue
            try:
                found[tag] = instantiate(match[0], tag, match[1]).sources
            except InvalidReference:
                continue
        return found

    def _retarget_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._retarget())
        self._retargets.add(task)
        task.add_done_callback(self._retargets.discard)

    async def _retarget(self, extra: tuple[str, ...] = ()) -> None:
        """Watch what is to be watched, and learn what the watched tags are now:
        an image first seen (tagged by hand, loaded) is adopted here, off any
        create, so ``status`` can say it is stale before anyone runs it."""
        await self.watch.track(self.targets(extra))
        for tag in sorted(self.watch.targets):
            if isinstance(self.decide(tag), Unknown) and not self.tags.dirty:
                await self.judge(tag)

    def _changed(self, tag: str) -> None:
        self.on_inputs_changed(tag)

    async def _put(self, image_id: str, record: ImageRecord) -> None:
        self.records.put(image_id, record)
        if not self.persist:
            return
        try:
            await asyncio.to_thread(save_state, self.state_dir, FILE_NAME, self.records.dumps())
            self.records.dirty = False
        except OSError as exc:
            log.warning("cannot save image records in %s: %s", self.state_dir, exc)


async def judge_now(config: Config, engine: Engine, state_dir: Path, tag: str) -> Decision:
    """What a running proxy would decide for ``tag``, from the daemon, the records
    in ``state_dir`` and the files as they are now; writes nothing (``check``)."""
    tracker = StaleTracker(lambda: config, engine, state_dir)
    tracker.persist = False
    tracker.records = await asyncio.to_thread(load, state_dir)
    tracker.tags.listed(await engine.list_images(), tracker.tags.listing())
    tracker.watch.targets = tracker.targets((tag,))
    for watched, target in tracker.watch.targets.items():
        tracker.watch.sources[watched] = await asyncio.to_thread(hash_whole, target)
    return await tracker.judge(tag)
