"""``docker build`` FROM a pruned managed base: heal the base, then let the build go.

Rules:
- Only builds whose context is the request body, a tar (classic builder,
  docker-py, CLI 28 without buildx). A ``remote=`` build (a URL, or
  BuildKit's ``client-session``) carries no context here and is never
  claimed; BuildKit hosts rely on proactive heal instead.
- The body is read as it arrives and spooled to a nameless file (``spool``),
  never extracted and never held in memory, until ``contextscan`` has the
  Dockerfile. Nothing reaches the daemon before that: once it has the
  context it starts the build, and would pull a missing base itself.
- The Dockerfile's images (FROM, ``COPY --from``, ``RUN --mount from``, with
  ``buildargs``, ARG defaults and ``target``) that a recipe makes are made
  sure of, in file order, through the healer's single flight, so a build
  and a create of the same base share one heal. Images no recipe makes are
  the daemon's business.
- The Dockerfile is parsed in the parse process (``dockerfileparse``), never
  on the loop; a parse too long, too slow or crashing leaves the build
  unhealed with a log line.
- Then the request goes upstream byte for byte: head, spooled prefix, and
  the rest of the body as it arrives, and the daemon's answer streams back.
- A client that left during the heal gets nothing sent upstream for it.
- A failed heal answers 500 with the reason, after the rest of the body has
  been read: a client still writing a body it cannot finish would report a
  broken pipe instead of the reason. A heal the caller's policy does not
  allow (``healaccess``: the build is allowed, but a base's recipe pulls or
  loads) answers 403 the same way, and nothing is healed or built.
- A spool that fails (a full disk) does not fail the build: what reached the
  spool, then the piece in hand, then the rest go upstream unhealed. So does
  a piece the total budget of all builds' spools cannot take
  (``[heal] max_build_spool_total``), with a log line and ``on_over_budget``.
- A body whose Dockerfile cannot be found (not a tar, zstd, absent, over
  ``max_build_spool`` of body read or of tar decompressed) goes on unhealed with a log line: the
  build then behaves exactly as it would without the proxy.

Theory of operation: ``build_params`` reads the query the way dockerd does
(first value wins). ``BuildHeal.handle`` loops reading the body: each piece
is written to the spool and fed to the scan in a worker thread. A scan that
asks to ``restart`` (the Dockerfile is a link) is replaced by a fresh scan of
the spool so far, which then carries on with the live body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import IO
from urllib.parse import parse_qs

from ...recipes.config import Config
from ...recipes.patterns import find_recipe
from ...recipes.recipe import Recipe
from ...recipes.reference import InvalidReference, normalize
from ...wire import gojson
from ...wire.local import Exchange
from ..core.dockerfileparse import ParseFailed, dockerfile_images
from ..core.healer import Healer, HealFailed
from .contextscan import DockerfileScan
from .healaccess import heal_refused
from .spool import Budget, Spool, write_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildParams:
    """What of a ``POST /build`` query decides which images the build needs."""

    dockerfile: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    tag: str = ""
    """The first ``t``, for log lines."""


def build_params(query: str) -> BuildParams | None:
    """The build's parameters; None when its context is not the body (``remote``)."""
    params = parse_qs(query, keep_blank_values=True)

    def first(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values and values[0] else None

    if first("remote") is not None:
        return None
    try:
        args = gojson.loads(first("buildargs") or "{}")
    except ValueError:
        args = None  # the daemon refuses the build and says why
    build_args = (
        {k: v for k, v in args if isinstance(v, str)} if isinstance(args, gojson.Members) else {}
    )
    return BuildParams(first("dockerfile"), build_args, first("target"), first("t") or "")


class BuildHeal:
    """The ``POST /build`` handler: spool, find the bases, heal them, forward."""

    def __init__(
        self,
        config: Callable[[], Config],
        healer: Healer,
        on_over_budget: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._healer = healer
        self._on_over_budget = on_over_budget
        self.budget = Budget(lambda: config().heal.max_build_spool_total)
        """Bytes all builds' spools hold at once."""

    async def handle(self, exchange: Exchange, params: BuildParams) -> None:
        name = params.tag or "an untagged image"
        try:
            spool = Spool(self._healer.state_dir, self.budget)
        except OSError as exc:
            log.warning("build of %s forwarded unhealed: no spool file: %s", name, exc)
            await self._forward(exchange, None)
            return
        with spool:
            text = await self._dockerfile(exchange, spool, params, name)
            if text is None:
                return  # answered already
            if not await self._heal(exchange, text, params, name):
                return
            if exchange.client_gone:
                # Left during the heal (maybe unnoticed: a client that fell
                # behind is not read); nobody would read the build's output.
                log.info("client gave up waiting for the build of %s; not forwarded", name)
                return
            await self._forward(exchange, spool)

    async def _dockerfile(
        self, exchange: Exchange, spool: Spool, params: BuildParams, name: str
    ) -> str | None:
        """Spool the body until the Dockerfile is read; its text, "" if not found,
        or None when the exchange is over already."""
        limit = self._config().heal.max_build_spool
        scan = DockerfileScan(params.dockerfile, chunked=exchange.head.chunked, limit=limit)
        try:
            return await self._scan(exchange, spool, scan, name, limit)
        finally:
            scan.stop()  # a scan still in a worker thread ends at its next piece

    async def _scan(
        self, exchange: Exchange, spool: Spool, scan: DockerfileScan, name: str, limit: int
    ) -> str | None:
        complete = False
        spooled = 0
        while not scan.done:
            try:
                data = await exchange.read()
            except ConnectionError as exc:
                exchange.fail(400, f"bad request: {exc}")
                return None
            if data is None:
                return None  # outgrew the exchange's limit before streaming: forwarded
            complete = not data
            spooled += len(data)
            if not spool.reserve(len(data)):
                log.warning(
                    "build of %s forwarded unhealed: builds spool %d bytes already, and this "
                    "piece would pass [heal] max_build_spool_total",
                    name,
                    self.budget.used,
                )
                self._on_over_budget()
                await self._forward(exchange, spool, spooled - len(data), data)
                return None
            try:
                await spool.run(partial(_absorb, scan=scan, data=data))
                while scan.restart is not None:
                    scan = await spool.run(partial(_rescan, scan=scan, complete=complete))
            except OSError as exc:  # a full disk, say: what is on it and in hand still goes
                log.warning(
                    "build of %s forwarded unhealed: cannot spool its context: %s", name, exc
                )
                await self._forward(exchange, spool, spooled - len(data), data)
                return None
            if not scan.done and spooled > limit:
                log.warning(
                    "build of %s forwarded unhealed: no Dockerfile in the first %d bytes "
                    "([heal] max_build_spool)",
                    name,
                    limit,
                )
                return ""
        if scan.text is None:
            log.info("build of %s forwarded unhealed: %s", name, scan.failed)
            return ""
        return scan.text

    async def _heal(self, exchange: Exchange, text: str, params: BuildParams, name: str) -> bool:
        """Make sure of every managed image the build needs; False when it answered."""
        try:
            images = await dockerfile_images(
                self._healer.parser, text, params.build_args, params.target
            )
        except ParseFailed as exc:
            log.warning("build of %s forwarded unhealed: unparsed Dockerfile: %s", name, exc)
            return True
        for image in managed(self._config().recipes, images):
            refused = await heal_refused(exchange.refusal, self._healer, image)
            if refused is not None:
                await self._refuse(exchange, refused, 403)
                return False
            try:
                await self._healer.ensure(image, trigger="build")
            except HealFailed as failure:
                await self._refuse(exchange, str(failure))
                return False
        return True

    @staticmethod
    async def _refuse(exchange: Exchange, message: str, status: int = 500) -> None:
        """Answer once the body is over, so the client reads it (see the rules)."""
        try:
            while await exchange.read():
                pass
        except ConnectionError:
            pass
        exchange.fail(status, message)

    async def _forward(
        self, exchange: Exchange, spool: Spool | None, end: int | None = None, held: bytes = b""
    ) -> None:
        """Head, the spool's first ``end`` bytes (all by default), ``held``, then the rest."""
        if not await exchange.send(exchange.head.raw):
            return
        if spool is not None:
            async for piece in spool.replay(end):
                if not await exchange.send(piece):
                    return
        if held and not await exchange.send(held):
            return
        exchange.forward_rest()


def managed(recipes: Sequence[Recipe], images: list[str]) -> list[str]:
    """The images, normalised, that a recipe makes; the rest are the daemon's business."""
    found: list[str] = []
    for image in images:
        try:
            reference = normalize(image)
        except InvalidReference:
            continue  # the build will say so far better
        if find_recipe(recipes, reference) is not None:
            found.append(reference)
    return found


def _absorb(spool: IO[bytes], scan: DockerfileScan, data: bytes) -> None:
    """One piece of the body: onto disk, and past the scan (in a worker thread)."""
    if data:
        write_all(spool, data)
        scan.feed(data)
    else:
        scan.end()


def _rescan(spool: IO[bytes], scan: DockerfileScan, complete: bool) -> DockerfileScan:
    """A scan for the link target ``scan`` found, over the spool so far."""
    assert scan.restart is not None
    fresh = DockerfileScan(
        scan.restart, chunked=scan.chunked, limit=scan.limit, links=scan.links + 1
    )
    spool.seek(0)
    while not fresh.done and (piece := spool.read(1 << 20)):
        fresh.feed(piece)
    spool.seek(0, 2)  # appends go on at the end
    if complete:
        fresh.end()
    return fresh
