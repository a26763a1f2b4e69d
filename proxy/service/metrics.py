"""Prometheus metrics and the health endpoint, on a listener of their own.

Rules:
- Names carry the ``docker_heal_proxy_`` prefix, durations are in seconds,
  counters end in ``_total``.
- Every label is bounded: ``route`` is an Engine API path template (see
  ``routes``), ``method`` one of the HTTP methods or ``other``, ``image`` the
  recipe's ``match`` string as written, never a concrete tag.
- Gauges that describe the healer's state (heals in progress, waiters,
  cooldowns) are read from it at scrape time, so they cannot drift from it.
- The data path pays one dict lookup and two increments per request: label
  children are cached.
- Metrics are never served on the Docker socket's URL space, only on the TCP
  listener given by ``[metrics] listen``.
- ``events_stream_up`` and ``last_reconcile_timestamp_seconds`` exist only
  while a recipe is proactive: a proxy that follows no events has no stream
  to be down.
- Series an alert is written against exist from start-up at zero (every
  ``heals_total`` result of every recipe, both image check results, every
  upstream error kind, every cache pull and push result). ``increase()``
  and ``rate()`` see nothing on a series whose first sample is already 1, so
  a first failure would never alert.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..healing.cache import PULL_RESULTS, PUSH_RESULTS
from ..recipes.recipe import Recipe
from ..wire.routes import route

PREFIX = "docker_heal_proxy_"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# ``*_created`` series would double the output, and no alert or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

HEAL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, float("inf"))
UPSTREAM_ERROR_KINDS = ("connect", "protocol", "closed")
"""The kinds ``connection`` reports; listed so each series starts at zero."""
TRIGGERS = ("create", "pull", "build", "proactive")
"""What can start a heal in the proxy; each series starts at zero. ``cli``
heals (``docker-heal-proxy heal``) run in a process of their own, which has
no metrics: a ``cli`` series here could never move."""
BLOCK_REASONS = ("min_free",)
"""Why proactive heals can be held back; each series starts at zero."""


class HealerView(Protocol):
    """What a scrape reads of the healer: a Protocol, so metrics depend on those three
    readings and not on the Healer class."""

    @property
    def running(self) -> Sized: ...

    @property
    def waiters(self) -> int: ...

    def cooldown_counts(self) -> dict[str, int]: ...


class ProactiveView(Protocol):
    """What a scrape reads of proactive healing; None before start-up."""

    @property
    def enabled(self) -> bool: ...

    @property
    def events_up(self) -> bool: ...

    @property
    def last_reconcile(self) -> float | None: ...

    def blocked(self) -> dict[str, bool]: ...


class _ProactiveState(Collector):
    def __init__(self, proactive: Callable[[], ProactiveView | None]) -> None:
        self._proactive = proactive

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._proactive()
        blocked = GaugeMetricFamily(
            PREFIX + "proactive_blocked",
            "1 while proactive heals wait, by reason (min_free: too little free disk).",
            labels=["reason"],
        )
        reasons = view.blocked() if view is not None else {}
        for reason in BLOCK_REASONS:
            blocked.add_metric([reason], int(reasons.get(reason, False)))
        yield blocked
        if view is None or not view.enabled:
            return  # no stream to be down: its alert must not fire on proxies without proactive
        stream = GaugeMetricFamily(
            PREFIX + "events_stream_up",
            "1 while the proxy follows the daemon's image events (with proactive recipes only).",
        )
        stream.add_metric([], int(view.events_up))
        yield stream
        if view.last_reconcile is not None:
            last = GaugeMetricFamily(
                PREFIX + "last_reconcile_timestamp_seconds",
                "When the images were last compared with the remembered managed tags (Unix time).",
            )
            last.add_metric([], view.last_reconcile)
            yield last


class _HealerState(Collector):
    def __init__(self, healer: Callable[[], HealerView | None]) -> None:
        self._healer = healer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healer = self._healer()
        in_progress = GaugeMetricFamily(
            PREFIX + "heals_in_progress", "Heals currently running or waiting for their bases."
        )
        waiters = GaugeMetricFamily(
            PREFIX + "heal_waiters", "Requests currently waiting for a heal to finish."
        )
        cooldown = GaugeMetricFamily(
            PREFIX + "heal_cooldown_active",
            "Tags of this recipe whose last heal failed and that are in failure cooldown.",
            labels=["image"],
        )
        in_progress.add_metric([], len(healer.running) if healer else 0)
        waiters.add_metric([], healer.waiters if healer else 0)
        if healer is not None:
            for match, count in healer.cooldown_counts().items():
                cooldown.add_metric([match], count)
        yield in_progress
        yield waiters
        yield cooldown


class Metrics:
    """The proxy's metrics; an ``Observer`` for the data path and the healer."""

    def __init__(
        self,
        healer: Callable[[], HealerView | None] = lambda: None,
        proactive: Callable[[], ProactiveView | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Requests answered, by method, Engine API route and status code.",
            ["method", "route", "code"],
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from a request's head to its response's head.",
            ["route"],
            registry=r,
        )
        self.upstream_errors = Counter(
            PREFIX + "upstream_errors_total",
            "Failures talking to the Docker daemon, by kind.",
            ["kind"],
            registry=r,
        )
        self.hijacked_connections = Gauge(
            PREFIX + "hijacked_connections",
            "Connections currently spliced raw (attach, exec, h2c).",
            registry=r,
        )
        self.h2_connections = Counter(
            PREFIX + "h2_connections_total",
            "Connections that opened with the HTTP/2 preface, spliced whole to the daemon.",
            registry=r,
        )
        self.image_checks = Counter(
            PREFIX + "image_checks_total",
            "Creates of recipe-managed images, by whether the image was there.",
            ["result"],
            registry=r,
        )
        self.heals = Counter(
            PREFIX + "heals_total",
            "Heals, by recipe match string, result, what started them and source "
            "(recipe run or cache pull).",
            ["image", "result", "trigger", "source"],
            registry=r,
        )
        self.cache_pulls = Counter(
            PREFIX + "cache_pulls_total",
            "Tries of the registry cache before a recipe, by result (hit, miss, error).",
            ["result"],
            registry=r,
        )
        self.cache_pushes = Counter(
            PREFIX + "cache_pushes_total",
            "Pushes to the registry cache after a recipe run, by result.",
            ["result"],
            registry=r,
        )
        self.heal_duration = Histogram(
            PREFIX + "heal_duration_seconds",
            "How long a recipe run took, by recipe match string and what started it.",
            ["image", "trigger"],
            buckets=HEAL_BUCKETS,
            registry=r,
        )
        Gauge(PREFIX + "build_info", "The proxy's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        r.register(_HealerState(healer))
        r.register(_ProactiveState(proactive))
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for result in ("present", "missing"):
            self.image_checks.labels(result)
        for result in PULL_RESULTS:
            self.cache_pulls.labels(result)
        for result in PUSH_RESULTS:
            self.cache_pushes.labels(result)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    # -- connection.Observer ---------------------------------------------------

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:
            template = route(path)
            label = method if method in METHODS else "other"
            children = (
                self.requests.labels(label, template, str(status)),
                self.duration.labels(template),
            )
            if len(self._children) < 10000:  # paths hold ids: cache, but boundedly
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()

    def hijacked(self, delta: int) -> None:
        self.hijacked_connections.inc(delta)

    def h2_spliced(self) -> None:
        self.h2_connections.inc()

    # -- healer and interceptor --------------------------------------------------

    def recipes_configured(self, recipes: Iterable[Recipe]) -> None:
        """Start each recipe's heal series at zero (see the module rules); on start and reload.

        Series of recipes a reload removed stay: their counts are history.
        A cache pull never fails a heal, so only success has a cache series.
        """
        for recipe in recipes:
            for trigger in TRIGGERS:
                for result in ("success", "failure"):
                    self.heals.labels(recipe.match, result, trigger, "recipe")
                if recipe.cache:
                    self.heals.labels(recipe.match, "success", trigger, "cache")
                self.heal_duration.labels(recipe.match, trigger)

    def heal_finished(
        self, match: str, success: bool, seconds: float, trigger: str, source: str
    ) -> None:
        self.heals.labels(match, "success" if success else "failure", trigger, source).inc()
        self.heal_duration.labels(match, trigger).observe(seconds)

    def cache_pulled(self, result: str) -> None:
        self.cache_pulls.labels(result).inc()

    def cache_pushed(self, result: str) -> None:
        self.cache_pushes.labels(result).inc()

    def image_checked(self, present: bool) -> None:
        self.image_checks.labels("present" if present else "missing").inc()


def application(
    metrics: Metrics,
    daemon_ping: Callable[[], Awaitable[str | None]],
    detail: Callable[[], dict[str, object]] = dict,
) -> web.Application:
    """``/metrics`` and ``/healthz``; ``daemon_ping`` returns None or why the daemon is down.

    ``detail`` adds keys to the health answer that do not decide it: the
    event stream reconnecting after a daemon restart is not ill health.
    """

    async def scrape(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def healthz(request: web.Request) -> web.Response:
        problem = await daemon_ping()
        if problem is None:
            return web.json_response({"status": "ok", **detail()})
        return web.json_response(
            {"status": "unhealthy", "message": problem, **detail()}, status=503
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app
