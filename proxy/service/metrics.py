"""Prometheus metrics and the health endpoint, on a listener of their own.

Rules:
- Names carry the ``docker_heal_proxy_`` prefix, durations are in seconds,
  counters end in ``_total``.
- Every label is bounded: ``route`` is an Engine API path template (see
  ``routes``), ``method`` one of the HTTP methods or ``other``, ``image`` the
  recipe's ``match`` string as written, never a concrete tag.
- Gauges that describe the healer's state (heals in progress, waiters,
  cooldowns) are read from it at scrape time, so they cannot drift from it.
- The data path pays one dict lookup, a bisect and three additions per
  request: ``requests_total`` and ``request_duration_seconds`` are plain
  numbers (``_Requests``) turned into samples at scrape time, since
  prometheus_client's own classes lock and call through several layers per
  increment, a microsecond of every proxied request.
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

from bisect import bisect_left
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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..healing.sources.cache import PULL_RESULTS, PUSH_RESULTS
from ..recipes.recipe import Recipe
from ..wire.routes import route

PREFIX = "docker_heal_proxy_"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# ``*_created`` series would double the output, and no alert or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

HEAL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, float("inf"))
UPSTREAM_ERROR_KINDS = ("connect", "protocol", "closed")
"""The kinds ``connection`` reports; listed so each series starts at zero."""
TRIGGERS = ("create", "pull", "build", "proactive", "stale", "cli")
"""What can start a heal in the proxy; each series starts at zero. ``cli`` is
``docker-heal-proxy heal``, which asks the running proxy to heal."""
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
    def following(self) -> bool:
        """Whether the image events are followed (proactive or stale-mode entries)."""

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
        if view is None or not view.following:
            return  # no stream to be down: its alert must not fire on proxies that need none
        stream = GaugeMetricFamily(
            PREFIX + "events_stream_up",
            "1 while the proxy follows the daemon's image events "
            "(with proactive or stale-mode recipes only).",
        )
        stream.add_metric([], int(view.events_up))
        yield stream
        if view.enabled and view.last_reconcile is not None:
            last = GaugeMetricFamily(
                PREFIX + "last_reconcile_timestamp_seconds",
                "When the images were last compared with the remembered managed tags (Unix time).",
            )
            last.add_metric([], view.last_reconcile)
            yield last


class StaleView(Protocol):
    """What a scrape reads of stale mode; None before start-up."""

    def stale(self) -> dict[str, str]: ...


class _StaleState(Collector):
    def __init__(self, stale: Callable[[], StaleView | None]) -> None:
        self._stale = stale

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._stale()
        gauge = GaugeMetricFamily(
            PREFIX + "stale_images",
            "Managed tags (rebuild_when = stale) whose image is stale now: its inputs "
            "or a managed base changed since it was built.",
        )
        gauge.add_metric([], len(view.stale()) if view is not None else 0)
        yield gauge


class _AuditDropped(Collector):
    def __init__(self, dropped: Callable[[], int]) -> None:
        self._dropped = dropped

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            PREFIX + "audit_dropped",
            "Audit log lines lost: the writer fell behind (on_full = drop) or the log "
            "refused a write.",
            value=self._dropped(),
        )


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


class _Requests(Collector):
    """``requests_total`` and ``request_duration_seconds`` as plain numbers.

    Every exchange of the data path lands here. The data path and the scrape
    (a synchronous ``generate_latest`` in an aiohttp handler) both run on the
    event loop's thread, and nothing else calls ``exchange``, so plain
    additions are exact without the locks of prometheus_client's Counter and
    Histogram, and the samples written at scrape time are the ones those
    would write.
    """

    BOUNDS = Histogram.DEFAULT_BUCKETS
    """Upper bounds of the duration buckets, ``+Inf`` last."""
    LE = tuple(floatToGoString(b) for b in BOUNDS)  # type: ignore[no-untyped-call]
    """The bounds as the ``le`` label writes them."""
    CACHED = 10000
    """Most (method, path, status) keys remembered: paths hold ids."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], list[int]] = {}
        """By method label, route and code: a one-element list, shared by the keys of one series."""
        self.durations: dict[str, list[float]] = {}
        """By route: the count in each bucket (not cumulative), then the sum."""
        self._cells: dict[tuple[str, str, int], tuple[list[int], list[float]]] = {}

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None:
        cells = self._cells.get((method, path, status))
        if cells is None:
            cells = self._series(method, path, status)
        count, duration = cells
        count[0] += 1
        duration[bisect_left(self.BOUNDS, seconds)] += 1
        duration[-1] += seconds

    def _series(self, method: str, path: str, status: int) -> tuple[list[int], list[float]]:
        template = route(path)
        label = method if method in METHODS else "other"
        count = self.counts.setdefault((label, template, str(status)), [0])
        duration = self.durations.setdefault(template, [0.0] * (len(self.BOUNDS) + 1))
        if len(self._cells) < self.CACHED:
            self._cells[(method, path, status)] = (count, duration)
        return count, duration

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "requests_total",
            "Requests answered, by method, Engine API route and status code.",
            labels=["method", "route", "code"],
        )
        for labels, (count,) in self.counts.items():
            requests.add_metric(labels, count)
        yield requests
        duration = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time from a request's head to its response's head.",
            labels=["route"],
        )
        for template, cells in self.durations.items():
            running = 0.0
            buckets = []
            for le, n in zip(self.LE, cells[:-1], strict=True):
                running += n
                buckets.append((le, running))
            duration.add_metric([template], buckets, cells[-1])
        yield duration


