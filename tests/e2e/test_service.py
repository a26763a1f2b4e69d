"""Running the proxy as a service: metrics, Prometheus, health, status, logs, reload.

Everything is observed from outside, the way an operator would: a real
Prometheus server scrapes the metrics listener and is asked through its HTTP
API, ``promtool`` lints the exposition and the rules, the ``status`` command
runs as a subprocess, and logs are read from the proxy's stderr.

Heals use ``command`` recipes: a script that runs ``docker build`` against the
upstream (the runner sets ``DOCKER_HOST``) on a context ``FROM`` the session's
busybox image. Recipes that must stay in flight for a while wait for a gate
file the test creates; that is the test's hand on the recipe, not a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import (
    BUSYBOX,
    REPO,
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    docker,
    docker_run,
    free_port,
    heal_status,
    proxy_cli,
    raw_request,
    remove,
    require,
    start_proxy,
    wait_for,
)

# -- helpers -------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def answers(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except OSError:
        return False
    return True


def context(folder: Path, label: str) -> Path:
    """A build context FROM the session busybox: builds in a second, pulls nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(f"FROM {BUSYBOX}\nLABEL dhp.test={label}\n")
    return folder


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return path


def gated_build(path: Path, gate: Path, marker: Path, word: str) -> Path:
    """Waits (60s at most) for ``gate``, notes ``word`` in ``marker``, builds $1 from $2."""
    return script(
        path,
        'echo "waiting for the gate"\n'
        f'i=0; while [ ! -e "{gate}" ]; do i=$((i+1)); [ $i -lt 1200 ]; sleep 0.05; done\n'
        f'echo {word} >> "{marker}"\n'
        'echo "building $1"\n'
        'docker build -q -t "$1" "$2"\n',
    )


def build(path: Path) -> Path:
    return script(path, 'echo "building $1"\ndocker build -q -t "$1" "$2"\n')


def recipe(image: str, command: list[str], env: dict[str, str] | None = None) -> str:
    text = f"[[images]]\nmatch = {json.dumps(image)}\ncommand = {json.dumps(command)}\n"
    if env:
        pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
        text += f"env = {{ {pairs} }}\n"
    return text


def running_phase(proxy: Proxy, image: str) -> str | None:
    for heal in heal_status(proxy)["in_progress"]:
        if heal["image"] == image:
            return str(heal["phase"])
    return None


def log_has(proxy: Proxy, text: str) -> bool:
    return text in proxy.log()


