"""A bounded soak: does the proxy hold steady under mixed traffic for minutes on end?

Usage (as root; needs dockerd and the docker CLI)::

    python bench/soak.py [--minutes 10] [--interval 10] [--out docs/benchmarks.md]

Rules:
- One private dockerd and one proxy (with one recipe) are started for the run
  and thrown away afterwards; nothing touches another daemon.
- Every loop is bounded in time and stops by itself: pings (rate-limited, so
  the soak measures leaks, not throughput), create+remove pairs of a present
  managed image, ``logs -f`` streams opened and dropped in turn, and one heal
  a minute (the image removed, then created through the proxy).
- Every ``--interval`` seconds the proxy's RSS, open descriptors and tasks
  (the private ``debug`` count of ``GET /_heal/status``) are sampled. The
  first sample is taken after a warm-up that runs each kind of work once, so
  one-time imports and caches are not counted as growth.
- The soak fails (exit 3) if, at the end, descriptors or tasks are above the
  first sample plus 5, or RSS above the first sample plus 20%. Its table goes
  into ``docs/benchmarks.md`` between the soak markers; ``bench/run.py`` keeps
  that section when it rewrites the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, procs

BEGIN = "<!-- soak: written by bench/soak.py -->"
END = "<!-- /soak -->"
BASE = "127.0.0.1:1/soak/base:1"
APP = "127.0.0.1:1/soak/app"
FD_SLACK = 5
TASK_SLACK = 5
RSS_SLACK = 0.20


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    tasks: int


@dataclass
class Counts:
    pings: int = 0
    creates: int = 0
    streams: int = 0
    heals: int = 0
    errors: list[str] = field(default_factory=list)


def docker(sock: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
    return subprocess.run(["docker", *args], env=env, capture_output=True, check=check, timeout=300)


def build_base(sock: Path, tmp: Path) -> None:
    ctx = tmp / "ctx"
    ctx.mkdir()
    shutil.copy("/bin/busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    )
    docker(sock, "build", "-q", "-t", BASE, str(ctx))


def config(tmp: Path) -> Path:
    script = tmp / "recipe.sh"  # the proxy sets DOCKER_HOST to the daemon for it
    script.write_text(f'#!/bin/sh\nexec docker tag {BASE} "{APP}:$1"\n')
    script.chmod(0o755)
    path = tmp / "soak.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n\n[[images]]\nmatch = "{APP}:{{tag}}"\n'
        f'command = ["{script}", "{{tag}}"]\n'
    )
    return path


def sample(pid: int, sock: Path, t0: float) -> Sample:
    fds = len(os.listdir(f"/proc/{pid}/fd"))  # before our own status connection
    api = loadgen.ApiConn(str(sock))
    try:
        status, body = api.call("GET", "/_heal/status")
    finally:
        api.sock.close()
    tasks = int(json.loads(body)["debug"]["tasks"]) if status == 200 else -1
    return Sample(time.monotonic() - t0, procs.status_kb(pid, "VmRSS"), fds, tasks)


def create_remove(api: loadgen.ApiConn, image: str) -> None:
    body = json.dumps({"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    status, answer = api.call("POST", "/v1.41/containers/create", body.encode())
    if status != 201:
        raise RuntimeError(f"create of {image}: {status} {answer[:300]!r}")
    cid = json.loads(answer)["Id"]
    status, answer = api.call("DELETE", f"/v1.41/containers/{cid}?force=1")
    if status != 204:
        raise RuntimeError(f"remove: {status} {answer[:300]!r}")


def stream_once(sock: Path, cid: str, seconds: float) -> None:
    """``logs -f`` for a while, then the client just goes away."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(
            f"GET /v1.41/containers/{cid}/logs?follow=1&stdout=1&tail=1 HTTP/1.1\r\n"
            "Host: d\r\n\r\n".encode()
        )
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not s.recv(65536):
                raise RuntimeError("a logs -f stream ended early")


