"""The composition root: the one place that wires the parts together.

Rules:
- Parts do not construct each other; this module builds the hub, the
  healer, the interceptor and the metrics from the settings and the config.
- Per-request log lines exist only at debug level: the wrapper that writes
  them is installed only then, so the data path pays nothing otherwise. They
  name method, path (never the query, which can carry build args), status
  and time; never headers.
- A reload (SIGHUP) swaps the config in place. Listen and upstream addresses
  are bound at start-up; a reload that changes them is refused with a log
  line, because moving sockets under live connections would drop them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .config import Config, ConfigError, load_config
from .connection import Hub
from .engine import Engine
from .healer import Healer
from .intercept import Interceptor
from .listener import Listener
from .metrics import Metrics, application
from .server import serve
from .settings import Settings

log = logging.getLogger(__name__)


async def daemon_problem(path: str) -> str | None:
    """None when the daemon answers ``/_ping``, else why not."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
    except (OSError, TimeoutError) as exc:
        return f"cannot reach the Docker daemon at {path}: {exc}"
    try:
        writer.write(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
    except (OSError, TimeoutError) as exc:
        return f"the Docker daemon at {path} did not answer /_ping: {exc}"
    finally:
        writer.close()
    if status.split(b" ")[1:2] != [b"200"]:
        return f"the Docker daemon at {path} answered /_ping with {status.strip()!r}"
    return None


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


class App:
    def __init__(
        self, settings: Settings, config: Config, config_path: str | None, listener: Listener
    ) -> None:
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.listener = listener
        self.healer: Healer | None = None
        self.metrics: Metrics | None = None

    def reload(self) -> None:
        # The file read at start-up: the one --config named, or the default one
        # the command line found by itself (then only ``config.path`` knows it).
        path = self.config_path or self.config.path
        if path is None:
            log.info("reload: no config file given; nothing to re-read")
            return
        try:
            config = load_config(Path(path))
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        for key in ("listen", "upstream"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: %s changed; it takes effect only on restart", key)
        self.config = config
        if self.healer is not None:
            self.healer.reconfigure(config)
        if self.metrics is not None:
            self.metrics.recipes_configured(r.match for r in config.recipes)
        log.info("reloaded %s: %d recipes", path, len(config.recipes))

    async def run(self) -> int:
        settings = self.settings
        engine = Engine(settings.upstream)
        metrics = self.metrics = Metrics(lambda: self.healer)
        metrics.recipes_configured(r.match for r in self.config.recipes)
        self.healer = Healer(self.config, engine, settings.upstream, settings.state_dir, metrics)
        interceptor = Interceptor(lambda: self.config, self.healer, metrics.image_checked)
        observer = RequestLog(metrics) if log.isEnabledFor(logging.DEBUG) else metrics
        hub = Hub(settings.upstream, interceptor, observer)
        runner: web.AppRunner | None = None
        if settings.metrics is not None:
            runner = web.AppRunner(
                application(metrics, lambda: daemon_problem(settings.upstream)),
                access_log=None,
            )
            await runner.setup()
            host, port = settings.metrics
            await web.TCPSite(runner, host, port).start()
            log.info("metrics on http://%s:%d/metrics", host, port)
        try:
            return await serve(settings, self.listener, hub, self.reload)
        finally:
            if runner is not None:
                await runner.cleanup()
            await engine.close()