def exported_names(exposition: str) -> set[str]:
    """Every sample name the exposition can hold, from its ``# TYPE`` lines."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    for line in exposition.splitlines():
        match = re.fullmatch(r"# TYPE (\w+) (\w+)", line)
        if match:
            name, kind = match.groups()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes.get(kind, ("",)))
    return names


# -- a proxy watched by a real Prometheus ----------------------------------------------------


OK_IMAGE = "127.0.0.1:1/dhp/svc-ok:1"
FAIL_IMAGE = "127.0.0.1:1/dhp/svc-fail:1"
GATED_IMAGE = "127.0.0.1:1/dhp/svc-gated:1"
PROACTIVE_IMAGE = "127.0.0.1:1/dhp/svc-proactive:1"
"""Present throughout: it makes the proxy follow image events, for their metrics."""


@dataclass
class Watched:
    proxy: Proxy
    metrics: str
    """Base URL of the metrics listener."""
    prometheus: str
    """Base URL of the Prometheus server scraping it."""
    gate: Path
    workdir: Path

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        data = dict(json.loads(body))
        assert status == 200 and data["status"] == "success", (expr, body)
        return data

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def watched(dockerd: Dockerd, busybox: str) -> Iterator[Watched]:
    prometheus = require("prometheus")
    work = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))
    ctx = context(work / "ctx", "svc")
    gate = work / "gate"
    config = 'state_dir = "state"\n'
    config += recipe(OK_IMAGE, [str(build(work / "ok.sh")), OK_IMAGE, str(ctx)])
    fail = script(work / "fail.sh", 'echo "compiling"\necho "error: no space left" >&2\nexit 3\n')
    config += recipe(FAIL_IMAGE, [str(fail)])
    gated = gated_build(work / "gated.sh", gate, work / "gated.marker", "ran")
    config += recipe(GATED_IMAGE, [str(gated), GATED_IMAGE, str(ctx)])
    docker(["tag", busybox, PROACTIVE_IMAGE], env=dockerd.env)
    config += recipe(PROACTIVE_IMAGE, ["docker", "tag", busybox, PROACTIVE_IMAGE])
    config += "proactive = true\n"
    metrics_port = free_port()
    proxy = start_proxy(
        work / "proxy",
        dockerd.socket,
        config=config,
        args=[f"--metrics-listen=127.0.0.1:{metrics_port}"],
    )
    metrics = f"http://127.0.0.1:{metrics_port}"
    wait_for(lambda: answers(metrics + "/metrics"), 20, "the metrics listener")
    port = free_port()
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(REPO / 'contrib' / 'alerts.yml'))}]\n"
        "scrape_configs:\n  - job_name: docker-heal-proxy\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    with (work / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: (
                server.poll() is not None
                or (answers(base + "/-/ready") and http_get(base + "/-/ready")[0] == 200)
            ),
            60,
            "Prometheus to be ready",
        )
        assert server.poll() is None, (work / "prometheus.log").read_text()[-3000:]
        w = Watched(proxy, metrics, base, gate, work)
        wait_for(lambda: w.value('up{job="docker-heal-proxy"}') == 1, 30, "the first scrape")
        yield w
    finally:
        gate.touch()  # never leave a recipe waiting
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_a_heal_reaches_prometheus_and_a_failure_fires_the_alert(watched: Watched) -> None:
    env = watched.proxy.env
    remove(env, OK_IMAGE)
    assert docker_run(OK_IMAGE, env, "true").returncode == 0
    failed = docker_run(FAIL_IMAGE, env, "true")
    assert failed.returncode != 0
    assert b"exited with status 3" in failed.stderr

    ok = f'docker_heal_proxy_heals_total{{image="{OK_IMAGE}",result="success",trigger="create"}}'
    bad = f'docker_heal_proxy_heals_total{{image="{FAIL_IMAGE}",result="failure",trigger="create"}}'
    wait_for(lambda: watched.value(ok) == 1, 30, "the success sample in Prometheus")
    wait_for(lambda: watched.value(bad) == 1, 30, "the failure sample in Prometheus")
    failures = f'sum(docker_heal_proxy_heals_total{{image="{OK_IMAGE}",result="failure"}})'
    assert watched.value(failures) == 0
    count = f'sum(docker_heal_proxy_heal_duration_seconds_count{{image="{OK_IMAGE}"}})'
    assert watched.value(count) == 1

    def firing() -> list[dict[str, Any]]:
        _, body = http_get(watched.prometheus + "/api/v1/alerts")
        alerts = json.loads(body)["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "DockerHealProxyHealFailures" and a["state"] == "firing"
        ]

    # The failure series existed at 0 before the heal, so increase() sees the first failure.
    wait_for(firing, 30, "the heal-failure alert to fire")
    assert {a["labels"]["image"] for a in firing()} == {FAIL_IMAGE}


def test_live_exposition_passes_promtool(watched: Watched) -> None:
    raw_request(
        watched.proxy.socket,
        b"GET /v1.41/containers/nope/json HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
    )
    status, body = http_get(watched.metrics + "/metrics")
    assert status == 200
    text = body.decode()
    assert (
        'docker_heal_proxy_requests_total{code="404",method="GET",route="/containers/{id}/json"}'
        in text
    )
    assert "nope" not in text
    result = subprocess.run(
        [require("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result


def test_dashboard_expressions_name_exported_metrics_and_run(watched: Watched) -> None:
    dashboard = json.loads((REPO / "contrib" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("heals", "duration", "requests", "error"):
        assert topic in titles
    exported = exported_names(http_get(watched.metrics + "/metrics")[1].decode())
    assert exprs
    for expr in exprs:
        named = set(re.findall(r"docker_heal_proxy_\w+", expr))
        assert named, expr
        assert named <= exported, (expr, named - exported)
        # Grafana's interval variable, as Grafana would expand it.
        watched.query(expr.replace("$__rate_interval", "1m"))


def test_alert_rules_check_load_and_are_documented(watched: Watched) -> None:
    rules = REPO / "contrib" / "alerts.yml"
    result = subprocess.run(
        [require("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = {r["name"]: r for r in loaded_rules(watched)}
    names = {
        "DockerHealProxyHealFailures",
        "DockerHealProxyUpstreamErrors",
        "DockerHealProxyDown",
        "DockerHealProxyEventsStreamDown",
        "DockerHealProxyCachePushErrors",
        "DockerHealProxyAuditLinesDropped",
    }
    assert set(loaded) == names
    wait_for(
        lambda: all(r.get("health") == "ok" for r in loaded_rules(watched)),
        30,
        "every rule to be evaluated without error",
    )
    readme = (REPO / "README.md").read_text()
    assert "contrib/alerts.yml" in readme
    # Each README bullet states its rule: the expression, and how long it must hold.
    bullets = re.findall(
        r"^- `(DockerHealProxy\w+)`:\s+`([^`]+)`(?:\s+for (\d+) minutes)?", readme, re.M
    )
    documented = {name: (expr, int(minutes or 0) * 60) for name, expr, minutes in bullets}
    assert set(documented) == names, documented
    in_file = {r["alert"]: r["expr"] for r in yaml_rules(rules)}
    for name, (expr, duration) in documented.items():
        assert expr == in_file[name], name
        # Prometheus prints a loaded expression in its own spacing.
        assert re.sub(r"\s+", "", expr) == re.sub(r"\s+", "", loaded[name]["query"]), name
        assert loaded[name]["duration"] == duration, name


def yaml_rules(path: Path) -> list[dict[str, str]]:
    """The ``alert`` and ``expr`` of each rule in an alerts file, read as plain text.

    The file is simple enough (one-line ``- alert:`` and ``expr:``) that a
    line reader does, and it needs no YAML library in the test environment.
    """
    found: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        key, _, value = line.strip().removeprefix("- ").partition(": ")
        if key == "alert":
            found.append({"alert": value})
        elif key == "expr":
            found[-1]["expr"] = value
    return found


def loaded_rules(watched: Watched) -> list[dict[str, Any]]:
    _, body = http_get(watched.prometheus + "/api/v1/rules")
    return [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]


def test_readme_scrape_config_is_valid(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- prometheus-config -->\s*```yaml\n(.*?)```", readme, re.S)
    assert found, "README has no <!-- prometheus-config --> yaml block"
    text = found.group(1).replace(
        "/etc/prometheus/docker-heal-proxy-alerts.yml", str(REPO / "contrib" / "alerts.yml")
    )
    (tmp_path / "prometheus.yml").write_text(text)
    result = subprocess.run(
        [require("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "127.0.0.1:9478" in text


def test_status_command_and_watch_show_a_running_heal(watched: Watched) -> None:
    proxy = watched.proxy
    env = proxy.env
    remove(env, GATED_IMAGE)
    client = subprocess.Popen(
        ["docker", "run", "--rm", "--network=none", GATED_IMAGE, "true"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    watcher: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: running_phase(proxy, GATED_IMAGE) == "running", 30, "the gated heal")
        wait_for(
            lambda: "waiting for the gate" in heal_status(proxy)["in_progress"][0]["last_lines"],
            30,
            "the recipe's first output line",
        )
        _, body = http_get(watched.metrics + "/metrics")
        assert b"docker_heal_proxy_heals_in_progress 1.0" in body
        assert b"docker_heal_proxy_heal_waiters 1.0" in body
        # The state holds recipe output: it is on the proxy's socket only.
        assert http_get(watched.metrics + "/_heal/status")[0] == 404

        shown = proxy_cli("status", f"--listen={proxy.url}", env={**os.environ, "DOCKER_HOST": ""})
        assert shown.returncode == 0, shown.stderr
        assert f"images[2]  command  {GATED_IMAGE}" in shown.stdout
        assert re.search(
            rf"  {re.escape(GATED_IMAGE)}  running  \d+\.\ds  by images\[2\]", shown.stdout
        )
        assert "    | waiting for the gate" in shown.stdout
        # Found through DOCKER_HOST, as a host pointed at the proxy has it.
        via_env = proxy_cli("status", env=env)
        assert via_env.returncode == 0, via_env.stderr
        assert f"  {GATED_IMAGE}  running  " in via_env.stdout

        watcher = subprocess.Popen(
            [sys.executable, "-m", "proxy", "status", "--watch"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert watcher.stdout is not None
        out = watcher.stdout

        def pump() -> None:
            for line in out:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        seen: list[str] = []

        def frames() -> bool:
            with contextlib.suppress(queue.Empty):
                while True:
                    seen.append(lines.get_nowait())
            return sum(line.startswith("docker-heal-proxy status at") for line in seen) >= 2

        wait_for(frames, 15, "two frames of status --watch")
        assert any(GATED_IMAGE in line and "running" in line for line in seen), seen
        assert "Recipes" not in "".join(seen)  # the watch shows running heals only
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0, watcher.stderr.read() if watcher.stderr else ""

        watched.gate.touch()
        assert client.wait(60) == 0, client.stderr.read() if client.stderr else ""
        after = proxy_cli("status", f"--listen={proxy.url}")
        assert "Heals in progress: none" in after.stdout
        assert re.search(
            rf"  {re.escape(GATED_IMAGE)}  success \(recipe\)  \S+  \d+\.\ds  healed by",
            after.stdout,
        )
    finally:
        watched.gate.touch()
        for proc in (client, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_status_of_a_socket_that_is_not_the_proxy(dockerd: Dockerd) -> None:
    shown = proxy_cli("status", f"--listen=unix://{dockerd.socket}")
    assert shown.returncode == 1
    assert "Docker daemon's socket rather than the proxy's" in shown.stderr


def test_healthz_follows_the_daemon(watched: Watched, make_proxy: MakeProxy) -> None:
    status, body = http_get(watched.metrics + "/healthz")
    # The watched proxy has a proactive recipe, so its health names the event stream.
    following = {"up": True, "detail": "following image events"}
    assert (status, json.loads(body)) == (200, {"status": "ok", "events": following})
    port = free_port()
    missing = "/tmp/dhp-no-daemon-here.sock"
    orphan = make_proxy(
        wait=False, args=[f"--upstream=unix://{missing}", f"--metrics-listen=127.0.0.1:{port}"]
    )
    url = f"http://127.0.0.1:{port}/healthz"
    wait_for(lambda: orphan.proc.poll() is not None or answers(url), 20, "the metrics listener")
    status, body = http_get(url)
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "unhealthy" and missing in answer["message"]


def test_metrics_listen_from_flag_and_off_when_empty(make_proxy: MakeProxy) -> None:
    """``--metrics-listen=""`` turns the listener off even when the config names one."""
    port = free_port()
    off = make_proxy(config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n', args=["--metrics-listen="])
    assert not answers(f"http://127.0.0.1:{port}/metrics")
    assert "metrics on" not in off.log()
    port2 = free_port()
    on = make_proxy(args=[f"--metrics-listen=127.0.0.1:{port2}"])
    wait_for(lambda: answers(f"http://127.0.0.1:{port2}/metrics"), 20, "the metrics listener")
    assert f"metrics on http://127.0.0.1:{port2}/metrics" in on.log()
    # Never on the Docker socket's URL space: there, /metrics is the daemon's 404.
    answer = raw_request(
        on.socket, b"GET /metrics HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 404") and b"docker_heal_proxy_" not in answer


# -- logs ------------------------------------------------------------------------------------


SECRET_AUTH = "c2VjcmV0LWF1dGgtdG9rZW4tZGhwLTQ0MQ"
SECRET_CONFIG = "c2VjcmV0LWNvbmZpZy10b2tlbi1kaHAtOTk"
SECRET_ENV = "hunter2-env-value-dhp-7731"


def test_logs_name_heals_and_never_secrets(make_proxy: MakeProxy, tmp_path: Path) -> None:
    ok, bad = "127.0.0.1:1/dhp/log-ok:1", "127.0.0.1:1/dhp/log-bad:1"
    ctx = context(tmp_path / "ctx", "logs")
    config = 'state_dir = "state"\n'
    config += recipe(ok, [str(build(tmp_path / "ok.sh")), ok, str(ctx)], {"API_TOKEN": SECRET_ENV})
    failing = script(tmp_path / "bad.sh", 'test -n "$API_TOKEN"\nexit 7\n')
    config += recipe(bad, [str(failing)], {"API_TOKEN": SECRET_ENV})
    proxy = make_proxy(config=config, args=["--log-level=debug"])
    env = proxy.env
    remove(env, ok)
    # The registry headers, on a forwarded request and on an intercepted one.
    close = "Connection: close\r\n\r\n"
    for head in (
        "POST /v1.41/images/create?fromImage=127.0.0.1%3A1%2Fdhp%2Fnothing&tag=1 HTTP/1.1\r\n"
        f"Host: d\r\nX-Registry-Auth: {SECRET_AUTH}\r\nContent-Length: 0\r\n{close}",
        f"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Registry-Config: {SECRET_CONFIG}\r\n{close}",
    ):
        assert raw_request(proxy.socket, head.encode(), timeout=30).startswith(b"HTTP/1.1 ")
    body = json.dumps({"Image": ok, "Cmd": ["true"]}).encode()
    create = (
        f"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nX-Registry-Auth: {SECRET_AUTH}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    created = raw_request(proxy.socket, create, timeout=60)
    assert created.startswith(b"HTTP/1.1 201 "), created
    container = json.loads(created.split(b"\r\n\r\n", 1)[1])["Id"]
    docker(["rm", "-f", container], env=env)
    assert docker_run(bad, env, "true").returncode != 0
    wait_for(lambda: log_has(proxy, f"heal of {bad} failed"), 30, "the failure line")

    log = proxy.log()
    assert re.search(
        rf"heal of {re.escape(ok)} started: images\[0\] \({re.escape(ok)}\) \(command\)", log
    )
    assert re.search(rf"heal of {re.escape(ok)} succeeded in \d+\.\ds", log)
    assert re.search(rf"heal of {re.escape(bad)} failed after \d+\.\ds: exited with status 7", log)
    for secret in (SECRET_AUTH, SECRET_CONFIG, SECRET_ENV):
        assert secret not in log


def requests_logged(level: str, make_proxy: MakeProxy) -> str:
    """What a proxy at ``level`` logs for a few requests, after its start-up lines."""
    proxy = make_proxy(args=[f"--log-level={level}"])
    before = len(proxy.log())
    close = b"Host: d\r\nConnection: close\r\n\r\n"
    for _ in range(3):
        answer = raw_request(proxy.socket, b"GET /v1.41/info?secret=q1 HTTP/1.1\r\n" + close)
        assert answer.startswith(b"HTTP/1.1 200")
    answer = raw_request(proxy.socket, b"GET /v1.41/containers/nope/json HTTP/1.1\r\n" + close)
    assert answer.startswith(b"HTTP/1.1 404")
    proxy.stop()
    return proxy.log()[before:]


def test_per_request_lines_only_at_debug(make_proxy: MakeProxy) -> None:
    info = requests_logged("info", make_proxy)
    assert "/info" not in info and "nope" not in info
    lines = info.splitlines()
    assert lines and all("proxy.service.server" in line for line in lines), info
    debug = requests_logged("debug", make_proxy)
    assert len(re.findall(r"GET /v1\.41/info -> 200 in \d+\.\d{3}s", debug)) == 3, debug
    assert "GET /v1.41/containers/nope/json -> 404 in " in debug
    assert "secret=q1" not in debug  # query strings can carry build args: never logged


def test_json_logs_and_journal_text(make_proxy: MakeProxy) -> None:
    as_json = make_proxy(args=["--log-format=json"])
    as_json.stop()
    entries = [json.loads(line) for line in as_json.log().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"].startswith("listening on ") for e in entries)

    journal = make_proxy(env={**os.environ, "JOURNAL_STREAM": "8:12345"})
    plain = make_proxy()
    journal.stop()
    plain.stop()
    journal_lines = journal.log().splitlines()
    started = "INFO proxy.service.server: listening on "
    assert any(line.startswith(started) for line in journal_lines)
    assert all(not re.match(r"\d{4}-\d\d-\d\d", line) for line in journal_lines), journal_lines
    assert all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in plain.log().splitlines()
    )


# -- reload ----------------------------------------------------------------------------------


class EventStream:
    """``GET /events`` through the proxy, read by a thread into a queue."""

    def __init__(self, path: str) -> None:
        self.conn = UnixHTTPConnection(path, timeout=120)
        self.conn.request("GET", "/v1.41/events")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended = threading.Event()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while line := self.response.readline():
                if line.strip():
                    self.events.put(json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()

    def saw(self, text: str) -> bool:
        with contextlib.suppress(queue.Empty):
            while True:
                self.seen.append(self.events.get_nowait())
        return any(text in json.dumps(event) for event in self.seen)

    def close(self) -> None:
        # Wake the reader first: closing a buffered response another thread is
        # reading from waits for that read (up to the socket timeout).
        if self.conn.sock is not None:
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(10)
        self.conn.close()


def test_reload_valid_and_invalid(make_proxy: MakeProxy, tmp_path: Path) -> None:
    """SIGHUP: a valid config adds a recipe that heals at once, a running heal
    finishes under the recipe it started with, an invalid config is refused with
    its reason and the previous recipes keep working; an events stream through
    the proxy stays open across both."""
    a, b = "127.0.0.1:1/dhp/reload-a:1", "127.0.0.1:1/dhp/reload-b:1"
    ctx = context(tmp_path / "ctx", "reload")
    gate, marker = tmp_path / "gate", tmp_path / "a.marker"
    old = gated_build(tmp_path / "a-old.sh", gate, marker, "old")
    new = gated_build(tmp_path / "a-new.sh", gate, marker, "new")
    v1 = 'state_dir = "state"\n' + recipe(a, [str(old), a, str(ctx)])
    proxy = make_proxy(config=v1)
    config_file = Path(proxy.socket).parent / "config.toml"
    env = proxy.env
    remove(env, a)
    remove(env, b)
    events = EventStream(proxy.socket)
    try:
        client = subprocess.Popen(
            ["docker", "run", "--rm", "--network=none", a, "true"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: running_phase(proxy, a) == "running", 30, "the heal of a to start")
            config_file.write_text(
                'state_dir = "state"\n'
                + recipe(a, [str(new), a, str(ctx)])
                + recipe(b, [str(build(tmp_path / "b.sh")), b, str(ctx)])
            )
            proxy.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: log_has(proxy, f"reloaded {config_file}: 2 recipes"), 20, "the reload")
            gate.touch()
            assert client.wait(60) == 0, client.stderr.read() if client.stderr else b""
        finally:
            gate.touch()
            if client.poll() is None:
                client.kill()
                client.wait()
        assert marker.read_text().split() == ["old"]  # the heal in flight kept its recipe
        assert docker_run(b, env, "true").returncode == 0  # the recipe the reload added heals
        wait_for(lambda: events.saw(b), 30, f"an event about {b} on the open stream")

        config_file.write_text(config_file.read_text() + "\nmax_paralel = 3\n")
        events.saw(b)  # drain what came so far
        refused_at = len(events.seen)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: log_has(proxy, "reload refused, keeping the running config"), 20, "refusal"
        )
        refusal = next(line for line in proxy.log().splitlines() if "reload refused" in line)
        assert "max_paralel" in refusal
        remove(env, a)
        # The recipes of the last good config still heal.
        assert docker_run(a, env, "true").returncode == 0
        assert marker.read_text().split() == ["old", "new"]
        wait_for(lambda: events.saw(a) and a in json.dumps(events.seen[refused_at:]), 30, "events")
        assert not events.ended.is_set(), "the events stream was dropped"
        assert proxy.proc.poll() is None
    finally:
        events.close()
