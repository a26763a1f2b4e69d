"""Healing: rebuild a missing image once, bases first, however many ask.

Rules:
- Single flight per normalised tag. The first caller starts the heal as a
  task of its own; every caller, the first included, waits on it through
  ``asyncio.shield``. A client that disconnects stops waiting, the heal goes
  on: others may be waiting, and the next spawn wants the image anyway.
- Dependencies first, each under its own single flight: the explicit
  ``depends_on`` and the ``FROM`` images of a build recipe that another
  recipe makes. Only missing ones are healed. The whole chain is worked out
  (``planner``), and so checked for cycles, before anything waits, since
  two heals whose Dockerfiles name each other would wait for each other
  forever. That plan is the heal's one plan: its bases' heals, its cache key
  and a proactive heal's queue use it rather than working it out again. A
  plan made from an older config (a reload since) is worked out afresh.
- One builder per tag across processes: a lock file in ``state_dir`` is held
  while a recipe runs (``lockfiles``), shared with a ``docker-heal-proxy
  heal`` that found no proxy to ask. After taking it the image is looked up
  again, since the other holder may have built it.
- A ``max_parallel`` slot is taken last, after the bases and the lock: a heal
  waiting for either holds none, so a chain deeper than the limit cannot
  deadlock and a tag another process is building blocks no other tag.
  Client heals get freed slots before proactive ones (``slots``).
- Every way a heal can fail ends in ``HealFailed`` with a sentence for the
  client; nothing else escapes to the data path.
- A recipe that fails puts its tag in cooldown: for ``failure_cooldown`` the
  same failure is returned at once, naming when the next try is allowed,
  rather than rerunning a broken build for every spawn.
- Each heal keeps its output in a new log file and its last lines in memory,
  for the error message and the status view. After each recipe run
  ``retention`` applies ``keep_logs`` and drops the lock files of tags no
  recipe heals any more.
- Each heal has a trigger (``create``, ``pull``, ``build``, ``proactive``,
  ``cli``, ``stale``: a create's rebuild of a stale image) for the metrics.
  A client that joins a proactive heal makes it its own: the heal is
  counted under the client's trigger, since someone waited for it. Each
  heal also has a source (``recipe`` or ``cache``): where its image came
  from.
- A tag a heal produced (by its recipe or from the cache) is reported to
  ``on_healed`` with its trigger, so that the tags of pattern recipes can be
  remembered for proactive heals (a proactive heal is no sign that anyone
  uses the tag).
- The last result is kept per tag, for the most recent ``MAX_RESULTS`` tags.
  Eviction takes the oldest successes first, then failures whose cooldown has
  ended; a cooldown still running is never evicted, or a broken recipe would
  run again at once.
- A recipe with ``cache = true`` first tries the registry cache (``cache``),
  before healing any of its bases: a hit is the heal, and neither the recipe
  nor its bases' recipes run. ``force`` skips the pull (a fresh build is
  what was asked for) but still pushes. After a recipe run the push
  is a task of its own, started once the result is recorded, so waiting
  clients are answered first; shutdown cancels it like a heal.
- Shutdown (``cancel``) stops every heal and push under way, and starts no
  heal after it: one asked for from then on (a background rebuild whose
  task first ran after the cancel) fails at once, or shutdown would wait
  for a whole recipe run nobody stops.

Stale mode (``stale``): with a ``StaleMode`` (stale mode's tracker, which
sits above the core and answers this small protocol the core owns), a present image whose entry has
``rebuild_when = "stale"`` and whose sources or bases changed is rebuilt by
``rebuild`` (and by ``ensure``), through the same single flight: "built
meanwhile" then means "fresh meanwhile". Bases that are present but stale
are rebuilt first, as missing ones are healed. A heal of a stale-mode tag
asks for its sources' hash before anything runs (``before``) and hands it
back with the image it made (``made``): stale mode records the image
against that hash, hashes again, and an edit made meanwhile leads to one
more rebuild (never a record of a tree the build may not have seen).

A reload swaps ``config``; heals already running keep the concrete recipe
they started with. A result remembers the recipe that produced it, and a
cooldown holds only while the config still heals the tag with that recipe: a
tag whose recipe the reload changed (or removed, or replaced by an earlier
match) gets its next try at once, even when the old recipe fails after the
reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from ...recipes.config import Config
from ...recipes.graph import DependencyCycle, HealPlan
from ...recipes.patterns import find_recipe
from ...recipes.recipe import ConcreteRecipe, Recipe
from ...recipes.reference import InvalidReference, normalize
from ..sources.cache import CacheObserver, RegistryCache, TagLocks, config_dir
from ..sources.engine import Engine, EngineError
from . import retention
from .dockerfileparse import ParseProcess
from .lockfiles import LockFile
from .planner import Planner
from .runners import TAIL_LINES, RecipeFailed, run_recipe
from .slots import Slots
from .statefiles import LogFile, tag_file_name

log = logging.getLogger(__name__)

LOCK_POLL = 0.2
"""How often to retry a lock file another process holds; flock has no wake-up."""
MAX_RESULTS = 1000
"""Last results kept, so that the status view stays small however many tags heal."""


class HealFailed(Exception):
    """A heal did not produce its image; the text is what the client sees."""


Trigger = Literal["create", "pull", "build", "proactive", "cli", "stale"]
"""What started a heal; a label of the heal metrics."""

Source = Literal["recipe", "cache"]
"""Where a heal's image came from; a label of ``heals_total``."""


