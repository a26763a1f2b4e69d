"""App.reload without a daemon: which file it re-reads, and what a bad one leaves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import pytest

from proxy.app import App
from proxy.config import load_config
from proxy.listener import Listener
from proxy.settings import Settings

ONE = '[[images]]\nmatch = "127.0.0.1:1/a:1"\npull = true\n'
TWO = ONE + '[[images]]\nmatch = "127.0.0.1:1/b:1"\npull = true\n'


def app(config_file: Path, config_path: str | None) -> App:
    unused = cast(Any, None)  # reload touches neither settings nor the listener
    return App(
        cast(Settings, unused), load_config(config_file), config_path, cast(Listener, unused)
    )


def test_reload_rereads_the_file_found_without_config_flag(tmp_path: Path) -> None:
    """``serve`` without ``--config`` still reads the default file; SIGHUP must re-read it."""
    path = tmp_path / "config.toml"
    path.write_text(ONE)
    running = app(path, None)
    path.write_text(TWO)
    running.reload()
    assert [r.match for r in running.config.recipes] == ["127.0.0.1:1/a:1", "127.0.0.1:1/b:1"]


def test_invalid_reload_keeps_the_running_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ONE)
    running = app(path, str(path))
    before = running.config
    path.write_text(ONE + "bogus = 1\n")
    with caplog.at_level(logging.ERROR):
        running.reload()
    assert running.config is before
    assert "reload refused, keeping the running config" in caplog.text
    assert "bogus" in caplog.text
