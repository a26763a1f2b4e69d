"""metrics: names, bounded labels, healer gauges read at scrape time, the HTTP app.

``promtool check metrics`` (the Prometheus project's own linter) judges the
exposition text, so the naming conventions are checked by the tool that
defines them rather than by a list kept here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, require

from proxy import __version__
from proxy.healing.core.healer import Healer
from proxy.recipes.recipe import Recipe
from proxy.service.metrics import METHODS, PREFIX, Metrics, application
from proxy.wire.routes import route


@dataclass
class HealerState:
    """Just the attributes the scrape-time collector reads."""

    running: dict[str, object] = field(default_factory=dict)
    waiters: int = 0
    cooldowns: dict[str, int] = field(default_factory=dict)

    def cooldown_counts(self) -> dict[str, int]:
        return self.cooldowns


def samples(
    metrics: Metrics | CollectorRegistry,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = metrics.registry if isinstance(metrics, Metrics) else metrics
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def busy_metrics() -> Metrics:
    state = HealerState({"a": object(), "b": object()}, 5, {"app:*": 1, "tool:1": 0})
    metrics = Metrics(lambda: cast(Healer, state))
    metrics.exchange("GET", "/v1.41/containers/0123abcd/json", 200, 0.01)
    metrics.exchange("GET", "/containers/0123abcd/json", 404, 0.02)
    metrics.exchange("BREW", "/v1.41/coffee", 418, 0.5)
    metrics.upstream_error("connect")
    metrics.hijacked(1)
    metrics.image_checked(True)
    metrics.image_checked(False)
    metrics.heal_finished("app:*", True, 42.0, "create", "recipe")
    metrics.heal_finished("app:*", False, 3000.0, "create", "recipe")
    metrics.heal_finished("app:*", True, 7.0, "proactive", "recipe")
    metrics.heal_finished("app:*", True, 2.0, "create", "cache")
    metrics.cache_pulled("hit")
    metrics.cache_pulled("error")
    metrics.cache_pushed("error")
    return metrics


def test_labels_are_route_templates_and_bounded_methods() -> None:
    got = samples(busy_metrics())
    requests = PREFIX + "requests_total"
    assert (
        got[(requests, (("code", "200"), ("method", "GET"), ("route", "/containers/{id}/json")))]
        == 1
    )
    assert (
        got[(requests, (("code", "404"), ("method", "GET"), ("route", "/containers/{id}/json")))]
        == 1
    )
    assert got[(requests, (("code", "418"), ("method", "other"), ("route", "other")))] == 1
    count = PREFIX + "request_duration_seconds_count"
    assert got[(count, (("route", "/containers/{id}/json"),))] == 2
    assert all("0123abcd" not in str(key) for key in got)


_EXCHANGES = st.lists(
    st.tuples(
        st.sampled_from(["GET", "HEAD", "POST", "BREW"]),
        st.sampled_from(["/_ping", "/v1.41/containers/0123abcd/json", "/v1.41/info", "/nope"]),
        st.sampled_from([101, 200, 404, 500]),
        st.floats(0, 20) | st.sampled_from([0.005, 0.1, 10.0]),  # bounds land in their own bucket
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(_EXCHANGES)
def test_request_series_are_what_prometheus_client_would_write(
    exchanges: list[tuple[str, str, int, float]],
) -> None:
    """The data path counts in plain numbers; the scrape must not tell the difference."""
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter(
        PREFIX + "requests_total", "r", ["method", "route", "code"], registry=reference
    )
    duration = Histogram(PREFIX + "request_duration_seconds", "d", ["route"], registry=reference)
    for method, path, status, seconds in exchanges:
        metrics.exchange(method, path, status, seconds)
        label = method if method in METHODS else "other"
        requests.labels(label, route(path), str(status)).inc()
        duration.labels(route(path)).observe(seconds)
    ours = {k: v for k, v in samples(metrics).items() if "request" in k[0]}
    assert ours == samples(reference)


def test_every_metric_of_the_issue_is_exported() -> None:
    got = samples(busy_metrics())
    p = PREFIX
    assert got[(p + "upstream_errors_total", (("kind", "connect"),))] == 1
    assert got[(p + "hijacked_connections", ())] == 1
    assert got[(p + "image_checks_total", (("result", "present"),))] == 1
    assert got[(p + "image_checks_total", (("result", "missing"),))] == 1
    heals = p + "heals_total"
    app = ("image", "app:*")
    create, proactive = ("trigger", "create"), ("trigger", "proactive")
    recipe, cache = ("source", "recipe"), ("source", "cache")
    assert got[(heals, (app, ("result", "success"), recipe, create))] == 1
    assert got[(heals, (app, ("result", "failure"), recipe, create))] == 1
    assert got[(heals, (app, ("result", "success"), recipe, proactive))] == 1
    assert got[(heals, (app, ("result", "success"), cache, create))] == 1
    assert got[(p + "cache_pulls_total", (("result", "hit"),))] == 1
    assert got[(p + "cache_pulls_total", (("result", "error"),))] == 1
    assert got[(p + "cache_pushes_total", (("result", "error"),))] == 1
    # An hour-long heal still lands in a finite bucket.
    bucket = p + "heal_duration_seconds_bucket"
    assert got[(bucket, (app, ("le", "3600.0"), create))] == 3
    assert got[(bucket, (app, ("le", "60.0"), create))] == 2
    assert got[(p + "proactive_blocked", (("reason", "min_free"),))] == 0
    assert (p + "events_stream_up", ()) not in got, "no proactive recipe, no stream"
    assert got[(p + "heals_in_progress", ())] == 2
    assert got[(p + "heal_waiters", ())] == 5
    assert got[(p + "heal_cooldown_active", (("image", "app:*"),))] == 1
    assert got[(p + "heal_cooldown_active", (("image", "tool:1"),))] == 0
    assert got[(p + "build_info", (("version", __version__),))] == 1


def test_audit_drops_are_read_from_the_log_at_scrape_time() -> None:
    dropped = [0]
    metrics = Metrics(audit_dropped=lambda: dropped[0])
    assert samples(metrics)[(PREFIX + "audit_dropped_total", ())] == 0
    dropped[0] = 7
    assert samples(metrics)[(PREFIX + "audit_dropped_total", ())] == 7


def test_healer_gauges_follow_the_healer_at_scrape_time() -> None:
    state = HealerState()
    metrics = Metrics(lambda: cast(Healer, state))
    assert samples(metrics)[(PREFIX + "heals_in_progress", ())] == 0
    state.running["x"] = object()
    state.waiters = 2
    got = samples(metrics)
    assert got[(PREFIX + "heals_in_progress", ())] == 1
    assert got[(PREFIX + "heal_waiters", ())] == 2
    # Before the healer exists (start-up), the gauges read zero rather than failing.
    assert samples(Metrics())[(PREFIX + "heal_waiters", ())] == 0


def test_promtool_accepts_the_exposition() -> None:
    promtool = require("promtool")
    text = generate_latest(busy_metrics().registry)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"", result.stdout.decode()  # no lint warnings either


def with_client(
    ping: Callable[[], Awaitable[str | None]], use: Callable[[TestClient[Any, Any]], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(application(busy_metrics(), ping))) as client:
            return await use(client)

    return asyncio.run(main())


async def healthy() -> str | None:
    return None


async def daemon_down() -> str | None:
    return "cannot reach the Docker daemon at /x.sock: refused"


def test_app_serves_metrics_and_health() -> None:
    async def use(client: TestClient[Any, Any]) -> tuple[int, str, str, int, Any]:
        scrape = await client.get("/metrics")
        health = await client.get("/healthz")
        return (
            scrape.status,
            scrape.headers["Content-Type"],
            await scrape.text(),
            health.status,
            await health.json(),
        )

    code, content_type, text, health_code, health = with_client(healthy, use)
    assert code == 200 and content_type.startswith("text/plain")
    assert PREFIX + "heals_total" in text
    assert (health_code, health) == (200, {"status": "ok"})


def test_health_is_503_with_the_reason_when_the_daemon_is_down() -> None:
    async def use(client: TestClient[Any, Any]) -> tuple[int, Any]:
        health = await client.get("/healthz")
        return health.status, await health.json()

    code, body = with_client(daemon_down, use)
    assert code == 503
    assert body == {
        "status": "unhealthy",
        "message": "cannot reach the Docker daemon at /x.sock: refused",
    }


def test_the_healer_state_is_not_on_the_metrics_listener() -> None:
    async def use(client: TestClient[Any, Any]) -> int:
        return (await client.get("/_heal/status")).status

    assert with_client(healthy, use) == 404


def test_alerted_series_exist_at_zero_before_anything_happens() -> None:
    """``increase()`` ignores a series' first sample: a counter that appears at
    1 on the first failure would never fire the heal-failure alert."""
    metrics = Metrics()
    metrics.recipes_configured(
        [
            Recipe(index=0, match="app:*", kind="command", cache=True),
            Recipe(index=1, match="tool:1", kind="load"),
        ]
    )
    got = samples(metrics)
    heals = PREFIX + "heals_total"
    for image in ("app:*", "tool:1"):
        for trigger in ("create", "pull", "build", "proactive", "stale", "cli"):
            # samples() sorts the labels by name: image, result, source, trigger.
            for result in ("success", "failure"):
                labels = (("image", image), ("result", result), ("source", "recipe"))
                assert got[(heals, (*labels, ("trigger", trigger)))] == 0
            count = PREFIX + "heal_duration_seconds_count"
            assert got[(count, (("image", image), ("trigger", trigger)))] == 0
            cached = (("image", image), ("result", "success"), ("source", "cache"))
            assert ((heals, (*cached, ("trigger", trigger))) in got) == (image == "app:*")
    for result in ("hit", "miss", "error"):
        assert got[(PREFIX + "cache_pulls_total", (("result", result),))] == 0
    for result in ("success", "error"):
        assert got[(PREFIX + "cache_pushes_total", (("result", result),))] == 0
    for kind in ("connect", "protocol", "closed"):
        assert got[(PREFIX + "upstream_errors_total", (("kind", kind),))] == 0
    for result in ("present", "missing"):
        assert got[(PREFIX + "image_checks_total", (("result", result),))] == 0
    assert got[(PREFIX + "audit_dropped_total", ())] == 0


@dataclass
class ProactiveState:
    enabled: bool = True
    following: bool = True
    events_up: bool = False
    last_reconcile: float | None = None
    reasons: dict[str, bool] = field(default_factory=dict)

    def blocked(self) -> dict[str, bool]:
        return self.reasons


def test_proactive_gauges_follow_the_watcher_at_scrape_time() -> None:
    state = ProactiveState()
    metrics = Metrics(proactive=lambda: state)
    got = samples(metrics)
    assert got[(PREFIX + "events_stream_up", ())] == 0
    assert (PREFIX + "last_reconcile_timestamp_seconds", ()) not in got, "no reconcile yet"
    state.events_up = True
    state.last_reconcile = 1700000000.5
    state.reasons["min_free"] = True
    got = samples(metrics)
    assert got[(PREFIX + "events_stream_up", ())] == 1
    assert got[(PREFIX + "last_reconcile_timestamp_seconds", ())] == 1700000000.5
    assert got[(PREFIX + "proactive_blocked", (("reason", "min_free"),))] == 1
    state.enabled = False  # stale mode alone: the stream, but no reconcile
    got = samples(metrics)
    assert got[(PREFIX + "events_stream_up", ())] == 1
    assert (PREFIX + "last_reconcile_timestamp_seconds", ()) not in got
    state.following = False
    got = samples(metrics)
    assert (PREFIX + "events_stream_up", ()) not in got
    assert got[(PREFIX + "proactive_blocked", (("reason", "min_free"),))] == 1


@dataclass
class StaleState:
    tags: dict[str, str] = field(default_factory=dict)

    def stale(self) -> dict[str, str]:
        return self.tags


def test_the_stale_images_gauge_counts_the_stale_tags_at_scrape_time() -> None:
    state = StaleState()
    metrics = Metrics(stale=lambda: state)
    assert samples(metrics)[(PREFIX + "stale_images", ())] == 0
    state.tags["docker.io/library/app:latest"] = "src/msg changed"
    assert samples(metrics)[(PREFIX + "stale_images", ())] == 1
    assert samples(Metrics())[(PREFIX + "stale_images", ())] == 0


def test_health_carries_detail_without_being_decided_by_it() -> None:
    async def main() -> tuple[int, Any]:
        detail = {"events": {"up": False, "detail": "reconnecting"}}
        app = application(Metrics(), healthy, lambda: dict(detail))
        async with TestClient(TestServer(app)) as client:
            health = await client.get("/healthz")
            return health.status, await health.json()

    code, body = asyncio.run(main())
    assert (code, body) == (
        200,
        {"status": "ok", "events": {"up": False, "detail": "reconnecting"}},
    )


def test_the_cache_push_alert_fires_when_most_pushes_fail(tmp_path: Path) -> None:
    """``promtool test rules``: a host whose pushes fail alerts; one failed push among
    good ones does not, and neither does a clean host."""
    promtool = require("promtool")
    summary = "docker-heal-proxy cannot push to the registry cache from a"
    description = (
        "Heals on a ran their recipe and could not push the result, so other hosts build "
        "it again. Check the push credentials for `[heal] cache` "
        '(`journalctl -u docker-heal-proxy | grep "cache push"`).'
    )
    tests = tmp_path / "tests.yml"
    tests.write_text(
        f"""
rule_files: [{REPO / "contrib" / "alerts.yml"}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'docker_heal_proxy_cache_pushes_total{{result="error",instance="a"}}'
        values: '0 0 1+0x20'
      - series: 'docker_heal_proxy_cache_pushes_total{{result="success",instance="a"}}'
        values: '0+0x22'
      - series: 'docker_heal_proxy_cache_pushes_total{{result="error",instance="b"}}'
        values: '0 0 1+0x20'
      - series: 'docker_heal_proxy_cache_pushes_total{{result="success",instance="b"}}'
        values: '0+1x22'
      - series: 'docker_heal_proxy_cache_pushes_total{{result="error",instance="c"}}'
        values: '0+0x22'
      - series: 'docker_heal_proxy_cache_pushes_total{{result="success",instance="c"}}'
        values: '0+0x22'
    alert_rule_test:
      - eval_time: 5m
        alertname: DockerHealProxyCachePushErrors
      - eval_time: 20m
        alertname: DockerHealProxyCachePushErrors
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a}}
            exp_annotations:
              summary: {json.dumps(summary)}
              description: {json.dumps(description)}
"""
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
