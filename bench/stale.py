"""Stale mode's cost and speed: ``python -m bench.stale`` prints a benchmarks.md section.

Three figures, each against its bar in issue 22:

- Create of a present, fresh managed image, ``rebuild_when = "stale"`` against
  ``"missing"``: two proxies in front of one private dockerd, one keep-alive
  connection each, create+remove pairs in alternating blocks (ABBA), p50 of
  the create. Bar: the same p50 within noise.
- The in-process cost of the stale check on that path: the tracker's
  decision for the created tag, timed in this process with the facts a
  running proxy holds (tag map, records, hashes; one managed base). Bar: 2 µs.
- Under ``proactive = true``: from an edit of an input to the tag naming a
  rebuilt image, with ``inputs_debounce = "1s"``; the recipe is a
  ``docker build`` of a busybox context, timed alone alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import timeit
from pathlib import Path

from bench import loadgen, procs
from proxy.healing.stale.decision import made
from proxy.healing.stale.inputwatch import hash_whole
from proxy.healing.stale.tracker import StaleTracker
from proxy.recipes.config import parse_config

IMAGE = "127.0.0.1:1/bench/stale:1"
BASE = "127.0.0.1:1/bench/stale-base:1"
APP = "127.0.0.1:1/bench/app:{g}"


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def docker(sock: Path, *args: str) -> str:
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def context(folder: Path, message: str) -> Path:
    (folder / "src").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", folder / "busybox")
    (folder / "src" / "msg").write_text(message + "\n")
    (folder / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "COPY src/msg /msg\n"
    )
    return folder


def config(tmp: Path, ctx: Path, mode: str, *extra: str) -> Path:
    lines = "\n".join(extra)
    path = tmp / f"{mode}.toml"
    stale = 'rebuild_when = "stale"\ninputs = ["src"]' if mode != "missing" else ""
    path.write_text(
        f"""state_dir = "{tmp / mode}-state"
