"""The requests the proxy looks into: container create, pulls of managed tags, status.

Rules:
- Forward first. A create is sent to the daemon as it came; only when the
  daemon answers 404 "No such image" for a tag some recipe builds does the
  proxy heal and replay the very same bytes once. The common case (the image
  is there) costs no extra round trip, and a prune between a check and the
  create cannot slip through, because there is no separate check.
- Bad input is never the proxy's business: a body that is not JSON, has no
  ``Image``, or names an invalid reference is forwarded untouched, so the
  daemon answers it exactly as it would without the proxy. The exception is
  a create nested deeper than Go's JSON reads (``gojson``): it gets the 400
  current dockerd gives it (20.10 said 500), without the proxy reading on.
- A failed heal answers 500, never 404: on 404 the docker CLI would try a
  registry pull and print "Unable to find image", and the reason would be lost.
- A pull of a tag that a (non-pull) recipe builds heals instead of asking a
  registry, answering in the pull's own JSON progress format, so compose and
  ``docker pull`` see a pull that worked, or an ``errorDetail`` that says why not.
- A build whose context is the body, FROM an image a recipe makes, gets the
  image healed before the daemon sees the build (``buildheal``).
- A create of a stale-mode tag asks the stale tracker first, from memory
  (one inspect only while its tag map is being relisted). A stale image is
  rebuilt before the create goes on (``on_stale = "rebuild"``, falling back
  to the old image if the rebuild fails, and ``"strict"``, failing the
  create with the reason), or the create goes on at once and the rebuild
  runs behind it (``"background"``).
- A heal is an action the caller asks for. Where its listener has a policy,
  a heal through a create or a pull, and a stale rebuild before a create,
  start only if that policy also allows what every step of the heal does
  (``healaccess``); otherwise a heal gets 403 saying which route it lacks,
  and a stale image is used as it is (``on_stale = "strict"``: 403). The
  request itself was judged before the interceptor saw it.
- ``/_heal/`` is the one path prefix the proxy answers itself: the status
  (``GET /_heal/status``) and a heal asked for from a shell
  (``POST /_heal/heal?image=IMAGE[&force=1]``, ``docker-heal-proxy heal``),
  which joins the single flight like any client: 200 with the outcome, 400
  for an image no recipe heals, 500 with the reason of a failed heal.

The pure helpers at the top decide; ``Interceptor`` does the I/O through an
``Exchange`` (see ``connection``) and the ``Healer``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from ...recipes.config import Config
from ...recipes.patterns import find_recipe
from ...recipes.reference import InvalidReference, normalize
from ...wire import gobind, gojson
from ...wire.http1 import RequestHead, ResponseHead, dechunk, field_values
from ...wire.local import Exchange, Handler
from ...wire.routes import HEAL_PATH, STATUS_PATH, api_path, is_form, pulled_reference
from ..core.healer import Healer, HealFailed
from ..stale.decision import Stale, Unknown
from ..stale.tracker import StaleTracker
from .buildheal import BuildHeal, build_params
from .healaccess import heal_refused
from .sessionheal import SessionHeal

log = logging.getLogger(__name__)


def image_from_create_body(body: bytes, chunked: bool) -> str | None:
    """The ``Image`` of a create request, or None if the daemon should judge it.

    Read by ``gobind``, the reader the body checks of a policy use, so the heal
    and the checks see one image, dockerd's; on a listener whose policy reads
    bodies, a body the checks refuse never gets here. A body dockerd would
    refuse (not JSON, an image not a string) is left to the daemon. Raises
    ``gojson.TooDeep`` for a body nested deeper than Go reads.
    """
    try:
        return gobind.create_image(dechunk(body) if chunked else body) or None
    except gojson.TooDeep:
        raise
    except ValueError:
        return None


def is_missing_image(head: ResponseHead, raw: bytes) -> bool:
    """Did the daemon refuse a create because the image is not there?"""
    if head.status != 404:
        return False
    body = raw[len(head.raw) :]
    if head.chunked:
        try:
            body = dechunk(body)
        except ValueError:
            return False
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and message.startswith("No such image")


def progress_line(entry: dict[str, Any]) -> bytes:
    """One line of a pull's progress stream as an HTTP chunk."""
    data = json.dumps(entry).encode() + b"\r\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