class HealObserver(CacheObserver, Protocol):
    def heal_finished(
        self, match: str, success: bool, seconds: float, trigger: Trigger, source: Source
    ) -> None: ...


S = TypeVar("S")


class StaleMode(Protocol[S]):
    """What a heal asks stale mode; ``S`` is its sources' state, opaque here."""

    async def reason(self, tag: str) -> str | None:
        """Why the present ``tag`` must be rebuilt; None if fresh or not in stale mode."""

    async def before(self, tag: str) -> S | None:
        """``tag``'s sources, hashed now: before its recipe runs."""

    async def made(self, tag: str, before: S, bases: Sequence[str]) -> None:
        """A heal made ``tag`` from ``before``, on ``bases``: record it, hash again."""


@dataclass
class Progress:
    """A heal under way, as the status view shows it."""

    image: str
    recipe: str
    match: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "dependencies"
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    log_path: Path | None = None
    cache: str | None = None
    """The cache reference this heal tries (and pushes to), if the recipe is cached."""

    def elapsed(self) -> float:
        """Seconds since the heal began: a heal's duration counts its cache try too."""
        return time.monotonic() - self.started

    def view(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "recipe": self.recipe,
            "phase": self.phase,
            "cache": self.cache,
            "elapsed_seconds": round(self.elapsed(), 1),
            "last_lines": list(self.lines),
            "log": str(self.log_path) if self.log_path else None,
        }


@dataclass
class Result:
    """How the last heal of a tag ended; a failure also carries its cooldown."""

    success: bool
    match: str
    message: str
    finished: float
    """Wall-clock time, for people."""
    duration: float
    recipe: Recipe
    """The recipe that produced it, by content (``_recipe_for``)."""
    retry_at: float = 0.0
    """Monotonic time before which a failure is returned without retrying."""
    source: Source = "recipe"
    """Where the image came from: ``recipe`` or ``cache``."""
    cache: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "result": "success" if self.success else "failure",
            "source": self.source,
            "cache": self.cache,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.finished)),
            "duration_seconds": round(self.duration, 1),
            "message": self.message,
        }


def evict(results: dict[str, Result], limit: int, now: float) -> None:
    """Cut ``results`` (oldest first) to ``limit``, dropping no running cooldown."""
    for ended_cooldowns_too in (False, True):
        excess = len(results) - limit
        if excess <= 0:
            return
        droppable = [
            image
            for image, r in results.items()
            if r.success or (ended_cooldowns_too and r.retry_at <= now)
        ]
        for image in droppable[:excess]:
            del results[image]


