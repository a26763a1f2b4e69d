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
- Series an alert is written against exist from start-up at zero (every
  ``heals_total`` result of every recipe, both image check results, every
  upstream error kind). ``increase()`` and ``rate()`` see nothing on a series
  whose first sample is already 1, so a first failure would never alert.
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
from ..wire.routes import route

PREFIX = "docker_heal_proxy_"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# ``*_created`` series would double the output, and no alert or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

HEAL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, float("inf"))
UPSTREAM_ERROR_KINDS = ("connect", "protocol", "closed")
"""The kinds ``connection`` reports; listed so each series starts at zero."""


class HealerView(Protocol):
    """What a scrape reads of the healer; a Protocol so metrics need not import healing."""

    @property
    def running(self) -> Sized: ...

    @property
    def waiters(self) -> int: ...

    def cooldown_counts(self) -> dict[str, int]: ...


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

    def __init__(self, healer: Callable[[], HealerView | None] = lambda: None) -> None:
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
            "Recipe runs, by recipe match string and result.",
            ["image", "result"],
            registry=r,
        )
        self.heal_duration = Histogram(
            PREFIX + "heal_duration_seconds",
            "How long a recipe run took, by recipe match string.",
            ["image"],
            buckets=HEAL_BUCKETS,
            registry=r,
        )
        Gauge(PREFIX + "build_info", "The proxy's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        r.register(_HealerState(healer))
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for result in ("present", "missing"):
            self.image_checks.labels(result)
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

    def recipes_configured(self, matches: Iterable[str]) -> None:
        """Start each recipe's heal series at zero (see the module rules); on start and reload.

        Series of recipes a reload removed stay: their counts are history.
        """
        for match in matches:
            for result in ("success", "failure"):
                self.heals.labels(match, result)
            self.heal_duration.labels(match)

    def heal_finished(self, match: str, success: bool, seconds: float) -> None:
        self.heals.labels(match, "success" if success else "failure").inc()
        self.heal_duration.labels(match).observe(seconds)

    def image_checked(self, present: bool) -> None:
        self.image_checks.labels("present" if present else "missing").inc()


def application(
    metrics: Metrics, daemon_ping: Callable[[], Awaitable[str | None]]
) -> web.Application:
    """``/metrics`` and ``/healthz``; ``daemon_ping`` returns None or why the daemon is down."""

    async def scrape(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def healthz(request: web.Request) -> web.Response:
        problem = await daemon_ping()
        if problem is None:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unhealthy", "message": problem}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app