PROGRESS_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class Interceptor:
    """Claims the few requests the proxy handles; everything else is forwarded."""

    def __init__(
        self,
        config: Callable[[], Config],
        healer: Healer,
        on_check: Callable[[bool], None] = lambda present: None,
        on_used: Callable[[str], None] = lambda image: None,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        on_over_budget: Callable[[], None] = lambda: None,
        stale: StaleTracker | None = None,
    ) -> None:
        self._config = config
        self._healer = healer
        self._stale = stale
        self._on_check = on_check
        self._on_used = on_used
        self._snapshot = snapshot or healer.snapshot
        self.build = BuildHeal(config, healer, on_over_budget)
        self._behind: set[asyncio.Task[None]] = set()
        """Rebuilds of ``on_stale = "background"`` under way, kept until they end."""
        self.sessions = SessionHeal(config, healer)
        """The verdict on a BuildKit build's held Dockerfile, for the wire's hub."""

    def claim(self, head: RequestHead) -> Handler | None:
        if head.method == "POST":
            if head.path == HEAL_PATH:
                return self.heal
            if not self._config().recipes:
                return None
            path = api_path(head.path)
            if path == "/containers/create":
                return self.create
            if path == "/images/create":
                return self._pull_handler(head)
            if path == "/build":
                return self._build_handler(head)
            return None
        if head.method == "GET" and head.path == STATUS_PATH:
            return self.status
        return None

    def _managed(self, reference: str) -> bool:
        found = find_recipe(self._config().recipes, reference)
        return found is not None and found[0].kind != "pull"

    def _pull_handler(self, head: RequestHead) -> Handler | None:
        if (head.chunked or head.content_length) and is_form(field_values(head, b"content-type")):
            return self.form_pull  # dockerd reads parameters from the body too
        reference = pulled_reference(head.query)
        if reference is None or not self._managed(reference):
            return None

        async def pull(exchange: Exchange) -> None:
            if await exchange.body() is not None:
                await self.pull(exchange, reference)

        return pull

    async def form_pull(self, exchange: Exchange) -> None:
        """A pull whose parameters may be in a form body: claimed once they are read."""
        body = await exchange.body()
        if body is None:
            return  # over the limit: already forwarded as it came
        form = (dechunk(body) if exchange.head.chunked else body).decode("latin-1")
        reference = pulled_reference(exchange.head.query, form)
        if reference is None or not self._managed(reference):
            exchange.forward(exchange.head.raw + body)
            return
        await self.pull(exchange, reference)

    def _build_handler(self, head: RequestHead) -> Handler | None:
        params = build_params(head.query)
        if params is None:
            return None

        async def build(exchange: Exchange) -> None:
            await self.build.handle(exchange, params)

        return build

    async def create(self, exchange: Exchange) -> None:
        body = await exchange.body()
        if body is None:
            return  # too large to be a create we understand; already forwarded
        raw = exchange.head.raw + body
        try:
            image = image_from_create_body(body, exchange.head.chunked)
        except gojson.TooDeep as exc:
            exchange.fail(400, f"invalid JSON: {exc}")
            return
        found = None if image is None else find_recipe(self._config().recipes, image)
        if image is None or found is None:
            exchange.forward(raw)
            return
        if found[0].rebuild_when == "stale" and not await self._fresh(exchange, image):
            return
        answer = await exchange.roundtrip(raw)
        if answer is None:
            return
        head, response = answer
        missing = is_missing_image(head, response)
        self._on_check(not missing)
        if not missing:
            if head.status == 201:
                self._on_used(image)  # the tag exists: worth healing after a prune
            exchange.respond(response)
            return
        refused = await heal_refused(exchange.refusal, self._healer, image)
        if refused is not None:
            exchange.fail(403, refused)
            return
        try:
            await self._healer.heal(image, trigger="create")
        except HealFailed as failure:
            exchange.fail(500, str(failure))
            return
        if exchange.client_gone:
            # Replaying would create a container nobody starts, holding its name.
            log.info("client gave up waiting for %s; its create is not replayed", image)
            return
        exchange.forward(raw)

    async def _fresh(self, exchange: Exchange, image: str) -> bool:
        """Rebuild a stale image as its entry's ``on_stale`` says; False when the
        create is answered already (or its client has gone)."""
        tracker = self._stale
        if tracker is None:
            return True
        tag = tracker.tag(image)
        decision = tracker.decide(tag)
        if isinstance(decision, Unknown):
            decision = await tracker.judge(tag)
        if not isinstance(decision, Stale):
            return True
        found = find_recipe(self._config().recipes, tag)
        on_stale = found[0].on_stale if found is not None else "rebuild"
        log.info("%s is stale (%s): %s", tag, decision.reason, on_stale)
        refused = await heal_refused(exchange.refusal, self._healer, tag)
        if refused is not None:
            if on_stale == "strict":
                exchange.fail(403, refused)
                return False
            log.info("%s is used as it is, not rebuilt for this caller: %s", tag, refused)
            return True
        if on_stale == "background":
            task = asyncio.get_running_loop().create_task(self._rebuild_behind(tag))
            self._behind.add(task)
            task.add_done_callback(self._behind.discard)
            return True
        try:
            await self._healer.rebuild(tag, trigger="stale")
        except HealFailed as failure:
            tracker.failed(tag, str(failure))
            if on_stale == "strict":
                exchange.fail(500, str(failure))
                return False
            log.warning("rebuild of stale %s failed; the old image runs: %s", tag, failure)
        if exchange.client_gone:
            log.info("client gave up waiting for %s; its create is not sent", tag)
            return False
        return True

    async def _rebuild_behind(self, tag: str) -> None:
        tracker = self._stale
        try:
            await self._healer.rebuild(tag, trigger="stale")
        except HealFailed as failure:
            if tracker is not None:
                tracker.failed(tag, str(failure))
            log.warning("background rebuild of stale %s failed: %s", tag, failure)

    async def aclose(self) -> None:
        """Wait for the rebuilds running behind creates (the healer cancels them)."""
        await asyncio.gather(*self._behind, return_exceptions=True)

    async def pull(self, exchange: Exchange, reference: str) -> None:
        """Heal a managed tag in place of a pull; the request body has been read."""
        image = normalize(reference)  # valid: claim matched it against a recipe
        refused = await heal_refused(exchange.refusal, self._healer, image)
        if refused is not None:
            exchange.fail(403, refused)
            return
        exchange.write(PROGRESS_HEAD)
        exchange.write(progress_line({"status": f"Healing {image} (managed by docker-heal-proxy)"}))
        try:
            outcome = await self._healer.ensure(image, trigger="pull")
        except HealFailed as failure:
            message = str(failure)
            exchange.write(progress_line({"errorDetail": {"message": message}, "error": message}))
        else:
            self._on_used(image)  # a pull is a use, whether or not it had to heal
            exchange.write(progress_line({"status": f"Status: {outcome} for {image}"}))
        exchange.write(b"0\r\n\r\n")

    async def heal(self, exchange: Exchange) -> None:
        """A heal asked for by ``docker-heal-proxy heal``, run here with the service's state."""
        if await exchange.body() is None:
            return
        params = parse_qs(exchange.head.query)
        image = (params.get("image") or [""])[0]
        force = (params.get("force") or [""])[0] in ("1", "true")
        try:
            reference = normalize(image)
        except InvalidReference as exc:
            exchange.fail(400, f"docker-heal-proxy: cannot heal {image!r}: {exc}")
            return
        if find_recipe(self._config().recipes, reference) is None:
            exchange.fail(400, f"docker-heal-proxy: no recipe matches {image}")
            return
        try:
            outcome = await self._healer.ensure(reference, trigger="cli", force=force)
        except HealFailed as failure:
            exchange.fail(500, str(failure))
            return
        exchange.reply(200, json.dumps({"image": reference, "outcome": outcome}).encode() + b"\n")

    async def status(self, exchange: Exchange) -> None:
        if await exchange.body() is None:
            return
        snapshot = self._snapshot()
        # Private to the proxy socket, like the rest: what a leak test counts.
        snapshot["debug"] = {"tasks": len(asyncio.all_tasks())}
        exchange.reply(200, json.dumps(snapshot, indent=1).encode() + b"\n")
