"""App.reload without a daemon: which file it re-reads, and what a bad one leaves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import pytest
from support import REFUSED, SELF_LOOP

from proxy.recipes.config import load_config
from proxy.service import cli
from proxy.service.app import App
from proxy.service.settings import Settings

ONE = '[[images]]\nmatch = "127.0.0.1:1/a:1"\npull = true\n'
TWO = ONE + '[[images]]\nmatch = "127.0.0.1:1/b:1"\npull = true\n'


def app(config_file: Path, config_path: str | None) -> App:
    """An App loading its config as ``serve --config CONFIG_PATH`` does."""
    unused = cast(Any, None)  # reload touches neither settings nor the listener
    argv = ["serve"] if config_path is None else ["serve", f"--config={config_path}"]
    return App(
        cast(Settings, unused),
        load_config(config_file),
        cli.loader(cli.parser().parse_args(argv)),
        [],
    )


def test_reload_rereads_the_file_found_without_config_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` without ``--config`` still reads the default file; SIGHUP must re-read it."""
    path = tmp_path / "config.toml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", path)
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


def test_reload_finds_a_default_file_created_after_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Install, start, then configure: the README's order must work with a reload."""
    path = tmp_path / "config.toml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", path)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    running = app(empty, None)
    path.write_text(ONE)
    running.reload()
    assert [r.match for r in running.config.recipes] == ["127.0.0.1:1/a:1"]


def test_reload_warns_about_settings_bound_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ONE)
    running = app(path, str(path))
    path.write_text('shutdown_timeout = "3s"\n' + ONE)
    with caplog.at_level(logging.WARNING):
        running.reload()
    assert "shutdown_timeout changed; it takes effect only on restart" in caplog.text


@pytest.mark.parametrize(("text", "reason"), [*REFUSED, SELF_LOOP])
def test_reload_refuses_what_a_restart_would(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    """A reload that took it would log "on restart", and that restart would fail."""
    path = tmp_path / "config.toml"
    path.write_text(ONE)
    running = app(path, str(path))
    before = running.config
    path.write_text(text + ONE)
    with caplog.at_level(logging.ERROR):
        running.reload()
    assert running.config is before
    assert reason in caplog.text


class Reopens:
    def __init__(self) -> None:
        self.count = 0

    def reopen(self) -> None:
        self.count += 1


def test_a_reload_reopens_the_audit_log_taken_or_refused(tmp_path: Path) -> None:
    """logrotate sends SIGHUP after its rename whatever the config says: a refused
    reload must not leave the lines going to the rotated file."""
    path = tmp_path / "config.toml"
    path.write_text(ONE)
    running = app(path, str(path))
    log = Reopens()
    running.audit = cast(Any, log)
    running.reload()
    assert log.count == 1
    path.write_text(ONE + "bogus = 1\n")
    running.reload()
    assert log.count == 2
