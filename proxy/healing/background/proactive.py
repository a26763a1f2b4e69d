"""Proactive heals: put managed images back right after a prune, before anyone asks.

Rules:
- Only ``proactive = true`` entries, and only while at least one exists:
  rebuilding at once gives back the disk a prune freed, so it is opt-in. The
  memory of tags (``memory``) is kept either way, so turning it on later
  finds the groups already known.
- Reconciles run at start, when the event stream (re)connects, a quiet
  moment after a burst of image events, after a reload, and every
  ``reconcile_interval`` (``reconcile.Schedule``).
- Background heals never delay a client. They run through the healer's one
  single flight (a create for the same tag joins the running heal instead
  of starting another), at most ``background_parallel`` at once, each only
  when a heal slot is free, and never ahead of a client waiting for a slot
  (``slots``). A tag still queued here is healed on demand by a create as
  if this queue did not exist; the queue then finds it present and skips it.
- Never fight a disk-pressure cleanup: while the daemon's root folder has
  less free space than ``min_free`` a background heal waits, re-checking
  every ``DISK_RECHECK`` seconds (and at once after a reload). When that
  folder is not visible from here (rootless, Docker-in-Docker) the limit
  cannot be checked and is ignored, with a warning.
- A background heal that fails is logged and left out until the next
  periodic reconcile (see ``reconcile``); creates still heal it on demand.
- The plans a reconcile works out to order its queue (the healer's, its
  Dockerfiles parsed in the healer's worker) are the plans its heals use:
  nothing is worked out twice.
- Stale mode: the event stream runs while any entry has ``rebuild_when =
  "stale"`` too, proactive or not, and hands every image event to the
  tracker. A ``proactive`` stale-mode tag whose inputs changed is queued
  ``inputs_debounce`` seconds after the last change (one rebuild per burst
  of saves; none if a reload turns ``proactive`` off meanwhile), and each
  reconcile queues the proactive tags found stale
  (changes made while the proxy was down). They go through the same
  workers, slots and ``min_free`` as every background heal.

Theory of operation: four kinds of task (the event watcher, the schedule,
the background workers, the memory flusher) share this object's state on one
event loop, so no locks are needed. Each runs under ``_guarded``, which logs
and restarts it should it fail unexpectedly. Turning proactive heals off by
a reload stops all but the flusher. The decisions are pure functions in
``reconcile`` and ``memory``; this module does the waiting and the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ...recipes.config import Config, MinFree
from ...recipes.graph import DependencyCycle, HealPlan
from ...recipes.patterns import find_recipe
from ...recipes.reference import InvalidReference, normalize
from ..core.healer import Healer, HealFailed, Trigger
from ..sources.engine import Engine, EngineError
from ..stale import tracker as stale_mode
from ..stale.tracker import StaleTracker
from . import memory, memoryfile
from .reconcile import Schedule, present, queue, wanted
from .watcher import EventWatcher

log = logging.getLogger(__name__)

DISK_RECHECK = 60.0
IDLE_RECHECK = 1.0
"""How often a background heal looks again for an idle slot; heals take minutes."""
CRASH_PAUSE = 1.0
CRASH_PAUSE_MAX = 60.0
"""The pauses before a loop that failed unexpectedly starts again (see ``_guarded``)."""
FLUSH_EVERY = 30.0
"""How often remembered tags are written, when they changed."""


def enabled(config: Config) -> bool:
    return any(recipe.proactive for recipe in config.recipes)


def events_wanted(config: Config) -> bool:
    """Whether the image events are followed: for reconciles, or stale mode's tag map."""
    return enabled(config) or stale_mode.enabled(config)


