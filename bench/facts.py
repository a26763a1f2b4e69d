"""The report's header: what ran, on what, at which commit.

Rules: every fact is asked of the thing itself (the daemon over its socket, each
binary for its version), at the start of the run; a comparison target that did
not come up is named as missing, never asked.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench import loadgen, procs
from bench.harness import DOCKER_CLI, Bench


def first_output(argv: list[str]) -> str:
    """What ``argv`` prints (stdout, else stderr); "" when it cannot be run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip()


def first_line(argv: list[str]) -> str:
    text = first_output(argv)
    return text.splitlines()[0] if text else "?"


def cli_version() -> str:
    return first_line([DOCKER_CLI, "--version"]).replace("Docker version ", "").split(",")[0]


def machine_facts(b: Bench) -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    driver = b.docker("direct", "info", "-f", "{{.Driver}}", check=False)
    rev = first_line(["git", "-C", str(procs.REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(procs.REPO), "status", "--porcelain", "--", "proxy"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "dockerd": daemon_version(b.sockets["direct"]),
        "storage driver": driver.stdout.decode().strip() or "?",
        "docker CLI": cli_version(),
        "haproxy": version_of(b, "haproxy", lambda: first_line(["haproxy", "-v"]).split(" - ")[0]),
        "socat": version_of(b, "socat", socat_version),
        "python": platform.python_version(),
        "priority of the run": f"nice {os.getpriority(os.PRIO_PROCESS, 0)}, "
        + Path("/proc/self/autogroup").read_text().strip().split(" ", 1)[-1]
        + " (scheduler autogroup)",
        "proxy commit": rev
        + (" (+ uncommitted changes in proxy/)" if dirty not in ("", "?") else ""),
    }


def daemon_version(sock: Path) -> str:
    """The upstream daemon's ``GET /version``, as the header names it; "?" if it won't say.

    The API version beside the server's: the proxy passes the API through, so a run
    against another dockerd is compared knowing which API its clients spoke.
    """
    try:
        conn = loadgen.ApiConn(str(sock))
        try:
            status, body = conn.call("GET", "/version")
        finally:
            conn.close()
    except (OSError, loadgen.ProtocolError):
        return "?"
    try:
        answer = json.loads(body) if status == 200 else None
    except ValueError:
        answer = None
    return version_line(answer if isinstance(answer, dict) else {})


def version_line(answer: dict[str, object]) -> str:
    """``{"Version": "20.10.24", "ApiVersion": "1.41"}`` -> ``20.10.24 (API 1.41)``."""
    server, api = answer.get("Version"), answer.get("ApiVersion")
    if not isinstance(server, str) or not server:
        return "?"
    return f"{server} (API {api})" if isinstance(api, str) and api else server


def version_of(b: Bench, target: str, version: Callable[[], str]) -> str:
    """A comparison target's version, or why it is missing from the report."""
    if target in b.unavailable:
        return "not measured (see Not measured)"
    return version() if target in b.targets else "not run (--targets)"


def socat_version() -> str:
    out = first_output(["socat", "-V"])
    for line in out.splitlines():
        if "socat version" in line:
            return line.split("socat version", 1)[1].split(" on ")[0].strip()
    return "?"
