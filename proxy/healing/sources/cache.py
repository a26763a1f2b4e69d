"""The shared registry cache: pull a heal's image before its recipe, push it after.

A fleet of hosts that prune on one schedule would otherwise run the same
slow recipe once per host. With ``[heal] cache`` and ``cache = true`` on a
recipe, the first host to build an image pushes it to the registry under its
cache key (``recipes.cachekey``), and every other host heals with a pull.

Rules:
- The cache only ever saves work; it never fails a heal that the recipe
  would have made. Every failure here (inputs that cannot be hashed, a
  registry that is down, credentials it refuses, a push that breaks) is
  logged, counted, and the heal goes on without the cache.
- A pull that dockerd answers with 404 and "manifest unknown" or "not
  found" is a miss: the quiet, expected case on the first host. dockerd
  also answers 404 ("pull access denied ... may require 'docker login'")
  when a token registry refuses the credentials: that is an error, counted
  and logged, or a fleet with a bad password would only ever see misses.
- A hit is tagged as the wanted tag. A push tags the image by ID (so a
  rebuild meanwhile cannot swap what is pushed) under the cache reference.
  Either way the cache reference is untagged afterwards, never removed with
  its image: otherwise every rebuild would leave an old image on disk under
  its cache tag.
- The local cache tag is one name per reference, shared by every heal and
  push of it: a pull/tag/untag and a tag/push/untag of one reference take
  turns (``TagLocks``), or a push ending would untag the name between
  another heal's pull and its tag.
- Credentials are looked up as the CLI does (``registryauth``), off the
  event loop, once per pull or push.
- A pull and a push are each bounded by the recipe's own timeout: a
  registry that stops answering must not hold the heal (or, for a push, the
  shutdown and ``heal``'s exit) longer than the recipe would.
- A pull is also bounded by ``[heal] engine_timeout`` up to its first line
  of progress and between lines: a registry that answers ``/v2/`` but never
  the manifest would otherwise hold the heal for the recipe's whole timeout
  before the recipe even starts. A pull that makes progress is not cut.

Theory of operation: ``RegistryCache`` is built per heal from the running
config. ``reference`` computes the key from the heal's plan, worked out
once by the healer (``reference_for`` in a thread: each recipe's inputs
hash; the daemon's platform from ``/version``); a plan whose Dockerfile
bases are only guessed (a parse failed) gets no key, since other hosts
would compute another; ``pull`` returns whether the image is now there; ``push`` is
what the healer runs as a background task once the waiting clients have
their answer. Outcomes go to a ``CacheObserver`` (the
metrics) as ``hit``/``miss``/``error`` and ``success``/``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...recipes.cachekey import cache_reference
from ...recipes.config import Config
from ...recipes.graph import HealPlan
from ...recipes.recipe import ConcreteRecipe
from ...recipes.reference import split
from .engine import Engine, EngineError
from .inputs import InputsError, inputs_hash
from .registryauth import auth_for

log = logging.getLogger(__name__)

PULL_RESULTS = ("hit", "miss", "error")
PUSH_RESULTS = ("success", "error")


def config_dir(config: Config) -> Path | None:
    """The folder the key's paths are relative to; None (as they are) without a file."""
    return None if config.path is None else config.path.parent


def reference_for(
    repository: str,
    plan: Sequence[ConcreteRecipe],
    config_dir: Path | None,
    platform: str,
) -> str:
    """The cache reference of ``plan[-1]``: what a heal pulls and ``check`` prints.

    ``plan`` is its heal plan's steps, bases first. Blocking (it hashes
    inputs): run it in a thread.
    """
    hashes = [inputs_hash(each.inputs_root, each.inputs) for each in plan]
    return cache_reference(repository, plan, hashes, platform, config_dir)


def _is_miss(error: EngineError) -> bool:
    """A registry's "no such manifest"; dockerd's 404 for refused credentials is not one."""
    text = error.message.lower()
    return (
        error.status == 404
        and "pull access denied" not in text
        and any(words in text for words in ("manifest unknown", "not found"))
    )


def _later(loop: asyncio.AbstractEventLoop, seconds: float | None) -> float | None:
    return None if seconds is None else loop.time() + seconds


class CacheObserver(Protocol):
    def cache_pulled(self, result: str) -> None: ...

    def cache_pushed(self, result: str) -> None: ...