def disk_usage(path: str) -> tuple[int, int] | None:
    """Total and free bytes (for an unprivileged user) of ``path``'s file system,
    or None when ``path`` is not visible from this process."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize


def unseen_root(root: str) -> str | None:
    """Why ``min_free`` is ignored for a daemon whose root folder is ``root``, or None."""
    if disk_usage(root) is not None:
        return None
    return (
        f"the daemon's root folder {root!r} is not visible from the proxy "
        "(rootless or Docker-in-Docker?): [heal] min_free is ignored"
    )


class Proactive:
    """Owns the proactive side of healing for the life of the process."""

    def __init__(
        self,
        config: Callable[[], Config],
        healer: Healer,
        engine: Engine,
        state_dir: Path,
        stale: StaleTracker | None = None,
    ) -> None:
        self.config = config
        self.healer = healer
        self.engine = engine
        self.state_dir = state_dir
        self.stale = stale
        self.memory = memory.TagMemory()
        heal = config().heal
        self.schedule = Schedule(quiet=heal.reconcile_debounce, interval=heal.reconcile_interval)
        self.watcher = EventWatcher(engine, self._event, self._connected, on_event=self._image)
        self.last_reconcile: float | None = None
        self.reconciles = 0
        self.pending: list[str] = []
        self.plans: dict[str, HealPlan] = {}
        """The plan of each image the last reconcile queued."""
        self.active: set[str] = set()
        self.failed: dict[str, float] = {}
        self.disk: str | None = None
        """Why proactive heals wait for disk space, or None."""
        self._listed_at_start = False
        self._root: str | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        """The schedule, while enabled."""
        self._events: asyncio.Task[None] | None = None
        """The event watcher, while events are wanted (``events_wanted``)."""
        self._debounce: dict[str, asyncio.TimerHandle] = {}
        """Stale-mode tags whose inputs changed, each queued when its timer fires."""
        self._workers: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        """Tasks cancelled by a reload, kept until they end so none is lost."""
        self._wake = asyncio.Event()
        self._work = asyncio.Event()
        self._recheck = asyncio.Event()

    # -- what others call -----------------------------------------------------

    def used(self, image: str, *, refresh: bool = True) -> None:
        """A create of ``image`` worked: remember it if a pattern recipe matches
        it. ``refresh`` False only adds a tag not known yet (see ``memory``)."""
        image = normalize(image)
        if memory.worth_remembering(self.config().recipes, image):
            self.memory.remember(image, time.time(), refresh=refresh)

    def healed(self, image: str, trigger: Trigger) -> None:
        """A heal produced ``image``; only one someone asked for is a use."""
        self.used(image, refresh=trigger != "proactive")

    @property
    def enabled(self) -> bool:
        """Running, with a proactive recipe in the config now."""
        return bool(self._loops) and enabled(self.config())

    @property
    def following(self) -> bool:
        return self._events is not None

    @property
    def events_up(self) -> bool:
        return self.following and self.watcher.up

    def blocked(self) -> dict[str, bool]:
        return {"min_free": self.disk is not None}

    def health(self) -> dict[str, object]:
        if not self.following:
            return {}
        return {"events": self.watcher.view()}

    def view(self) -> dict[str, Any]:
        last = self.last_reconcile
        return {
            "enabled": self.enabled,
            "remembered": self.memory.tags(),
            "last_reconcile": (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)) if last else None
            ),
            "reconciles": self.reconciles,
            "events": self.watcher.view(),
            "queued": [*sorted(self.active), *self.pending],
            "blocked": {"min_free": self.disk} if self.disk else {},
        }

    async def start(self) -> None:
        self.memory = await asyncio.to_thread(memoryfile.load, self.state_dir)
        self._flusher = self._spawn("memory flusher", self._flush_loop)
        self.reconfigure()

    def reconfigure(self) -> None:
        """After a reload: start or stop as the config says, and look again at once."""
        config = self.config()
        self.schedule.interval = config.heal.reconcile_interval
        self.schedule.quiet = config.heal.reconcile_debounce
        self.failed.clear()
        self._recheck.set()  # waiting heals look again: at min_free, or at being off
        if events_wanted(config) and self._events is None:
            self._events = self._spawn("event watcher", self.watcher.run)
        elif not events_wanted(config) and self._events is not None:
            self._retire(self._events)
            self._events = None
            self.watcher.up, self.watcher.detail = False, "off: no proactive or stale-mode entry"
        if not enabled(config):
            self.pending.clear()
            self._cancel_quiet_timers()
            self.disk = None
            self._retire(*self._loops, *self._workers)
            self._loops.clear()
            self._workers.clear()
            return
        if not self._loops:
            self._loops.append(self._spawn("reconcile schedule", self._schedule_loop))
        while len(self._workers) < config.heal.background_parallel:
            self._workers.append(self._spawn("background worker", self._worker))
        while len(self._workers) > config.heal.background_parallel:
            self._retire(self._workers.pop())  # its heal, if any, goes on: the healer shields it
        self.schedule.request()
        self._wake.set()

    async def stop(self) -> None:
        flusher = [self._flusher] if self._flusher is not None else []
        events = [self._events] if self._events is not None else []
        tasks = [*flusher, *events, *self._loops, *self._workers, *self._retiring]
        for task in tasks:
            task.cancel()
        self._cancel_quiet_timers()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flusher = None
        self._events = None
        self._loops.clear()
        self._workers.clear()
        await self._flush()

    # -- the tasks ------------------------------------------------------------

    def _spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._guarded(name, loop))

    def _retire(self, *tasks: asyncio.Task[None]) -> None:
        for task in tasks:
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _guarded(name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop that should never end. An exception it did not expect is
        a bug: logged with its traceback, and the loop starts again after a
        pause, doubling up to ``CRASH_PAUSE_MAX``, so that proactive heals do
        not silently stop for the life of the process."""
        pause = CRASH_PAUSE
        while True:
            started = time.monotonic()
            try:
                await loop()
            except Exception:
                log.exception("proactive heals: the %s failed; restarting it in %.0fs", name, pause)
            if time.monotonic() - started > CRASH_PAUSE_MAX:
                pause = CRASH_PAUSE  # it had worked a good while: not a crash loop
            await asyncio.sleep(pause)
            pause = min(pause * 2, CRASH_PAUSE_MAX)

    # -- the schedule -----------------------------------------------------------

    def _event(self) -> None:
        self.schedule.event(time.monotonic())
        self._wake.set()

    def _connected(self) -> None:
        self._root = None  # a restarted daemon may have a new root folder
        self.schedule.request()
        self._wake.set()
        if self.stale is not None:
            self.stale.connected()

    def _image(self, event: Mapping[str, Any]) -> None:
        if self.stale is not None:
            self.stale.event(event)

    def inputs_changed(self, image: str) -> None:
        """A stale-mode tag's inputs changed: queue its rebuild once they are
        quiet, if its entry is proactive."""
        config = self.config()
        found = find_recipe(config.recipes, image)
        if found is None or not found[0].proactive or not self._loops:
            return
        handle = self._debounce.pop(image, None)
        if handle is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        delay = config.heal.inputs_debounce
        self._debounce[image] = loop.call_later(delay, self._rebuild_due, image)

    def _cancel_quiet_timers(self) -> None:
        """No rebuild waits for its inputs to be quiet any more (stop, or proactive off)."""
        for handle in self._debounce.values():
            handle.cancel()
        self._debounce.clear()

    def _rebuild_due(self, image: str) -> None:
        del self._debounce[image]
        if image not in self.pending and image not in self.active:
            log.info("inputs of %s quiet for a while: rebuilding it in the background", image)
            self.pending.append(image)
            self._work.set()

    async def _schedule_loop(self) -> None:
        while True:
            self._wake.clear()
            delay = self.schedule.next_at() - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # wait_for could swallow a cancel
                        await self._wake.wait()
                continue
            self.schedule.ran(time.monotonic())
            try:
                await self._reconcile()
            except Exception:
                self.schedule.request()  # not done: again as soon as the loop restarts
                raise

    async def _reconcile(self) -> None:
        config = self.config()
        try:
            images = await self.engine.list_images()
        except EngineError as exc:
            log.warning("reconcile: cannot list images: %s", exc)
            return
        have = present(images)
        now = time.time()
        if not self._listed_at_start:
            self._listed_at_start = True
            for image in sorted(have):  # all found now: an order that does not vary
                self.used(image, refresh=False)
            await self._find_root()  # warns now if min_free cannot be checked
        for image in self.memory.forget_stale(now, config.heal.forget_after):
            log.info("forgot %s: not used for %.0f days", image, config.heal.forget_after / 86400)
        retry_after = time.monotonic() - config.heal.reconcile_interval
        self.failed = {tag: at for tag, at in self.failed.items() if at > retry_after}
        missing = wanted(config.recipes, self.memory.tags()) - have - set(self.failed)
        found = await self._plans(missing)
        steps = queue(
            list(found),
            {image: [step.image for step in plan.steps] for image, plan in found.items()},
            have | self.active,
        )
        self.plans = {
            step.image: plan.of(step.image) for plan in found.values() for step in plan.steps
        }
        steps += [image for image in self._stale_proactive() if image not in steps]
        self.pending = [image for image in steps if image not in self.failed]
        self.last_reconcile = now
        self.reconciles += 1
        if self.pending:
            log.info("reconcile: %d managed images missing: %s", len(missing), ", ".join(missing))
            self._work.set()

    async def _plans(self, images: set[str]) -> dict[str, HealPlan]:
        """Each image's heal plan; an image that cannot be healed is skipped."""
        found: dict[str, HealPlan] = {}
        for image in images:
            try:
                found[image] = await self.healer.plan(image)
            except (DependencyCycle, InvalidReference) as exc:
                log.warning("proactive heal of %s skipped: %s", image, exc)
        return found

    def _stale_proactive(self) -> list[str]:
        """Proactive tags stale now (changed while nobody watched), not under way."""
        if self.stale is None:
            return []
        recipes = self.config().recipes
        return [
            image
            for image in self.stale.stale()
            if image not in self.active
            and (found := find_recipe(recipes, image)) is not None
            and found[0].proactive
        ]

    # -- background heals -------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            if not self.pending:
                self._work.clear()
                await self._work.wait()
                continue
            image = self.pending.pop(0)
            self.active.add(image)
            try:
                if await self._admitted(image):
                    plan = self.plans.get(image)
                    await self.healer.ensure(image, trigger="proactive", plan=plan)
            except HealFailed as failure:
                self.failed[image] = time.monotonic()
                if self.stale is not None:
                    self.stale.failed(image, str(failure))
                log.warning("proactive heal of %s failed: %s", image, str(failure).splitlines()[0])
            finally:
                self.active.discard(image)
                if not self.active:
                    self.disk = None  # no heal waits for disk space now

    async def _admitted(self, image: str) -> bool:
        """Wait until a background heal of ``image`` may start (see the module
        rules); False once it should not start at all: proactive heals were
        turned off, or the image came back meanwhile (a create healed it)."""
        said = False
        while True:
            config = self.config()
            if not enabled(config):
                return False
            self._recheck.clear()
            disk = await self._disk_short(config.heal.min_free)
            if (disk is None) != (self.disk is None):
                log.info("proactive heals %s", f"wait: {disk}" if disk else "go on: disk space")
            self.disk = disk
            if disk is not None:
                await self._pause(DISK_RECHECK)
                if await self._present(image):  # the wait can be long; a create may heal it
                    return False
            elif not self.healer.slots.free:
                if not said:
                    log.debug("proactive heal of %s waits for a free heal slot", image)
                    said = True
                await self._pause(IDLE_RECHECK)
            else:
                return True

    async def _present(self, image: str) -> bool:
        try:
            return await self.engine.image_exists(image)
        except EngineError:
            return False  # the heal will say what is wrong with the daemon

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # wait_for could swallow a cancel
                await self._recheck.wait()

    async def _disk_short(self, min_free: MinFree) -> str | None:
        """Why the disk is too full for a background heal, or None."""
        root = await self._find_root()
        usage = await asyncio.to_thread(disk_usage, root) if root else None
        if usage is None or min_free.met(*usage):
            return None
        total, free = usage
        share = 100 * free / total if total else 0.0
        return (
            f"{root} has {free / 2**30:.1f}GiB free ({share:.0f}%), "
            f"less than [heal] min_free = {min_free}"
        )

    async def _find_root(self) -> str | None:
        """The daemon's root folder, asked once per connection; warns if it cannot
        be seen from here."""
        if self._root is None:
            try:
                self._root = await self.engine.root_dir()
            except EngineError as exc:
                log.warning("cannot ask the daemon for its root folder: %s", exc)
                return None
            problem = await asyncio.to_thread(unseen_root, self._root)
            if problem is not None:
                log.warning("%s", problem)
        return self._root

    # -- the memory on disk -----------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self._flush()

    async def _flush(self) -> None:
        if not self.memory.dirty:
            return
        self.memory.dirty = False
        try:
            await asyncio.to_thread(memoryfile.save, self.state_dir, self.memory.dumps())
        except OSError as exc:
            self.memory.dirty = True
            log.warning("cannot save remembered tags in %s: %s", self.state_dir, exc)
