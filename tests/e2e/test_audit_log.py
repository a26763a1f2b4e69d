"""The audit log in the running proxy: opened at start, rotated by the shipped
logrotate snippet, reopened on SIGHUP (refused reload or not), flushed at exit.

The proxy runs as ``python -m proxy`` does, through ``tests/auditfeed.py``,
which adds one thing: SIGUSR1 puts the records of a feed file through the
running sink on its event loop, as the data path reports an exchange's end.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import REPO, MakeProxy, Proxy, require, wait_for

pytestmark = pytest.mark.daemon

FEEDER = str(REPO / "tests" / "auditfeed.py")
SNIPPET = REPO / "contrib" / "logrotate" / "docker-heal-proxy"
WAIT = 20.0


def record(n: int) -> dict[str, Any]:
    """A stop through a listener without a policy: a line in every audit log."""
    peer = {"uid": 0, "gid": 0, "groups": [], "pid": 1, "exe": "/usr/bin/docker"}
    return {
        "listener": "default",
        "peer": peer,
        "method": "POST",
        "path": f"/v1.45/containers/c{n}/stop",
        "verdict": None,
        "status": 204,
        "seconds": 0.01,
        "hijacked": False,
    }


def paths(path: Path) -> list[str]:
    return [json.loads(line)["path"] for line in path.read_text().splitlines()]


def stop_path(n: int) -> str:
    return f"/v1.45/containers/c{n}/stop"


class Audited:
    """A proxy with ``[audit] path = FOLDER/audit.jsonl`` and a feed to put records through."""

    def __init__(self, folder: Path, make_proxy: MakeProxy) -> None:
        self.log = folder / "audit.jsonl"
        self.feed = folder / "feed.json"
        self.proxy: Proxy = make_proxy(
            f'[audit]\npath = "{self.log}"\n', launcher=(FEEDER, str(self.feed))
        )

    def send(self, *numbers: int) -> None:
        """Record these exchanges in the proxy, and wait until the last one is written."""
        self.feed.write_text(json.dumps([record(n) for n in numbers]))
        self.proxy.proc.send_signal(signal.SIGUSR1)
        wait_for(
            lambda: self.log.exists() and stop_path(numbers[-1]) in self.log.read_text(),
            WAIT,
            f"line {numbers[-1]} in {self.log}",
        )

    def reopened(self, times: int) -> Callable[[], bool]:
        return lambda: self.proxy.log().count("audit log reopened") == times


@pytest.fixture
def audited(tmp_path: Path, make_proxy: MakeProxy) -> Audited:
    return Audited(tmp_path, make_proxy)


def test_the_log_is_made_0640_at_start(audited: Audited) -> None:
    assert stat.S_IMODE(audited.log.stat().st_mode) == 0o640
    audited.send(1)
    line = json.loads(audited.log.read_text())
    assert (line["route"], line["decision"], line["policy"]) == (
        "POST /containers/{id}/stop",
        "allow",
        "full",
    )


def test_the_shipped_logrotate_snippet_rotates_and_the_proxy_reopens(
    audited: Audited, tmp_path: Path
) -> None:
    """Real logrotate, the snippet as shipped but for the log's path and its
    reload (no systemd here): the rename, then SIGHUP."""
    audited.send(1)
    text = SNIPPET.read_text()
    assert "/var/log/docker-heal-proxy/audit.jsonl {" in text
    assert "systemctl reload docker-heal-proxy.service" in text
    text = text.replace("/var/log/docker-heal-proxy/audit.jsonl", str(audited.log))
    text = text.replace(
        "systemctl reload docker-heal-proxy.service", f"kill -HUP {audited.proxy.proc.pid}"
    )
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    result = subprocess.run(
        [require("logrotate"), "--force", f"--state={tmp_path / 'state'}", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rotated = tmp_path / "audit.jsonl.1"
    assert paths(rotated) == [stop_path(1)]
    wait_for(audited.reopened(1), WAIT, "the proxy to reopen its log")
    assert stat.S_IMODE(audited.log.stat().st_mode) == 0o640
    audited.send(2)
    assert paths(audited.log) == [stop_path(2)]
    assert paths(rotated) == [stop_path(1)]


def test_a_refused_reload_still_reopens(audited: Audited, tmp_path: Path) -> None:
    audited.send(1)
    config = Path(
        next(a for a in audited.proxy.args if a.startswith("--config=")).partition("=")[2]
    )
    config.write_text(config.read_text() + "bogus = 1\n")
    audited.log.rename(tmp_path / "audit.jsonl.1")
    audited.proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in audited.proxy.log(), WAIT, "the reload to be refused")
    wait_for(audited.reopened(1), WAIT, "the proxy to reopen its log")
    audited.send(2)
    assert paths(audited.log) == [stop_path(2)]
    assert paths(tmp_path / "audit.jsonl.1") == [stop_path(1)]


def test_lines_queued_at_sigterm_are_written(audited: Audited) -> None:
    numbers = range(3000)
    audited.feed.write_text(json.dumps([record(n) for n in numbers]))
    audited.proxy.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: audited.log.read_text(), WAIT, "the first lines")
    assert audited.proxy.stop() == 0
    assert paths(audited.log) == [stop_path(n) for n in numbers]


def test_a_symlink_at_the_path_stops_start_up(tmp_path: Path, make_proxy: MakeProxy) -> None:
    log = tmp_path / "audit.jsonl"
    log.symlink_to(tmp_path / "elsewhere")
    proxy = make_proxy(f'[audit]\npath = "{log}"\n', wait=False)
    assert proxy.proc.wait(WAIT) == 1
    assert f"docker-heal-proxy: cannot open the audit log {log}: it is a symbolic link\n" in (
        proxy.log()
    )
    assert not (tmp_path / "elsewhere").exists()
    assert not Path(proxy.socket).exists()
