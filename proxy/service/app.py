"""The composition root: the one place that wires the parts together.

Rules:
- Parts do not construct each other; this module builds the hub, the
  healer, the interceptor and the metrics from the settings and the config.
- Per-request log lines exist only at debug level: the wrapper that writes
  them is installed only then, so the data path pays nothing otherwise. They
  name method, path (never the query, which can carry build args), status
  and time; never headers.
- A reload (SIGHUP) swaps the config in place. Sockets, paths, the shutdown
  budget and the metrics listener are bound at start-up (moving a socket
  under live connections would drop them): a reload that changes one is
  still taken, and logs that the change waits for a restart. A config the
  next start would refuse is refused whole, keeping the running one.
- The audit log comes opened (a log that cannot be opened stops start-up
  before any socket is bound); its writer starts first and stops last, once
  the connections whose lines it takes have ended. A SIGHUP reopens it
  before the config is read, so logrotate's rename is followed even when the
  reload is refused; ``[audit]`` itself is bound at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import fields

from aiohttp import web

from ..healing.background.proactive import Proactive
from ..healing.claims.intercept import Interceptor
from ..healing.claims.spool import sweep
from ..healing.core.healer import Healer
from ..healing.sources.engine import Engine
from ..healing.stale.tracker import StaleTracker
from ..recipes.config import Config, ConfigError
from ..wire.hub import Hub, Judge, Observer
from ..wire.listener import ListenerError
from ..wire.peer import ClientRule
from .auditsink import AuditSink
from .daemonview import DaemonView
from .listeners import FULL, ListenerSettings
from .metrics import Metrics, application
from .server import Opened, close_listeners, serve
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)


class RequestLog:
    """An ``Observer`` that writes one debug line per exchange, then passes it on."""

    def __init__(self, inner: Metrics) -> None:
        self.inner = inner

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None:
        log.debug("%s %s -> %d in %.3fs", method, path, status, seconds)
        self.inner.exchange(method, path, status, seconds)

    def upstream_error(self, kind: str) -> None:
        self.inner.upstream_error(kind)

    def hijacked(self, delta: int) -> None:
        self.inner.hijacked(delta)

    def h2_spliced(self) -> None:
        self.inner.h2_spliced()

    def session_gave_up(self) -> None:
        self.inner.session_gave_up()

    def policy_denied(self, listener: str, policy: str, route: str) -> None:
        log.debug("listener %s: policy %s refused %s", listener, policy, route)
        self.inner.policy_denied(listener, policy, route)


RELOADABLE = frozenset({"path", "heal", "security", "recipes"})
RESTART_ONLY = tuple(f.name for f in fields(Config) if f.name not in RELOADABLE)
"""Settings bound at start-up: sockets, paths, the shutdown budget, metrics."""


class App:
    """Owns what lives as long as the process: config, healer, metrics."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        load: Callable[[], Config],
        listeners: list[Opened],
        watchdog: float | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        """``load`` reads the config the way start-up did, so a reload finds the
        same file, or the default file if it has appeared since, and refuses
        what start-up would (it raises ConfigError or SettingsError).
        ``watchdog`` is systemd's keep-alive interval, read at start;
        ``audit`` the audit log ``[audit]`` asks for, opened, not started."""
        self.settings = settings
        self.config = config
        self.load = load
        self.listeners = listeners
        self.watchdog = watchdog
        self.healer: Healer | None = None
        self.metrics: Metrics | None = None
        self.proactive: Proactive | None = None
        self.stale: StaleTracker | None = None
        self.audit = audit
        """The listeners' ``Auditor``, when ``[audit]`` asks for one."""
        self.daemon_view: DaemonView | None = None
        """How the body checks of the listeners' policies see host paths and images."""

    def reload(self) -> None:
        if self.audit is not None:
            self.audit.reopen()
        try:
            config = self.load()
        except (ConfigError, SettingsError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        for key in RESTART_ONLY:
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: %s changed; it takes effect only on restart", key)
        self.config = config
        if self.healer is not None:
            self.healer.reconfigure(config)
        if self.metrics is not None:
            self.metrics.recipes_configured(config.recipes)
        if self.proactive is not None:
            self.proactive.reconfigure()
        if self.stale is not None:
            self.stale.reconfigure()
        log.info("reloaded %s: %d recipes", config.path or "(no file)", len(config.recipes))

    async def run(self) -> int:
        self.daemon_view = DaemonView(self.settings.upstream)
        if self.audit is None:
            return await self._run()
        self.audit.start()
        try:
            return await self._run()
        finally:
            await asyncio.to_thread(self.audit.close)

    async def _run(self) -> int:
        settings = self.settings
        sweep(settings.state_dir)
        engine = Engine(settings.upstream, self.config.heal.engine_timeout)
        metrics = self.metrics = Metrics(
            lambda: self.healer,
            lambda: self.proactive,
            lambda: self.stale,
            lambda: interceptor.build.budget.used,
            lambda: self.audit.dropped if self.audit is not None else 0,
        )
        metrics.recipes_configured(self.config.recipes)
        healer = self.healer = Healer(
            self.config, engine, settings.upstream, settings.state_dir, metrics
        )
        await asyncio.to_thread(healer.tidy)
        stale = StaleTracker(lambda: self.config, engine, settings.state_dir)
        healer.stale = stale
        proactive = Proactive(lambda: self.config, healer, engine, settings.state_dir, stale)
        healer.on_healed = proactive.healed
        stale.on_inputs_changed = proactive.inputs_changed
        interceptor = Interceptor(
            lambda: self.config,
            healer,
            metrics.image_checked,
            proactive.used,
            lambda: {**healer.snapshot(), "proactive": proactive.view(), "stale": stale.view()},
            metrics.build_over_spool_budget,
            stale,
        )
        observer = RequestLog(metrics) if log.isEnabledFor(logging.DEBUG) else metrics
        served = [
            (opened, self._hub(opened[0], interceptor, observer)) for opened in self.listeners
        ]
        runner: web.AppRunner | None = None
        try:
            if settings.metrics is not None:
                runner = web.AppRunner(
                    application(metrics, engine.ping, proactive.health), access_log=None
                )
                await runner.setup()
                await self._listen_metrics(runner, *settings.metrics)
            await stale.start()
            self.stale = stale
            await proactive.start()
            self.proactive = proactive
            return await serve(settings, served, self.reload, self.watchdog)
        finally:
            self.proactive = self.stale = None
            await proactive.stop()
            await stale.stop()
            await healer.cancel()  # before the engine they talk through goes
            await interceptor.aclose()
            if runner is not None:
                await runner.cleanup()
            await engine.close()

    def _hub(self, of: ListenerSettings, interceptor: Interceptor, observer: Observer) -> Hub:
        """One listener's hub: its policy, and the client rules that pick another by peer."""
        return Hub(
            self.settings.upstream,
            interceptor,
            observer,
            sessions=interceptor.sessions,
            name=of.name,
            policy=self._policy(of.policy),
            clients=tuple(
                ClientRule(rule.uids, rule.gids, self._policy(rule.policy)) for rule in of.clients
            ),
            auditor=self.audit,
            resolver=self.daemon_view,
        )

    def _policy(self, name: str) -> Judge | None:
        return None if name == FULL else self.settings.policies[name]

    async def _listen_metrics(self, runner: web.AppRunner, host: str, port: int) -> None:
        """Start-up fails whole: a busy port also gives the Docker socket back."""
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            close_listeners(listener for _, listener in self.listeners)
            raise ListenerError(
                f"cannot listen for metrics on {host}:{port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", host, port)
