"""The composition root: the one place that wires the parts together.

Rules:
- Parts do not construct each other; this module builds the hub, the
  interceptor and the observers from the settings and the config, and
  rebuilds what a reload changes.
"""

from __future__ import annotations

import logging

from .config import Config
from .connection import Hub
from .listener import Listener
from .server import serve
from .settings import Settings

log = logging.getLogger(__name__)


class App:
    def __init__(
        self, settings: Settings, config: Config, config_path: str | None, listener: Listener
    ) -> None:
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.listener = listener

    async def run(self) -> int:
        hub = Hub(self.settings.upstream)
        return await serve(self.settings, self.listener, hub)