class Metrics:
    """The proxy's metrics; an ``Observer`` for the data path and the healer."""

    def __init__(
        self,
        healer: Callable[[], HealerView | None] = lambda: None,
        proactive: Callable[[], ProactiveView | None] = lambda: None,
        stale: Callable[[], StaleView | None] = lambda: None,
        spooled: Callable[[], int] = lambda: 0,
        audit_dropped: Callable[[], int] = lambda: 0,
    ) -> None:
        """``audit_dropped`` reads the audit log's count of lines lost (0 without one)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = _Requests()
        r.register(self._requests)
        self.exchange = self._requests.exchange
        """The data path's ``Observer.exchange``: bound once, called without a hop."""
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
        self.policy_denials = Counter(
            PREFIX + "policy_denials_total",
            "Requests a listener's policy refused, by listener, policy and route template.",
            ["listener", "policy", "route"],
            registry=r,
        )
        self.session_fail_open = Counter(
            PREFIX + "build_session_fail_open_total",
            "BuildKit /session connections the proxy stopped reading along (spliced as they are).",
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
            "How long a heal took (a recipe run or a cache pull), by recipe match string "
            "and what started it.",
            ["image", "trigger"],
            buckets=HEAL_BUCKETS,
            registry=r,
        )
        self.builds_over_spool_budget = Counter(
            PREFIX + "builds_over_spool_budget_total",
            "Builds forwarded unhealed because all builds' spools together would pass "
            "[heal] max_build_spool_total.",
            registry=r,
        )
        Gauge(
            PREFIX + "build_spool_bytes",
            "Bytes of build bodies spooled now, by all builds, against max_build_spool_total.",
            registry=r,
        ).set_function(spooled)
        Gauge(PREFIX + "build_info", "The proxy's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        r.register(_HealerState(healer))
        r.register(_ProactiveState(proactive))
        r.register(_StaleState(stale))
        r.register(_AuditDropped(audit_dropped))
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for result in ("present", "missing"):
            self.image_checks.labels(result)
        for result in PULL_RESULTS:
            self.cache_pulls.labels(result)
        for result in PUSH_RESULTS:
            self.cache_pushes.labels(result)

    # -- hub.Observer (``exchange`` is ``_Requests.exchange``) ------------

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()

    def hijacked(self, delta: int) -> None:
        self.hijacked_connections.inc(delta)

    def h2_spliced(self) -> None:
        self.h2_connections.inc()

    def session_gave_up(self) -> None:
        self.session_fail_open.inc()

    def policy_denied(self, listener: str, policy: str, route: str) -> None:
        self.policy_denials.labels(listener, policy, route).inc()

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

    def build_over_spool_budget(self) -> None:
        self.builds_over_spool_budget.inc()

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
