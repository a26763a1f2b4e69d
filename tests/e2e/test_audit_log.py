"""The audit log in the running proxy: lines for real requests, opened at start,
rotated by the shipped logrotate snippet, reopened on SIGHUP (refused reload
or not), flushed at exit, and turned into an allow list the CLI then works with.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import REPO, MakeProxy, Proxy, UnixHTTPConnection, docker, require, wait_for

pytestmark = pytest.mark.daemon

SNIPPET = REPO / "contrib" / "logrotate" / "docker-heal-proxy"
WAIT = 20.0


def paths(path: Path) -> list[str]:
    return [json.loads(line)["path"] for line in path.read_text().splitlines()]


def stop_path(n: int) -> str:
    """A stop of a container that is not there: a line in every audit log, a 404 from dockerd."""
    return f"/v1.41/containers/dhp-audit-none-{n}/stop"


class Audited:
    """A proxy with ``[audit] path = FOLDER/audit.jsonl``."""

    def __init__(self, folder: Path, make_proxy: MakeProxy) -> None:
        self.log = folder / "audit.jsonl"
        self.proxy: Proxy = make_proxy(f'[audit]\npath = "{self.log}"\n')

    def stop(self, *numbers: int) -> None:
        """Send these stops through the proxy, and wait until the last one's line is written."""
        conn = UnixHTTPConnection(self.proxy.socket)
        for n in numbers:
            conn.request("POST", stop_path(n))
            response = conn.getresponse()
            response.read()
            assert response.status == 404
        conn.close()
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
    audited.stop(1)
    line = json.loads(audited.log.read_text())
    assert (line["route"], line["decision"], line["policy"], line["status"]) == (
        "POST /containers/{id}/stop",
        "allow",
        "full",
        404,
    )
    assert (line["listener"], line["uid"], line["pid"]) == ("default", os.getuid(), os.getpid())


def test_the_shipped_logrotate_snippet_rotates_and_the_proxy_reopens(
    audited: Audited, tmp_path: Path
) -> None:
    """Real logrotate, the snippet as shipped but for the log's path and its
    reload (no systemd here): the rename, then SIGHUP."""
    audited.stop(1)
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
    audited.stop(2)
    assert paths(audited.log) == [stop_path(2)]
    assert paths(rotated) == [stop_path(1)]


def test_a_refused_reload_still_reopens(audited: Audited, tmp_path: Path) -> None:
    audited.stop(1)
    config = Path(
        next(a for a in audited.proxy.args if a.startswith("--config=")).partition("=")[2]
    )
    config.write_text(config.read_text() + "bogus = 1\n")
    audited.log.rename(tmp_path / "audit.jsonl.1")
    audited.proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in audited.proxy.log(), WAIT, "the reload to be refused")
    wait_for(audited.reopened(1), WAIT, "the proxy to reopen its log")
    audited.stop(2)
    assert paths(audited.log) == [stop_path(2)]
    assert paths(tmp_path / "audit.jsonl.1") == [stop_path(1)]


def test_lines_of_the_last_requests_are_written_at_sigterm(audited: Audited) -> None:
    numbers = range(200)
    conn = UnixHTTPConnection(audited.proxy.socket)
    for n in numbers:
        conn.request("POST", stop_path(n))
        conn.getresponse().read()
    conn.close()
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


@pytest.fixture
def folder() -> Iterator[Path]:
    """Where the listener's socket goes: a socket path must be short."""
    path = Path(tempfile.mkdtemp(prefix="a-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("docker_cli")
def test_a_discovery_log_becomes_an_allow_list_the_same_work_passes(
    make_proxy: MakeProxy, busybox: str, folder: Path, tmp_path: Path
) -> None:
    """The discovery profile's purpose, end to end: what the CLI did under it is
    what ``check --audit-log`` allows, and enforcing that list lets the same work
    through and refuses the rest."""
    log = tmp_path / "audit.jsonl"
    sock = folder / "ci.sock"
    listener = f'[[listeners]]\nname = "ci"\nlisten = "unix://{sock}"\npolicy = "{{}}"\n'
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    work = [["ps", "-a"], ["run", "--rm", "--network=none", busybox, "true"], ["images"]]
    harvesting = make_proxy(f'[audit]\npath = "{log}"\n' + listener.format("discovery"))
    for args in work:
        docker(args, env=env)
    assert harvesting.stop() == 0
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", f"--audit-log={log}", "--listener=ci"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    allow = tomllib.loads(result.stdout)["allow"]
    assert {"GET /containers/json", "POST /containers/create", "GET /images/json"} <= set(allow)
    assert all(" other" not in entry for entry in allow)
    make_proxy(f"[policies.ci]\nallow = {json.dumps(allow)}\n" + listener.format("ci"))
    for args in work:
        docker(args, env=env)
    refusal = docker(["network", "ls"], env=env, check=False)
    assert refusal.returncode != 0
    assert 'policy "ci" does not allow GET /networks' in refusal.stderr.decode()