class TagLocks:
    """One lock per cache reference, kept only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, reference: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(reference, (asyncio.Lock(), 0))
        self._locks[reference] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[reference]
            if users == 1:
                del self._locks[reference]
            else:
                self._locks[reference] = (lock, users - 1)


@dataclass
class RegistryCache:
    """The cache repository as one heal uses it."""

    engine: Engine
    repository: str
    observer: CacheObserver | None = None
    idle_timeout: float | None = None
    """Seconds a pull may go without progress (``[heal] engine_timeout``); None: unbounded."""
    config_dir: Path | None = None
    """The config file's folder: paths in the key are relative to it."""
    locks: TagLocks = field(default_factory=TagLocks)
    """Shared by every heal of one healer, so that they take turns per reference."""

    async def reference(self, plan: HealPlan) -> str | None:
        """The cache reference for ``plan``'s image on this daemon; None (counted) if unknowable."""
        recipe = plan.step
        if plan.guessed:
            log.warning("cache for %s not used: its Dockerfiles' bases are unknown", recipe.image)
            self._pulled("error")
            return None
        try:
            platform = await self.engine.platform()
            return await asyncio.to_thread(
                reference_for, self.repository, plan.steps, self.config_dir, platform
            )
        except (InputsError, EngineError) as error:
            log.warning("cache for %s not used: %s", recipe.image, error)
            self._pulled("error")
            return None
        except Exception:
            # A bug here must cost the cache, never the heal (see Rules).
            log.exception("cache for %s not used: unexpected failure", recipe.image)
            self._pulled("error")
            return None

    async def pull(
        self, recipe: ConcreteRecipe, reference: str, on_line: Callable[[str], None]
    ) -> bool:
        """Whether ``recipe.image`` now exists, pulled from ``reference``."""
        async with self.locks.hold(reference):
            return await self._pull(recipe, reference, on_line)

    async def _pull(
        self, recipe: ConcreteRecipe, reference: str, on_line: Callable[[str], None]
    ) -> bool:
        loop = asyncio.get_running_loop()
        try:
            auth = await auth_for(split(reference).domain)
            async with asyncio.timeout(recipe.timeout), asyncio.timeout(None) as idle:

                def progressed(line: str) -> None:
                    idle.reschedule(_later(loop, self.idle_timeout))
                    on_line(line)

                idle.reschedule(_later(loop, self.idle_timeout))
                await self.engine.pull(reference, auth, progressed)
        except EngineError as error:
            if _is_miss(error):
                log.info("cache miss for %s: %s", recipe.image, reference)
                self._pulled("miss")
            else:
                log.warning("cache pull of %s failed: %s", reference, error)
                self._pulled("error")
            return False
        except TimeoutError:
            if idle.expired():
                log.warning(
                    "cache pull of %s failed: no progress for %gs", reference, self.idle_timeout
                )
            else:
                log.warning("cache pull of %s timed out after %gs", reference, recipe.timeout)
            self._pulled("error")
            return False
        try:
            await self.engine.tag(reference, recipe.image)
        except EngineError as error:
            log.warning("cache hit %s could not be tagged %s: %s", reference, recipe.image, error)
            self._pulled("error")
            return False
        finally:
            await self._untag(reference)
        self._pulled("hit")
        return True

    async def push(self, image: str, reference: str, timeout: float | None = None) -> None:
        """Push what ``image`` is now as ``reference``; never raises but for cancellation.

        ``timeout`` (the recipe's) bounds the push stream; None leaves it unbounded.
        """
        async with self.locks.hold(reference):
            await self._push(image, reference, timeout)

    async def _push(self, image: str, reference: str, timeout: float | None) -> None:
        try:
            await self.engine.tag(await self.engine.image_id(image), reference)
        except EngineError as error:
            self._push_failed(reference, error)
            return
        try:
            auth = await auth_for(split(reference).domain)
            async with asyncio.timeout(timeout):
                await self.engine.push(reference, auth, lambda line: None)
        except EngineError as error:
            self._push_failed(reference, error)
        except TimeoutError:
            self._push_failed(reference, f"timed out after {timeout:g}s")
        else:
            log.info("cache push of %s succeeded", reference)
            if self.observer is not None:
                self.observer.cache_pushed("success")
        finally:
            await self._untag(reference)

    def _push_failed(self, reference: str, error: EngineError | str) -> None:
        log.warning("cache push of %s failed: %s", reference, error)
        if self.observer is not None:
            self.observer.cache_pushed("error")

    def _pulled(self, result: str) -> None:
        if self.observer is not None:
            self.observer.cache_pulled(result)

    async def _untag(self, reference: str) -> None:
        try:
            await self.engine.untag(reference)
        except EngineError as error:
            if error.status != 404:
                log.warning("cache tag %s could not be removed: %s", reference, error)
