"""What every measurement shares: the targets, their sockets, and running the rows.

Rules: one ``Bench`` per run; a measurement reaches the daemon and the proxies only
through it (``b.docker``, ``b.api``, ``b.proxy_config``), so the sockets, the CLI's
environment and the processes to stop all live here. The order the rows run in is
``schedule.order``'s, from what each row declares; this module only runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, procs
from bench.report import Bar, Table
from bench.schedule import Measure, order

DOCKER_CLI = "/usr/local/bin/docker"
ALL_TARGETS = ("direct", "proxy", "haproxy", "socat")


@dataclass
class Bench:
    """State shared by the measurement functions of one run."""

    args: argparse.Namespace
    tmp: Path
    running: dict[str, procs.Proc] = field(default_factory=dict)
    sockets: dict[str, Path] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    raw: dict[str, object] = field(default_factory=dict)
    """Machine-readable results, written to bench/results/latest.json."""

    @property
    def targets(self) -> list[str]:
        """Targets to measure that actually came up, direct first."""
        return [t for t in self.args.targets if t in self.sockets]

    def docker_env(self, target: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.sockets[target]}"
        env["DOCKER_CONFIG"] = str(self.tmp / "cli-config")  # no user contexts or auth
        return env

    def docker(
        self, target: str, *args: str, stdout: int | None = subprocess.PIPE, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against one target's socket; a failure says what the CLI said."""
        done = subprocess.run(
            [DOCKER_CLI, *args], env=self.docker_env(target), stdout=stdout, stderr=subprocess.PIPE
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} via {target} exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done

    def api(self, target: str, method: str, path: str, body: object = None) -> tuple[int, float]:
        """One API request on a fresh connection: (status, seconds). For latency rows."""
        payload = b"" if body is None else json.dumps(body).encode()
        req = (
            f"{method} {path} HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        t0 = time.perf_counter()
        status = loadgen.request_once(str(self.sockets[target]), req, timeout=120)
        return status, time.perf_counter() - t0

    def start_target(self, name: str) -> None:
        upstream = self.sockets["direct"]
        starters: dict[str, Callable[[], tuple[procs.Proc, Path]]] = {
            "proxy": lambda: procs.start_proxy(self.tmp, upstream, self.args.config),
            "haproxy": lambda: procs.start_haproxy(self.tmp, upstream),
            "socat": lambda: procs.start_socat(self.tmp, upstream),
        }
        try:
            p, sock = starters[name]()
        except (RuntimeError, OSError) as e:
            self.unavailable[name] = str(e)
            print(f"!! {name} unavailable: {e}", file=sys.stderr)
            return
        self.running[name] = p
        self.sockets[name] = sock

    def restart_proxy(self, config: Path | None) -> None:
        """Rerun the proxy with another config (e.g. a recipe for a heal row)."""
        if "proxy" in self.running:
            self.running.pop("proxy").stop()
            self.sockets.pop("proxy", None)
        self.args.config = config
        self.start_target("proxy")

    def middle_pid(self, target: str) -> int | None:
        p = self.running.get(target)
        return None if target == "direct" or p is None else p.pid

    @contextlib.contextmanager
    def proxy_config(self, config: Path) -> Iterator[None]:
        """Run the proxy with ``config`` inside the block, and with the run's own after it."""
        previous = self.args.config
        self.restart_proxy(config)
        try:
            if "proxy" not in self.sockets:
                raise RuntimeError(
                    f"proxy did not start with {config}: {self.unavailable.get('proxy')}"
                )
            yield
        finally:
            self.restart_proxy(previous)

    def run_true(self, target: str, image: str) -> float:
        """Seconds for ``docker run --rm IMAGE true`` through ``target``."""
        t0 = time.perf_counter()
        out = self.docker(target, "run", "--rm", image, "true", check=False)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(
                f"docker run {image} via {target} failed: {out.stderr.decode()[-2000:]}"
            )
        return took


def run_measures(b: Bench, measures: Sequence[Measure[Bench]], only: list[str] | None) -> bool:
    """Run the selected measurements in ``schedule.order``'s order; False if one raised.

    A measurement that raises is named under "Not measured" and the rest still run:
    one broken row must not cost the figures of the others.
    """
    failed = False
    for m in order(measures):
        if only is not None and m.name not in only:
            continue
        print(f"== {m.name}", flush=True)
        try:
            m.run(b)
        except Exception:
            failed = True
            traceback.print_exc()
            b.unavailable[m.name] = "raised; see the run's stderr"
    return failed