def _recipe_for(config: Config, image: str) -> Recipe | None:
    """The entry that heals ``image``, compared by content: a move in the file is no change."""
    found = find_recipe(config.recipes, image)
    return None if found is None else replace(found[0], index=0)


class Healer:
    """The one place heals start, so that one tag never has two at once."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        upstream: str,
        state_dir: Path,
        observer: HealObserver | None = None,
        on_healed: Callable[[str, Trigger], None] = lambda image, trigger: None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.upstream = upstream
        self.state_dir = state_dir
        self.observer = observer
        self.on_healed = on_healed
        self.inflight: dict[str, asyncio.Task[bool]] = {}
        self.triggers: dict[str, Trigger] = {}
        self.running: dict[str, Progress] = {}
        self.results: dict[str, Result] = {}
        self.waiters = 0
        self.pushes: dict[asyncio.Task[None], str] = {}
        """Cache pushes under way, and the reference each pushes."""
        self.cache_locks = TagLocks()
        self.slots = Slots(config.heal.max_parallel)
        parse_user = config.security.parse_user  # bound at start, as the workers are
        self.parser = ParseProcess(name="builds", user=parse_user)
        """Where client build bodies' Dockerfiles are parsed: never on the loop."""
        self.planner = Planner(ParseProcess(name="plans", user=parse_user))
        """Where heal plans are worked out, in a parse queue of their own."""
        self._bases_of: dict[str, set[str]] = {}
        """The bases each heal under way waits for, to relabel a chain a client joins."""
        self.stale: StaleMode[Any] | None = None
        """Stale mode's facts, when the proxy runs one (``docker-heal-proxy heal`` does not)."""
        self._rebuilds: set[str] = set()
        """Tags whose heal under way is a rebuild of a stale image."""
        self.cancelled = False
        """Shutting down: no heal starts any more."""

    def reconfigure(self, config: Config) -> None:
        self.slots.resize(config.heal.max_parallel)
        self.engine.call_timeout = config.heal.engine_timeout
        self.config = config

    # -- entry points --------------------------------------------------------

    async def heal(self, image: str, *, trigger: Trigger, force: bool = False) -> None:
        """Heal an image the daemon just said is missing."""
        await self._join(normalize(image), force, trigger)

    async def rebuild(self, image: str, *, trigger: Trigger) -> bool:
        """Rebuild a present image found stale; False if it was fresh meanwhile."""
        return await self._join(normalize(image), False, trigger, rebuild=True)

    async def ensure(
        self,
        image: str,
        *,
        trigger: Trigger,
        force: bool = False,
        plan: HealPlan | None = None,
    ) -> str:
        """Make sure an image exists, and is fresh in stale mode; say what it took.

        ``plan`` is the image's plan when the caller has worked it out already.
        """
        image = normalize(image)
        if not force and await self._exists(image):
            stale = await self._stale(image)
            if stale is None:
                return "Image is up to date"
            if await self._join(image, False, trigger, plan=plan, rebuild=True):
                return f"Rebuilt by docker-heal-proxy: {stale}"
            return "Image is up to date (rebuilt meanwhile)"
        if await self._join(image, force, trigger, plan=plan):
            return "Healed by docker-heal-proxy"
        return "Image is up to date (built meanwhile by another process)"

    async def _stale(self, image: str) -> str | None:
        """Why the present ``image`` must be rebuilt, or None."""
        return None if self.stale is None else await self.stale.reason(image)

    async def plan(self, image: str) -> HealPlan:
        """``image``'s plan by the current config (``planner``); raises
        InvalidReference and DependencyCycle."""
        return await self.planner.plan(image, self.config.recipes)

    def cooldown_counts(self) -> dict[str, int]:
        """Tags in cooldown per recipe ``match``, for the metrics gauge."""
        now = time.monotonic()
        counts = {recipe.match: 0 for recipe in self.config.recipes}
        for image, result in self.results.items():
            if self._cooling(image, result, now):
                counts[result.match] += 1
        return counts

    def _cooling(self, image: str, result: Result, now: float) -> bool:
        """Whether ``result`` holds back a heal of ``image`` by the current config."""
        return (
            not result.success
            and result.retry_at > now
            and result.recipe == _recipe_for(self.config, image)
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "recipes": [
                {"index": r.index, "match": r.match, "kind": r.kind} for r in self.config.recipes
            ],
            "in_progress": [p.view() for p in self.running.values()],
            "cache_pushes": sorted(self.pushes.values()),
            "waiters": self.waiters,
            "last_results": {image: r.view() for image, r in self.results.items()},
        }

    # -- single flight ---------------------------------------------------------

    async def _join(
        self,
        image: str,
        force: bool,
        trigger: Trigger,
        *,
        waiter: bool = True,
        plan: HealPlan | None = None,
        rebuild: bool = False,
    ) -> bool:
        """Wait for the one heal of ``image``; True if its recipe ran.

        ``waiter`` counts a client's request in the ``heal_waiters`` gauge; a
        heal waiting for its base, or a proactive one, is not a request.
        ``plan``, if known, is used by a heal this call starts.
        """
        waiter = waiter and trigger != "proactive"
        task = self.inflight.get(image)
        if task is None:
            if self.cancelled:
                raise HealFailed(f"docker-heal-proxy: not healing {image}: shutting down")
            task = asyncio.get_running_loop().create_task(self._heal(image, force, plan))
            self.inflight[image] = task
            self.triggers[image] = trigger
            if rebuild:
                self._rebuilds.add(image)
            task.add_done_callback(lambda t: self._settled(image, t))
        elif trigger != "proactive":
            self._relabel(image, trigger)
        self.waiters += waiter
        try:
            return await asyncio.shield(task)
        finally:
            self.waiters -= waiter

    def _relabel(self, image: str, trigger: Trigger) -> None:
        """A client waits for a proactive heal now, and so for its bases' heals."""
        if self.triggers.get(image) == "proactive":
            self.triggers[image] = trigger
            for base in self._bases_of.get(image, ()):
                self._relabel(base, trigger)

    async def _exists(self, image: str) -> bool:
        try:
            return await self.engine.image_exists(image)
        except EngineError as exc:
            raise HealFailed(f"docker-heal-proxy: cannot look up {image}: {exc}") from None

    async def cancel(self) -> None:
        """Stop every heal and cache push (shutdown): recipes' process groups are killed."""
        self.cancelled = True
        tasks = [*self.inflight.values(), *self.pushes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.parser.aclose()
        await self.planner.aclose()

    def _settled(self, image: str, task: asyncio.Task[bool]) -> None:
        if self.inflight.get(image) is task:
            del self.inflight[image]
            del self.triggers[image]
            self._rebuilds.discard(image)
        if not task.cancelled():
            task.exception()  # retrieved here, raised to every waiter by shield

    async def _heal(self, image: str, force: bool, plan: HealPlan | None) -> bool:
        previous = self.results.get(image)
        now = time.monotonic()
        if previous is not None and self._cooling(image, previous, now):
            raise HealFailed(
                f"{previous.message}\n(in cooldown: the next try is allowed in "
                f"{previous.retry_at - now:.0f}s)"
            )
        found = find_recipe(self.config.recipes, image)
        if found is None:
            raise HealFailed(f"docker-heal-proxy: no recipe builds {image}")
        if plan is None or plan.recipes is not self.config.recipes or image not in plan.found:
            try:
                # Worked out whole before any waiting: two heals whose Dockerfiles
                # name each other in FROM would otherwise each wait for the other.
                plan = await self.plan(image)
            except (DependencyCycle, InvalidReference) as exc:
                raise HealFailed(f"docker-heal-proxy: cannot heal {image}: {exc}") from None
        concrete = plan.step
        progress = Progress(image, concrete.recipe.name, concrete.recipe.match)
        self.running[image] = progress
        cache = self._cache(concrete)
        try:
            # Before anything runs: an edit made from here on leads to one more rebuild.
            before = await self.stale.before(image) if self.stale is not None else None
            # A cache hit needs no bases, so the cache comes before healing any.
            if cache is not None:
                progress.phase = "queued"
                async with self._turn(image):
                    if await self._built_meanwhile(image, force):
                        return False
                    if await self._from_cache(plan, cache, progress, force):
                        await self._made(image, before, plan.bases)
                        return True
            await self._bases(plan)
            progress.phase = "queued"
            async with self._turn(image):
                if await self._built_meanwhile(image, force):
                    return False
                await self._run(concrete, progress, cache)
            await self._made(image, before, plan.bases)
            return True
        except OSError as exc:  # the state directory: logs and lock files
            raise HealFailed(f"docker-heal-proxy: cannot heal {image}: {exc}") from None
        finally:
            del self.running[image]
            self._bases_of.pop(image, None)

    @contextlib.asynccontextmanager
    async def _turn(self, image: str) -> AsyncIterator[None]:
        """The lock, then a slot: a heal waiting on another process holds no slot."""

        def background() -> bool:
            return self._trigger(image) == "proactive"

        async with self._lock(image), self.slots.take(background):
            yield

    async def _built_meanwhile(self, image: str, force: bool) -> bool:
        if force or not await self._exists(image):
            return False
        if image not in self._rebuilds:
            log.info("heal of %s: built meanwhile by another process", image)
            return True
        if await self._stale(image) is None:
            log.info("rebuild of %s: fresh meanwhile", image)
            return True
        return False

    async def _made(self, image: str, before: object | None, bases: Sequence[str]) -> None:
        """Tell stale mode what a heal made, from the sources hashed before it ran."""
        if self.stale is not None and before is not None:
            await self.stale.made(image, before, bases)

    async def _bases(self, plan: HealPlan) -> None:
        """Heal the managed bases that are missing, and rebuild those that are stale."""
        image = plan.image
        for base in plan.bases:
            rebuild = await self._exists(base)
            if rebuild and await self._stale(base) is None:
                continue
            self._bases_of.setdefault(image, set()).add(base)
            try:
                await self._join(
                    base,
                    False,
                    self._trigger(image),
                    waiter=False,
                    plan=plan.of(base),
                    rebuild=rebuild,
                )
            except HealFailed as failure:
                raise HealFailed(
                    f"docker-heal-proxy: cannot heal {image}: its base {base} "
                    f"could not be {'rebuilt' if rebuild else 'healed'}:\n{failure}"
                ) from None

    async def settle(self) -> None:
        """Wait for cache pushes still under way (``heal`` from a shell, before exiting)."""
        await asyncio.gather(*self.pushes)

    def _cache(self, concrete: ConcreteRecipe) -> RegistryCache | None:
        repository = self.config.heal.cache
        if not concrete.recipe.cache or repository is None:
            return None
        return RegistryCache(
            self.engine,
            repository,
            self.observer,
            idle_timeout=self.config.heal.engine_timeout,
            config_dir=config_dir(self.config),
            locks=self.cache_locks,
        )

    async def _from_cache(
        self, plan: HealPlan, cache: RegistryCache, progress: Progress, force: bool
    ) -> bool:
        """Whether the cache had the image. ``force`` (``heal --force``) asks for a
        fresh build: the key is still made, for the push, but nothing is pulled."""
        concrete = plan.step
        progress.phase = "cache"
        progress.cache = await cache.reference(plan)
        if force or progress.cache is None:
            return False
        log.info("heal of %s: trying the cache %s", concrete.image, progress.cache)
        if await cache.pull(concrete, progress.cache, progress.lines.append):
            self._succeeded(concrete, progress.elapsed(), "cache", progress.cache)
            return True
        return False

    async def _run(
        self, concrete: ConcreteRecipe, progress: Progress, cache: RegistryCache | None
    ) -> None:
        await self._run_recipe(concrete, progress)
        if cache is not None and progress.cache is not None and self.config.heal.cache_push:
            push = asyncio.get_running_loop().create_task(
                cache.push(concrete.image, progress.cache, concrete.recipe.timeout)
            )
            self.pushes[push] = progress.cache
            push.add_done_callback(lambda task: self.pushes.pop(task, None))

    async def _run_recipe(self, concrete: ConcreteRecipe, progress: Progress) -> None:
        """The recipe run, then ``tidy`` (after the transcript is closed: it is the
        newest, and kept); a cancelled run (shutdown) leaves tidying to the next start."""
        try:
            await self._transcribed(concrete, progress)
        except HealFailed:
            await asyncio.to_thread(self.tidy)
            raise
        await asyncio.to_thread(self.tidy)

    def tidy(self) -> None:
        """``retention``'s tidying of ``state_dir``, by the current config (blocking)."""
        config = self.config
        retention.tidy(
            self.state_dir,
            config.heal.keep_logs,
            lambda tag: find_recipe(config.recipes, tag) is not None,
        )

    async def _transcribed(self, concrete: ConcreteRecipe, progress: Progress) -> None:
        recipe = concrete.recipe
        name = retention.log_name(tag_file_name(concrete.image), time.time())
        transcript = await LogFile.create(self.state_dir, name)
        progress.log_path = transcript.path
        progress.phase = "running"
        log.info("heal of %s started: %s (%s)", concrete.image, recipe.name, concrete.kind)
        try:
            await run_recipe(
                concrete,
                upstream=self.upstream,
                log=transcript,
                engine=self.engine,
                on_line=progress.lines.append,
            )
        except RecipeFailed as failure:
            duration = progress.elapsed()
            message = self._failure_message(concrete, failure, transcript.path)
            self._record(
                concrete.image,
                Result(
                    False,
                    recipe.match,
                    message,
                    time.time(),
                    duration,
                    replace(recipe, index=0),
                    retry_at=time.monotonic() + self.config.heal.failure_cooldown,
                    cache=progress.cache,
                ),
            )
            self._finished(concrete.image, recipe.match, False, duration, "recipe")
            log.warning(
                "heal of %s failed after %.1fs: %s", concrete.image, duration, failure.reason
            )
            raise HealFailed(message) from None
        finally:
            await transcript.close()
        self._succeeded(concrete, progress.elapsed(), "recipe", progress.cache)

    def _succeeded(
        self, concrete: ConcreteRecipe, duration: float, source: Source, cache: str | None
    ) -> None:
        match = concrete.recipe.match
        how = f"from the cache {cache}" if source == "cache" else f"by {concrete.recipe.name}"
        self._record(
            concrete.image,
            Result(
                True,
                match,
                f"healed {how}",
                time.time(),
                duration,
                replace(concrete.recipe, index=0),
                source=source,
                cache=cache,
            ),
        )
        self._finished(concrete.image, match, True, duration, source)
        self.on_healed(concrete.image, self._trigger(concrete.image))
        log.info("heal of %s succeeded in %.1fs %s", concrete.image, duration, how)

    def _trigger(self, image: str) -> Trigger:
        return self.triggers.get(image, "create")

    def _record(self, image: str, result: Result) -> None:
        self.results.pop(image, None)  # re-inserted last: the order is the age
        self.results[image] = result
        evict(self.results, MAX_RESULTS, time.monotonic())

    def _finished(
        self, image: str, match: str, success: bool, seconds: float, source: Source
    ) -> None:
        if self.observer is not None:
            self.observer.heal_finished(match, success, seconds, self._trigger(image), source)

    @staticmethod
    def _failure_message(concrete: ConcreteRecipe, failure: RecipeFailed, log_path: Path) -> str:
        lines = [
            f"docker-heal-proxy: cannot heal {concrete.image}: "
            f"{concrete.recipe.name} ({concrete.kind}) {failure.reason}"
        ]
        if failure.tail:
            lines.append(f"last lines of its output (full log: {log_path}):")
            lines += [f"  {line}" for line in failure.tail]
        return "\n".join(lines)

    @contextlib.asynccontextmanager
    async def _lock(self, image: str) -> AsyncIterator[None]:
        """The cross-process lock for one tag (``lockfiles``), polled: flock has no wake-up."""
        lock = LockFile(self.state_dir, image)
        try:
            while not lock.take():
                await asyncio.sleep(LOCK_POLL)
            yield
        finally:
            lock.close()