[heal]
inputs_debounce = "1s"
[[images]]
match = "{IMAGE}"
{stale}
command = ["docker", "build", "-q", "-t", "{IMAGE}", "."]
workdir = "{ctx}"
{lines}
"""
    )
    return path


def create_p50(socks: dict[str, Path], pairs: int, block: int) -> dict[str, float]:
    body = json.dumps({"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    conns = {name: loadgen.ApiConn(str(sock)) for name, sock in socks.items()}
    times: dict[str, list[int]] = {name: [] for name in socks}
    order = list(socks)
    for name in order:  # untimed warm-up
        for _ in range(20):
            _pair(conns[name], body.encode())
    for round_ in range(max(1, pairs // block)):
        for name in order if round_ % 2 == 0 else reversed(order):
            for _ in range(block):
                times[name].append(_pair(conns[name], body.encode()))
    return {name: statistics.median(values) / 1e3 for name, values in times.items()}


def _pair(conn: loadgen.ApiConn, body: bytes) -> int:
    start = time.perf_counter_ns()
    status, answer = conn.call("POST", "/v1.41/containers/create", body)
    took = time.perf_counter_ns() - start
    if status != 201:
        raise RuntimeError(f"create answered {status}: {answer[:200]!r}")
    conn.call("DELETE", f"/v1.41/containers/{json.loads(answer)['Id']}")
    return took


def decision_us(tmp: Path) -> float:
    """µs per decision for a fresh tag with one managed base, as a create asks it."""
    for name in ("app", "base"):
        (tmp / name / "src").mkdir(parents=True, exist_ok=True)
        (tmp / name / "src" / "f").write_text(name)
    recipes = [
        {"match": BASE, "command": ["x"], "workdir": "base", "inputs": ["src"]},
        {
            "match": "127.0.0.1:1/bench/app:{g}",
            "command": ["x"],
            "workdir": "app",
            "inputs": ["src"],
        },
    ]
    settings = parse_config(
        {"images": [{**r, "rebuild_when": "stale"} for r in recipes]}, base_dir=tmp
    )
    tracker = StaleTracker(lambda: settings, None, tmp / "state")  # type: ignore[arg-type]
    app = "127.0.0.1:1/bench/app:g1"
    listing = [{"Id": "sha256:a", "RepoTags": [app]}, {"Id": "sha256:b", "RepoTags": [BASE]}]
    tracker.tags.listed(listing, tracker.tags.listing())
    for tag in (app, BASE):
        tracker.watch.targets[tag] = tracker.targets((tag,))[tag]
        tracker.watch.sources[tag] = hash_whole(tracker.watch.targets[tag])
    tracker.records.put("sha256:b", made(tracker.watch.sources[BASE], {}, 0.0))
    tracker.records.put("sha256:a", made(tracker.watch.sources[app], {BASE: "sha256:b"}, 0.0))

    def ask() -> object:
        return tracker.decide(tracker.tag(app))

    n = 200_000
    return min(timeit.repeat(ask, number=n, repeat=5)) / n * 1e6


def proactive_seconds(
    tmp: Path, dockerd: Path, ctx: Path, rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds from an edit to a rebuilt image, and a ``docker build`` alone, per round."""
    settings = config(tmp, ctx, "proactive", "proactive = true")
    proxy, _ = procs.start_proxy(folder(tmp / "p"), dockerd, settings)
    edits: list[float] = []
    builds: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                docker(dockerd, "image", "inspect", IMAGE)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        time.sleep(3)  # the first build's record is written and its hashes are current
        for round_ in range(rounds):
            before = docker(dockerd, "image", "inspect", "-f", "{{.Id}}", IMAGE)
            start = time.monotonic()
            (ctx / "src" / "msg").write_text(f"edit {round_}\n")
            while docker(dockerd, "image", "inspect", "-f", "{{.Id}}", IMAGE) == before:
                time.sleep(0.05)
            edits.append(time.monotonic() - start)
            (ctx / "src" / "msg").write_text(f"alone {round_}\n")
            start = time.monotonic()
            docker(dockerd, "build", "-q", "-t", "127.0.0.1:1/bench/alone:1", str(ctx))
            builds.append(time.monotonic() - start)
            time.sleep(3)  # the proxy rebuilds after this edit too; let it end
    finally:
        proxy.stop()
    return edits, builds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--block", type=int, default=15)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bst-", dir="/tmp"))
    dockerd, sock = procs.start_dockerd(folder(tmp / "d"))
    started: list[procs.Proc] = [dockerd]
    try:
        ctx = context(tmp / "ctx", "v1")
        docker(sock, "build", "-q", "-t", IMAGE, str(ctx))
        socks: dict[str, Path] = {}
        for mode in ("missing", "stale"):
            proc, psock = procs.start_proxy(folder(tmp / mode), sock, config(tmp, ctx, mode))
            started.append(proc)
            socks[mode] = psock
        p50 = create_p50(socks, a.pairs, a.block)
        for proc in started[1:]:
            proc.stop()
        del started[1:]
        per_decision = decision_us(tmp / "inproc")
        edits, builds = proactive_seconds(tmp, sock, ctx, a.rounds)
    finally:
        for proc in reversed(started):
            proc.stop()
        procs.unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    print("## Stale mode: the create path, and an edit to a fresh image under proactive\n")
    print(
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m bench.stale "
        f"--pairs {a.pairs} --rounds {a.rounds}`; load average at the end {load:.1f} "
        f"on {os.cpu_count()} CPUs.\n"
    )
    print("| what | missing | stale | bar |")
    print("|---|---|---|---|")
    print(
        f"| create p50, present fresh image (µs) | {p50['missing']:.0f} | {p50['stale']:.0f} "
        f"| same within noise ({p50['stale'] - p50['missing']:+.0f} µs) |"
    )
    print(f"| stale decision per create, in process (µs) | - | {per_decision:.2f} | ≤ 2 |")
    print(
        f"| edit of an input to a fresh image, proactive, debounce 1s (s, median of "
        f"{len(edits)}) | - | {statistics.median(edits):.2f} | the same `docker build` alone: "
        f"{statistics.median(builds):.2f} s |"
    )
    print()
    print(f"- edit to fresh, runs: {', '.join(f'{s:.2f}' for s in edits)} s;")
    print(f"  `docker build` alone, runs: {', '.join(f'{s:.2f}' for s in builds)} s.")


if __name__ == "__main__":
    main()