def run(a: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    daemon = proxy = None
    counts = Counts()
    samples: list[Sample] = []
    load = procs.background_cpu()
    try:
        daemon, dsock = procs.start_dockerd(tmp)
        build_base(dsock, tmp)
        proxy, psock = procs.start_proxy(tmp, dsock, config(tmp))
        ticker = docker(
            dsock, "run", "-d", "--network=none", BASE, "sh", "-c",
            "while true; do echo tick; sleep 0.2; done",
        ).stdout.decode().strip()  # fmt: skip
        present = f"{APP}:present"
        docker(dsock, "tag", BASE, present)
        stop = threading.Event()
        t0 = time.monotonic()
        deadline = t0 + a.minutes * 60

        def guard(name: str, fn: object) -> threading.Thread:
            def body() -> None:
                try:
                    fn()  # type: ignore[operator]
                except Exception as exc:
                    counts.errors.append(f"{name}: {exc}")
                    stop.set()

            return threading.Thread(target=body, name=name, daemon=True)

        def pings() -> None:
            api = loadgen.ApiConn(str(psock))
            while not stop.is_set():
                status, _ = api.call("GET", "/_ping")
                if status != 200:
                    raise RuntimeError(f"ping answered {status}")
                counts.pings += 1
                time.sleep(0.002)

        def creates() -> None:
            api = loadgen.ApiConn(str(psock))
            while not stop.is_set():
                create_remove(api, present)
                counts.creates += 1
                stop.wait(0.2)

        def streams() -> None:
            while not stop.is_set():
                stream_once(psock, ticker, 5.0)
                counts.streams += 1

        def heals() -> None:
            api = loadgen.ApiConn(str(psock))
            n = 0
            while not stop.is_set():
                image = f"{APP}:heal{n}"
                create_remove(api, image)  # missing: healed, then created
                docker(dsock, "rmi", image)
                counts.heals += 1
                n += 1
                stop.wait(60)

        # Warm-up: each kind of work once, then the first sample.
        api = loadgen.ApiConn(str(psock))
        create_remove(api, present)
        create_remove(api, f"{APP}:warmup")
        docker(dsock, "rmi", f"{APP}:warmup")
        stream_once(psock, ticker, 0.5)
        api.sock.close()
        samples.append(sample(proxy.pid, psock, t0))
        workers = [
            guard("pings", pings),
            guard("creates", creates),
            guard("streams-1", streams),
            guard("streams-2", streams),
            guard("heals", heals),
        ]
        for w in workers:
            w.start()
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(min(a.interval, max(0.0, deadline - time.monotonic())))
            samples.append(sample(proxy.pid, psock, t0))
        stop.set()
        for w in workers:
            w.join(30)
        time.sleep(2)  # dropped streams and closed keep-alives settle
        samples.append(sample(proxy.pid, psock, t0))
        docker(dsock, "rm", "-f", ticker, check=False)
    finally:
        for p in (proxy, daemon):
            if p is not None:
                p.stop()
        procs.unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return report(a, samples, counts, load)


def report(a: argparse.Namespace, samples: list[Sample], counts: Counts, load: float) -> int:
    first, last = samples[0], samples[-1]
    failures = []
    if last.fds > first.fds + FD_SLACK:
        failures.append(f"fds {first.fds} -> {last.fds}")
    if last.tasks > first.tasks + TASK_SLACK:
        failures.append(f"tasks {first.tasks} -> {last.tasks}")
    if last.rss_kib > first.rss_kib * (1 + RSS_SLACK):
        failures.append(f"RSS {first.rss_kib} -> {last.rss_kib} KiB")
    failures += counts.errors
    verdict = "**PASS**" if not failures else "**FAIL**: " + "; ".join(failures)
    rows = [
        ("RSS (MiB)", [s.rss_kib / 1024 for s in samples], f"≤ first + {RSS_SLACK:.0%}"),
        ("open fds", [float(s.fds) for s in samples], f"≤ first + {FD_SLACK}"),
        ("tasks", [float(s.tasks) for s in samples], f"≤ first + {TASK_SLACK}"),
    ]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Soak (`bench/soak.py`)",
        "",
        f"Run: {when}, {a.minutes:g} minutes, a sample every {a.interval:g} s "
        f"({len(samples)} samples); other load at start {load * 100:.0f}% of 200% CPU. {verdict}",
        "",
        "| measure | first | last | max | limit at the end |",
        "|---|---|---|---|---|",
    ]
    for name, values, limit in rows:
        lines.append(
            f"| {name} | {values[0]:.1f} | {values[-1]:.1f} | {max(values):.1f} | {limit} |"
        )
    lines += [
        "",
        f"- Work done: {counts.pings} pings (one keep-alive connection, ~2 ms apart), "
        f"{counts.creates} create+remove pairs of a present managed image, {counts.streams} "
        f"`logs -f` streams (two at a time, each dropped by its client after 5 s), "
        f"{counts.heals} heals (one a minute: the image removed, then created through the proxy).",
        "- The first sample follows a warm-up that ran each kind of work once; the last is "
        "taken 2 s after the work stopped.",
        END,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    out = Path(a.out)
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)].rstrip("\n") + text[text.index(END) + len(END) :]
    out.write_text(text.rstrip("\n") + "\n\n" + section)
    return 0 if not failures else 3


def section(path: Path) -> str:
    """The soak section of an existing report, kept when ``run.py`` rewrites the rest."""
    text = path.read_text() if path.exists() else ""
    if BEGIN not in text or END not in text:
        return ""
    return "\n" + text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--out", default=str(procs.REPO / "docs" / "benchmarks.md"))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
