"""Benchmark docker-heal-proxy against the bare daemon, HAProxy and socat, in one run.

Usage (as root; needs dockerd and the docker CLI; HAProxy and socat are comparison
targets, and one that is not installed is skipped and named under "Not measured")::

    python bench/run.py [--seconds 3] [--out docs/benchmarks.md] [--config proxy.toml]

Why one script that owns everything: ratios are only meaningful when the baseline
and the candidate run on the same machine, in the same minute, against the same
daemon. So each run starts a private dockerd, puts every proxy in front of that one
socket, measures direct first and then each peer, and reports ratios against the
direct figures it just measured. Numbers from another run, or another machine, are
never mixed in.

Adding a row: write ``def measure_something(b: Bench) -> None`` that appends a
``Table`` (and optionally ``Bar``s) to ``b``, and add it to ``MEASUREMENTS``. ``Bench``
gives you the sockets (``b.sockets``), the CLI (``b.docker(target, ...)``), one-shot
API calls (``b.api(target, "POST", "/containers/create", {...})``) and
``b.restart_proxy(config)`` to rerun the proxy with a recipe config.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, procs, soak

DOCKER_CLI = "/usr/local/bin/docker"
BIG_IMAGE = "127.0.0.1:1/bench/big:1"
"""A registry-qualified name on a closed port: nothing can ever pull or push it."""
ALL_TARGETS = ("direct", "proxy", "haproxy", "socat")

# Bars the proxy must meet (from the project brief).
BAR_RPS_RATIO_16 = 0.33
"""0.95 times 0.35x, the ratio before the data path became tables (issue 8, at 2b8adda)."""
BAR_ADDED_P50_US = 250.0
BAR_SAVE_RATIO = 1.25
BAR_CREATE_ADDED_P50_US = 1000.0
BAR_HEAL_RATIO = 1.10
"""(heal-then-run - the run alone) / the recipe alone: aim 1.0, 10% for noise."""
BAR_CACHE_RATIO = 1.2
"""A heal from the registry cache vs a plain ``docker pull`` of the same image."""
BAR_BUILD_RATIO = 1.15
BUILD_TAG = "127.0.0.1:1/bench/built:1"

APP_REPO = "127.0.0.1:1/bench/app"
"""Every tag of this repo is recipe-managed in ``heal_config``; the tag is the
recipe's cache-busting build arg, so a new tag is a build nothing can reuse."""
APP_PRESENT = f"{APP_REPO}:present"
BUSYBOX = Path("/bin/busybox")


@dataclass
class Table:
    """One markdown table in the report, with notes printed under it."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("|" + "|".join("---" for _ in self.header) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


@dataclass
class Bar:
    """A pass/fail requirement; ``ok is None`` means it could not be measured.

    An ``aim`` is shown beside the requirements but is not one: missing it is
    "not yet", and does not fail the run.
    """

    name: str
    measured: str
    limit: str
    ok: bool | None
    aim: bool = False

    @property
    def verdict(self) -> str:
        if self.aim and self.ok is False:
            return "not yet"
        return {True: "PASS", False: "FAIL", None: "not measured"}[self.ok]


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


# ------------------------------------------------------------------ measurements


def fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k"


@dataclass
class PingRow:
    """One load run plus where the machine's CPU went during its window."""

    target: str
    load: loadgen.LoadResult
    cpu: procs.CpuWindow

    @property
    def other_s(self) -> float:
        """CPU used by none of dockerd, the middle or the client: other tenants, kernel."""
        c = self.cpu
        return max(0.0, c.busy_s - c.dockerd_s - c.middle_s - self.load.client_cpu_s)


def median_row(rows: list[PingRow]) -> PingRow:
    """The round with the median req/s.

    Not the best: with one connection a neighbour that takes a core can *raise*
    throughput (client and daemon then hand off on one core, without cross-core
    wake-ups), so noise moves figures both ways and the median is the honest pick.
    """
    return sorted(rows, key=lambda r: r.load.rps)[(len(rows) - 1) // 2]


def ping_row(b: Bench, target: str, conns: int) -> PingRow:
    """Drive GET /_ping at one target with ``conns`` connections for one window."""
    a = b.args
    cpu = procs.CpuWindow(b.running["direct"].pid, b.middle_pid(target))
    r = loadgen.run_load(str(b.sockets[target]), conns, a.seconds, a.warmup, a.procs, on_window=cpu)
    return PingRow(target, r, cpu)


def measure_ping(b: Bench) -> None:
    """GET /_ping req/s over keep-alive connections, and latency with one connection.

    CPU of dockerd, of the proxy in the middle, of the load generator and of
    everything else is sampled over exactly the measured window, so the table shows
    how the two cores were shared, whether the daemon (not the client) was the limit,
    and whether a neighbour disturbed the row. Every cell is run ``--rounds`` times,
    rounds interleaved so slow drifts hit every target alike, and the median kept.
    """
    a = b.args
    ncpu = os.cpu_count() or 1
    plan = [(t, c) for c in a.conns for t in b.targets]
    plan.append(("direct", a.saturation_conns))  # does more concurrency raise direct?
    runs: dict[tuple[str, int], list[PingRow]] = {k: [] for k in plan}
    for rnd in range(a.rounds):
        for target, conns in plan:
            row = ping_row(b, target, conns)
            runs[(target, conns)].append(row)
            r = row.load
            print(
                f"   round {rnd + 1} {target:8s} {conns:3d} conns: {fmt_rate(r.rps)} req/s "
                f"p50 {r.p50_us:.0f} µs, dockerd {pct(row.cpu.dockerd_s, a.seconds)} "
                f"middle {pct(row.cpu.middle_s, a.seconds)} "
                f"client {pct(r.client_cpu_s, a.seconds)} other {pct(row.other_s, a.seconds)}",
                flush=True,
            )
    table = Table(
        "GET /_ping throughput and latency",
        [
            "target", "conns", "req/s", "vs direct", "p50 µs", "p99 µs",
            "dockerd CPU", "middle CPU", "middle µs CPU/req", "client CPU", "other CPU",
            "idle",
        ],
    )  # fmt: skip
    results: dict[tuple[str, int], loadgen.LoadResult] = {}
    chosen = {k: median_row(v) for k, v in runs.items()}
    for target, conns in plan:
        row = chosen[(target, conns)]
        r, cpu = row.load, row.cpu
        results[(target, conns)] = r
        base = results.get(("direct", conns))
        ratio = f"{r.rps / base.rps:.2f}x" if base and base.rps else "-"
        table.rows.append(
            [
                target,
                str(conns),
                fmt_rate(r.rps),
                ratio,
                f"{r.p50_us:.0f}",
                f"{r.p99_us:.0f}",
                pct(cpu.dockerd_s, a.seconds),
                pct(cpu.middle_s, a.seconds) if cpu.middle else "-",
                f"{cpu.middle_s / max(1, r.count) * 1e6:.0f}" if cpu.middle else "-",
                pct(r.client_cpu_s, a.seconds),
                pct(row.other_s, a.seconds),
                f"{cpu.idle_frac * 100 * ncpu:.0f}%",
            ]
        )
        b.raw[f"ping/{target}/{conns}"] = {
            **asdict(r),
            "cpu": asdict(cpu),
            "rounds_rps": [x.load.rps for x in runs[(target, conns)]],
        }
        if r.errors:
            table.notes.append(f"{target} with {conns} conns: {r.errors} errors")

    d16 = results.get(("direct", max(a.conns)))
    dsat = chosen.get(("direct", a.saturation_conns))
    table.notes += [
        f"Median of {a.rounds} interleaved rounds per row (by req/s; its latency and CPU "
        f"figures come with it); each round measures {a.seconds:g} s "
        f"after {a.warmup:g} s warm-up. 1-connection latency is per request; with N "
        "connections the client keeps one request in flight on each, spread over at "
        f"most {a.procs} client processes (so N-connection latency includes queueing "
        "behind the process's other connections).",
        f"CPU columns are % of one core over the measured window (the machine has {ncpu} "
        f"cores = {100 * ncpu}%); 'middle' is the proxy's process tree (its CPU per "
        "request is the figure least disturbed by neighbours), 'other' is CPU "
        "used by anything else (neighbours, kernel threads), 'idle' is what nobody used. "
        "Client, dockerd and the middle all share the same cores.",
    ]
    if d16 and dsat:
        idle = dsat.cpu.idle_frac * 100 * ncpu
        gain = dsat.load.rps / d16.rps - 1
        table.notes.append(
            f"Saturation check: direct with {dsat.load.conns} connections did "
            f"{fmt_rate(dsat.load.rps)} req/s ({gain:+.0%} vs {d16.conns}) with {idle:.0f}% "
            f"of {100 * ncpu}% CPU idle: the cores are full, shared between dockerd and the "
            "client, so more client concurrency only buys batching, not more daemon CPU. "
            "Direct rows are the machine's ceiling for this client, not an idle daemon's."
        )
    b.tables.append(table)

    hi = max(a.conns)
    p, d = results.get(("proxy", hi)), results.get(("direct", hi))
    b.bars.append(
        Bar(
            f"proxy req/s with {hi} connections ≥ {BAR_RPS_RATIO_16}x direct",
            f"{p.rps / d.rps:.2f}x" if p and d else "-",
            f"≥ {BAR_RPS_RATIO_16}x",
            (p.rps / d.rps >= BAR_RPS_RATIO_16) if p and d else None,
        )
    )
    for conns in a.conns:
        p, h = results.get(("proxy", conns)), results.get(("haproxy", conns))
        b.bars.append(
            Bar(
                f"aim: proxy req/s with {conns} connection{'s' if conns > 1 else ''} ≥ HAProxy's",
                f"{p.rps / h.rps:.2f}x" if p and h else "-",
                "≥ 1.00x",
                (p.rps >= h.rps) if p and h else None,
                aim=True,
            )
        )
    p1, d1 = results.get(("proxy", 1)), results.get(("direct", 1))
    added = p1.p50_us - d1.p50_us if p1 and d1 else None
    b.bars.append(
        Bar(
            "added p50 latency with 1 connection",
            f"{added:.0f} µs" if added is not None else "-",
            f"≤ {BAR_ADDED_P50_US:.0f} µs",
            (added <= BAR_ADDED_P50_US) if added is not None else None,
        )
    )


def ensure_big_image(b: Bench) -> None:
    """Build ``FROM scratch`` + one incompressible file, directly against the daemon.

    Random bytes so no layer of the stack can win by compressing; built once per run
    because the daemon's data root is private and thrown away.
    """
    if b.raw.get("big_image_built"):
        return
    ctx = b.tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /big.bin\n")
    chunk = 8 << 20
    remaining = b.args.save_mb << 20
    with (ctx / "big.bin").open("wb") as f:
        while remaining > 0:
            n = min(chunk, remaining)
            f.write(os.urandom(n))
            remaining -= n
    t0 = time.perf_counter()
    env = b.docker_env("direct")
    env["DOCKER_BUILDKIT"] = "0"  # the classic builder needs no buildx plugin
    subprocess.run(
        [DOCKER_CLI, "build", "-q", "-t", BIG_IMAGE, str(ctx)],
        env=env,
        check=True,
        capture_output=True,
    )
    shutil.rmtree(ctx)
    b.raw["big_image_built"] = True
    b.raw["big_image_build_s"] = time.perf_counter() - t0


def save_once(b: Bench, target: str, dest: Path | None) -> float:
    """Time one ``docker save`` through ``target``; to /dev/null unless ``dest``."""
    t0 = time.perf_counter()
    if dest is None:
        b.docker(target, "save", BIG_IMAGE, stdout=subprocess.DEVNULL)
    else:
        with dest.open("wb") as f:
            b.docker(target, "save", BIG_IMAGE, stdout=f.fileno())
    return time.perf_counter() - t0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def measure_save(b: Bench) -> None:
    """Time ``docker save`` of a big image direct vs through each proxy.

    Repetitions are interleaved (direct, proxy, haproxy, ... then again) so page
    cache warmth and background noise hit every target alike; the median is kept.
    The proxy's RSS is sampled while its saves stream, because buffering a body
    instead of streaming it shows up there first.
    """
    a = b.args
    print(f"== building {a.save_mb} MiB image {BIG_IMAGE}", flush=True)
    ensure_big_image(b)
    print(f"   built in {b.raw['big_image_build_s']:.1f}s", flush=True)
    times: dict[str, list[float]] = {t: [] for t in b.targets}
    rss_peak = 0
    save_once(b, "direct", None)  # warm the page cache before anything is timed
    for _ in range(a.save_reps):
        for target in b.targets:
            pid = b.middle_pid(target) if target == "proxy" else None
            if pid:
                with procs.RssSampler(pid) as s:
                    times[target].append(save_once(b, target, None))
                rss_peak = max(rss_peak, s.peak_kb)
            else:
                times[target].append(save_once(b, target, None))
    chosen = {t: statistics.median(v) for t, v in times.items()}
    d = chosen["direct"]
    mb = a.save_mb
    table = Table(
        f"docker save of a {mb} MiB image",
        ["target", "median s", "runs (s)", "MiB/s", "vs direct"],
    )
    for t in b.targets:
        table.rows.append(
            [
                t,
                f"{chosen[t]:.2f}",
                ", ".join(f"{x:.2f}" for x in times[t]),
                f"{mb / chosen[t]:.0f}",
                f"{chosen[t] / d:.2f}x",
            ]
        )
    table.notes.append(
        f"`docker save {BIG_IMAGE} > /dev/null` with the {cli_version()} CLI; "
        f"{a.save_reps} interleaved runs per target after one untimed warm-up save; medians "
        "are compared."
    )
    # Byte-for-byte: the proxy must not alter the stream.
    digests: dict[str, str] = {}
    for t in [t for t in ("direct", "proxy") if t in b.sockets]:
        out = b.tmp / f"save-{t}.tar"
        save_once(b, t, out)
        digests[t] = sha256_file(out)
        out.unlink()
    if "proxy" in digests:
        same = digests["direct"] == digests["proxy"]
        if not same:  # is save itself deterministic? distinguish that from corruption
            out = b.tmp / "save-direct2.tar"
            save_once(b, "direct", out)
            again = sha256_file(out)
            out.unlink()
            why = "direct is reproducible" if again == digests["direct"] else "direct varies"
            table.notes.append(f"sha256 direct ≠ proxy ({why}): MISMATCH")
        else:
            table.notes.append(
                f"sha256 of direct and proxy output identical ({digests['direct'][:16]}…)."
            )
    if rss_peak:
        table.notes.append(
            f"proxy VmRSS peak sampled every 20 ms during its saves: {rss_peak / 1024:.1f} MiB."
        )
    b.raw["save"] = {
        "times": times,
        "median": chosen,
        "sha256": digests,
        "proxy_rss_peak_kb": rss_peak,
    }
    b.tables.append(table)
    p = chosen.get("proxy")
    b.bars.append(
        Bar(
            f"docker save {mb} MiB ≤ {BAR_SAVE_RATIO}x direct time",
            f"{p / d:.2f}x" if p else "-",
            f"≤ {BAR_SAVE_RATIO}x",
            (p / d <= BAR_SAVE_RATIO) if p else None,
        )
    )


def measure_proxy_memory(b: Bench) -> None:
    """Peak RSS of the proxy over the whole run (VmHWM), read last on purpose."""
    pid = b.middle_pid("proxy")
    if not pid:
        return
    hwm = procs.status_kb(pid, "VmHWM")
    rss = procs.status_kb(pid, "VmRSS")
    save = b.raw.get("save", {})
    during = save.get("proxy_rss_peak_kb", 0) if isinstance(save, dict) else 0
    t = Table("Proxy memory", ["measure", "MiB"])
    t.rows += [
        ["VmHWM (peak RSS over the whole run)", f"{hwm / 1024:.1f}"],
        ["VmRSS peak sampled during docker save", f"{during / 1024:.1f}" if during else "-"],
        ["VmRSS at the end", f"{rss / 1024:.1f}"],
    ]
    b.raw["proxy_memory_kb"] = {"hwm": hwm, "rss_end": rss, "rss_during_save": during}
    b.tables.append(t)


def _frame_label(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``; the event loop's own frame named for what it is."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if func == "Runner.run" and path.endswith("asyncio/runners.py"):
        return "uvloop's C loop (epoll, recv, callback dispatch)"
    return f"{func} ({path})"


def measure_proxy_profile(b: Bench) -> None:
    """Where the proxy's time goes under the 16-connection ping load (py-spy, optional).

    Sampled from outside with ``--nonblocking`` so the proxy is never paused; C
    frames (uvloop's loop, the socket syscalls) are not unwound, so time spent in
    them lands on the nearest Python frame: ``transport.write`` calls show up as the
    proxy function that called them, ``recv`` and ``epoll_wait`` as the loop itself.
    """
    a = b.args
    pid = b.middle_pid("proxy")
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not a.profile or not pid or not spy:
        if a.profile and pid:
            b.tables.append(
                Table("Proxy profile", ["-"], notes=["py-spy not on PATH (pip install py-spy)"])
            )
        return
    conns = max(a.conns)
    raw = b.tmp / "py-spy.txt"
    seconds = max(2.0, a.seconds)
    spy_proc = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(int(seconds + 1)), "-r", "200",
         "-f", "raw", "-o", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    r = loadgen.run_load(str(b.sockets["proxy"]), conns, seconds, 0.3, a.procs)
    spy_proc.wait(timeout=60)
    self_n: dict[str, int] = {}
    total = 0
    if raw.exists():
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            total += int(n)
            leaf = _frame_label(stack.split(";")[-1])
            self_n[leaf] = self_n.get(leaf, 0) + int(n)
    t = Table(
        f"Proxy profile under {conns}-connection /_ping load (py-spy, self time)",
        ["frame", "share of samples"],
    )
    for frame, n in sorted(self_n.items(), key=lambda kv: -kv[1])[: a.profile_top]:
        t.rows.append([f"`{frame}`", f"{n / max(1, total):.0%}"])
    t.notes.append(
        f"{total} on-CPU samples (py-spy drops idle ones) at 200 Hz while the proxy "
        f"served {fmt_rate(r.rps)} req/s. C frames are not unwound: `transport.write` (the "
        "send syscall) is charged to the Python function calling it, and the event "
        "loop's recv/epoll to the loop frame."
    )
    parts: dict[str, int] = {}
    for frame, n in self_n.items():
        part = next((name for key, name in PROFILE_PARTS if key in frame), "other")
        parts[part] = parts.get(part, 0) + n
    t.notes.append(
        "By part (where the microseconds go): "
        + ", ".join(
            f"{name} {n / max(1, total):.0%}"
            for name, n in sorted(parts.items(), key=lambda kv: -kv[1])
        )
        + "."
    )
    b.raw["proxy_profile"] = {"samples": total, "self": self_n, "rps": r.rps}
    b.tables.append(t)


def measure_cpu_split(b: Bench) -> None:
    """Where the middle's CPU per request goes, by binary, for the proxy and HAProxy.

    ``perf record`` with the software clock (no hardware counters needed, so it
    works in a VM) samples the middle's threads in kernel and user mode alike;
    each sample is charged to the binary it ran in. The proxy's Python code all
    runs inside CPython's interpreter, so "CPython" is the price of the data
    path being Python, and "kernel" is the socket syscalls, wakeups and
    context switches that any proxy pays. Shares times the CPU per request
    measured in the same window give microseconds.
    """
    a = b.args
    perf = shutil.which("perf")
    if not a.profile or perf is None:
        if a.profile:
            b.tables.append(
                Table("Where the microseconds go", ["-"], notes=["perf not on PATH (linux-perf)"])
            )
        return
    targets = [t for t in ("proxy", "haproxy") if b.middle_pid(t)]
    columns = [f"{t} {c} conn{'s' if c > 1 else ''}" for c in a.conns for t in targets]
    shares: dict[str, dict[str, float]] = {}
    per_request: dict[str, float] = {}
    kernel_top: dict[str, list[tuple[str, float]]] = {}
    for conns in a.conns:
        for target in targets:
            column = f"{target} {conns} conn{'s' if conns > 1 else ''}"
            pid = b.middle_pid(target)
            assert pid is not None
            data = b.tmp / f"perf-{target}-{conns}.data"
            record = subprocess.Popen(
                [perf, "record", "-q", "-e", "cpu-clock", "-F", "1999", "-p", str(pid),
                 "-o", str(data), "--", "sleep", str(a.warmup + a.seconds + 0.3)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            cpu = procs.CpuWindow(b.running["direct"].pid, pid)
            r = loadgen.run_load(
                str(b.sockets[target]), conns, a.seconds, a.warmup, a.procs, on_window=cpu
            )
            record.wait(timeout=60)
            per_request[column] = cpu.middle_s / max(1, r.count) * 1e6
            shares[column] = _perf_shares(perf, data, "dso", CPU_PARTS)
            kernel_top[column] = _perf_top(perf, data, "[kernel.kallsyms]")
    t = Table(
        "Where the microseconds go: the middle's CPU per GET /_ping, by binary",
        ["part", *columns],
    )
    parts = [*dict.fromkeys(name for _, name in CPU_PARTS), "other"]
    for part in parts:
        if any(shares[c].get(part) for c in columns):
            t.rows.append(
                [part]
                + [
                    f"{per_request[c] * shares[c].get(part, 0):.1f} µs "
                    f"({shares[c].get(part, 0):.0%})"
                    for c in columns
                ]
            )
    t.rows.append(["**total**", *[f"**{per_request[c]:.1f} µs**" for c in columns]])
    t.notes.append(
        "`perf record -e cpu-clock` (the software clock, 1999 Hz) on the middle's process "
        f"while it served the ping load for {a.warmup + a.seconds:g} s; shares by the "
        "binary each sample ran in, times the CPU per request of the measured window. "
        "One run per cell, not the median of the ping table, and perf's own sampling "
        "interrupts add to every total: compare the columns with each other, and take "
        "the ping table's CPU per request as the figure."
    )
    for c in columns:
        top = ", ".join(f"`{sym}` {share:.0%}" for sym, share in kernel_top[c])
        t.notes.append(f"Kernel's top symbols, {c}: {top}.")
    b.raw["cpu_split"] = {"per_request_us": per_request, "shares": shares, "kernel": kernel_top}
    b.tables.append(t)


CPU_PARTS = (
    ("[kernel", "kernel: socket syscalls, wakeups, context switches"),
    ("libpython", "CPython: the proxy's Python code"),
    ("python3", "CPython: the proxy's Python code"),
    ("loop.cpython", "uvloop and libuv: the event loop in C"),
    ("haproxy", "HAProxy's own code"),
    ("libc", "libc: malloc and syscall entry"),
)
"""perf's binaries grouped into parts (first match wins; the rest is "other")."""

_PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+(.+?)\s*$")


def _perf_report(perf: str, data: Path, sort: str, *extra: str) -> list[tuple[float, str]]:
    out = subprocess.run(
        [perf, "report", "-i", str(data), "--stdio", "-q", "--sort", sort, *extra],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [(float(m[1]) / 100, m[2]) for line in out.splitlines() if (m := _PERF_LINE.match(line))]


def _perf_shares(
    perf: str, data: Path, sort: str, parts: tuple[tuple[str, str], ...]
) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for share, name in _perf_report(perf, data, sort):
        part = next((label for key, label in parts if key in name), "other")
        grouped[part] = grouped.get(part, 0.0) + share
    return grouped


def _perf_top(perf: str, data: Path, dso: str, n: int = 3) -> list[tuple[str, float]]:
    """The heaviest symbols of one binary, as shares of all samples."""
    rows = _perf_report(perf, data, "sym", "--dsos", dso)
    return [(name.removeprefix("[k] ").strip(), share) for share, name in rows[:n]]


PROFILE_PARTS = (
    ("uvloop", "event loop (epoll, recv, dispatch)"),
    ("connection.py", "data path: states and send syscalls (connection)"),
    ("http1.py", "framing (http1)"),
    ("metrics.py", "metrics"),
    ("prometheus_client", "metrics"),
    ("routes.py", "metrics"),
)
"""Profile frames grouped by the part of the proxy they belong to (first match wins)."""


# ------------------------------------------- container create and heal timing


def app_context(b: Bench) -> Path:
    """The build context of ``APP_REPO``: ``FROM scratch`` + busybox + a slow ``RUN``.

    The ``RUN`` writes a ``--heal-mb`` file so the build's own time is large
    against the CLI's start-up, and it comes after ``ARG BUST``: the legacy builder
    keys a ``RUN``'s cache on the build args, so a new ``BUST`` always reruns it
    while ``COPY`` and ``ARG`` are reused, on both sides of the heal comparison.
    """
    ctx = b.tmp / "app-ctx"
    if not ctx.is_dir():
        ctx.mkdir()
        shutil.copy(BUSYBOX, ctx / "busybox")  # keeps the exec bit
        run = (
            "/bin/busybox --install -s /bin && "
            f"dd if=/dev/zero of=/blob bs=1M count={b.args.heal_mb} 2>/dev/null && "
            "echo $BUST > /bust"
        )
        (ctx / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            "ARG BUST=0\n"
            f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', run])}\n"
        )
    return ctx


def legacy_build(b: Bench, tag: str) -> tuple[float, str]:
    """``docker build`` of ``app_context`` as ``APP_REPO:tag``, directly: (seconds, output).

    ``DOCKER_BUILDKIT=0`` because the proxy's ``build`` recipe posts to ``/build``
    without BuildKit, i.e. the same legacy builder; the tag is the ``BUST`` arg just
    as the recipe passes it.
    """
    env = b.docker_env("direct")
    env["DOCKER_BUILDKIT"] = "0"
    argv = [DOCKER_CLI, "build", "--build-arg", f"BUST={tag}", "-t", f"{APP_REPO}:{tag}"]
    t0 = time.perf_counter()
    out = subprocess.run(
        [*argv, str(app_context(b))], env=env, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return took, out.stdout


def ensure_app_image(b: Bench) -> None:
    """Build ``APP_PRESENT`` once, directly; it also keeps the COPY/ARG steps cached."""
    if not b.raw.get("app_present_build_s"):
        b.raw["app_present_build_s"] = legacy_build(b, APP_PRESENT.rsplit(":", 1)[1])[0]


def heal_config(b: Bench) -> Path:
    """A proxy config whose one ``build`` recipe manages every tag of ``APP_REPO``.

    ``state_dir`` lives in the run's tmp dir: the heal logs land there (we read
    them to check the heal's build did the same work as the direct one) and the
    machine's /var/lib is never touched.
    """
    cfg = b.tmp / "heal.toml"
    ctx = app_context(b)
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n\n"
        "[[images]]\n"
        f"match = {json.dumps(APP_REPO + ':{tag}')}\n"
        f'build = {{ context = {json.dumps(str(ctx))}, args = {{ BUST = "{{tag}}" }} }}\n'
    )
    return cfg


@contextlib.contextmanager
def proxy_config(b: Bench, config: Path) -> Iterator[None]:
    """Run the proxy with ``config`` inside the block, and with the run's own after it."""
    previous = b.args.config
    b.restart_proxy(config)
    try:
        if "proxy" not in b.sockets:
            raise RuntimeError(f"proxy did not start with {config}: {b.unavailable.get('proxy')}")
        yield
    finally:
        b.restart_proxy(previous)


def create_remove(conn: loadgen.ApiConn, body: bytes) -> tuple[int, int]:
    """One create and one remove: (create ns, create+remove ns)."""
    t0 = time.perf_counter_ns()
    status, answer = conn.call("POST", "/v1.41/containers/create", body)
    t1 = time.perf_counter_ns()
    if status != 201:
        raise RuntimeError(f"create answered {status}: {answer[:300]!r}")
    cid = json.loads(answer)["Id"]
    status, answer = conn.call("DELETE", f"/v1.41/containers/{cid}")
    t2 = time.perf_counter_ns()
    if status != 204:
        raise RuntimeError(f"remove answered {status}: {answer[:300]!r}")
    return t1 - t0, t2 - t0


_CALLING = re.compile(r'msg="Calling (\S+) (\S+)"')
_ID = re.compile(r"/[0-9a-f]{64}(?=/|$)")


def count_daemon_calls(b: Bench, conn: loadgen.ApiConn, body: bytes, n: int) -> dict[str, float]:
    """Requests dockerd logged per create+remove sent to ``target``, by route.

    dockerd's debug log has one ``Calling METHOD PATH`` line per request it
    serves, whoever sent it: through the proxy, any check or extra call the proxy
    made would show up here as a route the direct client never called.
    """
    dockerd = b.running["direct"]
    offset = procs.log_size(dockerd)
    for _ in range(n):
        create_remove(conn, body)
    counts: dict[str, float] = {}
    for method, path in _CALLING.findall(procs.log_since(dockerd, offset)):
        route = f"{method} " + _ID.sub("/{id}", re.sub(r"^/v[0-9.]+", "", path))
        counts[route] = counts.get(route, 0) + 1 / n
    return counts


def quantile_ms(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1e6


def measure_create(b: Bench) -> None:
    """POST /containers/create (+ DELETE) of a recipe-managed image that is present.

    This is the proxy's everyday cost: with a recipe that matches, every create is
    buffered and its answer inspected for "No such image", where an unmanaged create
    is just streamed. One keep-alive connection per target, one create and one
    remove in flight at a time; blocks of ``--create-block`` pairs alternate between
    targets (ABBA) so drift and neighbours hit both alike. dockerd's and the proxy's
    CPU are sampled per block, the figures least moved by neighbours. The daemon
    calls behind each create are then counted from dockerd's debug log, switched on
    only for that untimed count.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    ensure_app_image(b)
    targets = ["direct", "proxy"]
    body = json.dumps(
        {"Image": APP_PRESENT, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    ).encode()
    with proxy_config(b, heal_config(b)):
        conns = {t: loadgen.ApiConn(str(b.sockets[t])) for t in targets}
        create: dict[str, list[int]] = {t: [] for t in targets}
        pair: dict[str, list[int]] = {t: [] for t in targets}
        dockerd_cpu = dict.fromkeys(targets, 0.0)
        try:
            for t in targets:
                for _ in range(a.create_warmup):
                    create_remove(conns[t], body)
            # The proxy idles through the direct blocks, so one window over them all
            # gives its CPU with 1/n of a tick's rounding instead of 1/block.
            m0 = procs.tree_cpu(b.running["proxy"].pid)
            for block in range(max(1, a.create_n // a.create_block)):
                order = targets if block % 2 == 0 else targets[::-1]
                for t in order:
                    d0 = procs.tree_cpu(b.running["direct"].pid)
                    for _ in range(a.create_block):
                        c, cr = create_remove(conns[t], body)
                        create[t].append(c)
                        pair[t].append(cr)
                    dockerd_cpu[t] += procs.cpu_delta(d0, procs.tree_cpu(b.running["direct"].pid))
            proxy_cpu = procs.cpu_delta(m0, procs.tree_cpu(b.running["proxy"].pid))
            procs.set_dockerd_debug(b.running["direct"], b.tmp, b.sockets["direct"], True)
            try:
                calls = {t: count_daemon_calls(b, conns[t], body, a.create_count) for t in targets}
            finally:
                procs.set_dockerd_debug(b.running["direct"], b.tmp, b.sockets["direct"], False)
        finally:
            for conn in conns.values():
                conn.close()

    n = len(create["direct"])
    stats = {
        t: {
            "create_p50_ms": quantile_ms(create[t], 0.5),
            "create_p99_ms": quantile_ms(create[t], 0.99),
            "pair_p50_ms": quantile_ms(pair[t], 0.5),
            "pair_p99_ms": quantile_ms(pair[t], 0.99),
            "dockerd_cpu_ms_per_pair": dockerd_cpu[t] / n * 1e3,
        }
        for t in targets
    }
    stats["proxy"]["proxy_cpu_us_per_pair"] = proxy_cpu / n * 1e6
    d, p = stats["direct"], stats["proxy"]
    added_us = (p["create_p50_ms"] - d["create_p50_ms"]) * 1e3
    added_pair_us = (p["pair_p50_ms"] - d["pair_p50_ms"]) * 1e3

    def calls_text(t: str) -> str:
        return ", ".join(f"{k} x{v:.2f}" for k, v in sorted(calls[t].items()))

    table = Table(
        "POST /containers/create + DELETE, image present and recipe-managed",
        [
            "target", "create p50 ms", "create p99 ms", "added p50 µs",
            "create+remove p50 ms", "create+remove p99 ms", "added p50 µs (pair)",
            "dockerd CPU ms/pair", "proxy CPU µs/pair", "dockerd calls per pair",
        ],
    )  # fmt: skip
    for t in targets:
        s = stats[t]
        table.rows.append(
            [
                t,
                f"{s['create_p50_ms']:.2f}",
                f"{s['create_p99_ms']:.2f}",
                "-" if t == "direct" else f"{added_us:+.0f}",
                f"{s['pair_p50_ms']:.2f}",
                f"{s['pair_p99_ms']:.2f}",
                "-" if t == "direct" else f"{added_pair_us:+.0f}",
                f"{s['dockerd_cpu_ms_per_pair']:.2f}",
                f"{s['proxy_cpu_us_per_pair']:.0f}" if t == "proxy" else "-",
                calls_text(t),
            ]
        )
    same_calls = calls["direct"] == calls["proxy"]
    table.notes += [
        f"Raw-socket client (`bench/loadgen.py` `ApiConn`), one keep-alive connection per "
        f"target: `POST /v1.41/containers/create` with `{body.decode()}`, then "
        "`DELETE /v1.41/containers/{id}`. "
        f"{n} pairs per target after {a.create_warmup} untimed ones, in blocks of "
        f"{a.create_block} alternating direct/proxy (ABBA); percentiles over all pairs.",
        f"The proxy ran with a config whose `build` recipe matches `{APP_REPO}:{{tag}}`, so "
        f"every create here takes its managed path (buffered, answer checked for 'No such "
        f"image'); `{APP_PRESENT}` exists, so no heal ran.",
        f"Upstream calls counted from dockerd's own `--debug` log ('Calling METHOD PATH', "
        f"debug switched on by SIGHUP for an untimed count of {a.create_count} pairs per "
        "target, off for the timing): "
        + (
            "identical direct and through the proxy — the proxy adds no round trip."
            if same_calls
            else "DIFFERENT direct and through the proxy (see the last column)."
        ),
        f"CPU columns: CPU time of the process tree (/proc, {procs.CLK_TCK} ticks/s) divided "
        "by pairs; dockerd's is summed over its target's blocks and includes containerd "
        "(which creates the rw layer), the proxy's is one window over the whole timed "
        "part (it idles through the direct blocks).",
    ]
    b.tables.append(table)
    b.raw["create"] = {
        "stats": stats,
        "added_create_p50_us": added_us,
        "added_pair_p50_us": added_pair_us,
        "daemon_calls_per_pair": calls,
        "create_ns": create,
        "pair_ns": pair,
    }
    b.bars.append(
        Bar(
            "added p50 of POST /containers/create (recipe-managed, image present)",
            f"{added_us:.0f} µs",
            f"≤ {BAR_CREATE_ADDED_P50_US:.0f} µs",
            added_us <= BAR_CREATE_ADDED_P50_US,
        )
    )
    b.bars.append(
        Bar(
            "dockerd calls per create+remove through the proxy (no added round trip)",
            f"{sum(calls['proxy'].values()):.2f} (direct {sum(calls['direct'].values()):.2f})",
            "same routes and counts as direct",
            same_calls,
        )
    )


def run_true(b: Bench, target: str, image: str) -> float:
    """Seconds for ``docker run --rm IMAGE true`` through ``target``."""
    t0 = time.perf_counter()
    out = b.docker(target, "run", "--rm", image, "true", check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"docker run {image} via {target} failed: {out.stderr.decode()[-2000:]}")
    return took


def rmi(b: Bench, image: str) -> None:
    b.docker("direct", "rmi", "-f", image, check=False)


def cached_steps(output: str) -> int:
    """Build steps the legacy builder took from its cache, from its output."""
    return output.count("Using cache")


def measure_heal(b: Bench) -> None:
    """``docker run`` of a pruned image through the proxy vs the recipe run alone.

    A (the recipe alone): ``docker build`` of the recipe's own context, directly.
    B (the heal): ``docker rmi`` the image, then ``docker run --rm IMAGE true``
    through the proxy — create, 404, heal by the same build, replayed create,
    start, wait, remove. Both sides of a round build the same tag with the same
    ``BUST`` arg; ``rmi`` between them deletes the tagged image and so the ``RUN``
    layer (its only holder), leaving both with the same cache state (COPY and ARG
    kept by ``APP_PRESENT``). The cached-step counts of both builds are compared
    every round to prove it. C: the same ``docker run`` with the image present,
    through the proxy and directly, is the run's own share of B. Sides alternate
    order each round.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    ensure_app_image(b)
    logs = b.tmp / "proxy-state" / "logs"
    times: dict[str, list[float]] = {"build": [], "heal": [], "run_proxy": [], "run_direct": []}
    cached: dict[str, list[int]] = {"build": [], "heal": []}
    proxy_cpu: list[float] = []

    def side_a(tag: str) -> None:
        took, out = legacy_build(b, tag)
        times["build"].append(took)
        cached["build"].append(cached_steps(out))
        rmi(b, f"{APP_REPO}:{tag}")

    def side_b(tag: str) -> None:
        image = f"{APP_REPO}:{tag}"
        rmi(b, image)
        before = set(logs.glob("*.log")) if logs.is_dir() else set()
        m0 = procs.tree_cpu(b.running["proxy"].pid)
        times["heal"].append(run_true(b, "proxy", image))
        proxy_cpu.append(procs.cpu_delta(m0, procs.tree_cpu(b.running["proxy"].pid)))
        new = sorted(set(logs.glob("*.log")) - before)
        if not new:
            raise RuntimeError(f"docker run of {image} did not heal (no new heal log)")
        cached["heal"].append(cached_steps("".join(f.read_text() for f in new)))
        for t in ("proxy", "direct") if len(times["heal"]) % 2 else ("direct", "proxy"):
            times[f"run_{t}"].append(run_true(b, t, image))
        rmi(b, image)

    with proxy_config(b, heal_config(b)):
        run_true(b, "proxy", APP_PRESENT)  # warm the CLI and the proxy's first create
        for rnd in range(a.heal_rounds):
            tag = f"r{rnd + 1}"
            for run_side in (side_a, side_b) if rnd % 2 == 0 else (side_b, side_a):
                run_side(tag)
            print(
                f"   round {rnd + 1}: build {times['build'][-1]:.2f}s, "
                f"heal+run {times['heal'][-1]:.2f}s, run present proxy "
                f"{times['run_proxy'][-1]:.2f}s direct {times['run_direct'][-1]:.2f}s",
                flush=True,
            )

    med = {k: statistics.median(v) for k, v in times.items()}
    build, heal, run_p = med["build"], med["heal"], med["run_proxy"]
    # A, B and C of one round run back to back, so a round's own ratio cancels the
    # drift (neighbours come and go over seconds) that a ratio of medians mixes in.
    rounds = zip(times["build"], times["heal"], times["run_proxy"], strict=True)
    paired = [(h - r) / bl for bl, h, r in rounds]
    net = statistics.median(paired)
    overhead_ms = [
        (h - bl - r) * 1e3
        for bl, h, r in zip(times["build"], times["heal"], times["run_proxy"], strict=True)
    ]
    table = Table(
        f"docker run of a pruned image: heal through the proxy vs the recipe alone "
        f"({a.heal_mb} MiB RUN step)",
        ["side", "what is timed", "target", "median s", "runs (s)", "vs A"],
    )
    rows = [
        ("A", "recipe alone: `docker build` (legacy builder, `RUN` rebuilt)", "direct", "build"),
        ("B", "`docker rmi`, then `docker run --rm IMAGE true` (heal + run)", "proxy", "heal"),
        ("C", "`docker run --rm IMAGE true`, image present", "proxy", "run_proxy"),
        ("C", "`docker run --rm IMAGE true`, image present", "direct", "run_direct"),
    ]
    for side, what, target, key in rows:
        table.rows.append(
            [
                side,
                what,
                target,
                f"{med[key]:.3f}",
                ", ".join(f"{x:.2f}" for x in times[key]),
                f"{med[key] / build:.2f}x",
            ]
        )
    same_work = cached["build"] == cached["heal"]
    table.notes += [
        f"Medians: B/A = {heal / build:.2f}x, (B - C proxy)/A = {(heal - run_p) / build:.2f}x. "
        f"Per round (A, B and C back to back): (B - C)/A median {net:.2f}x (aim 1.0; the "
        f"bar), runs {', '.join(f'{x:.2f}' for x in paired)}; heal overhead beyond the build "
        f"and the run, B - A - C, median {statistics.median(overhead_ms):+.0f} ms, runs "
        f"{', '.join(f'{x:+.0f}' for x in overhead_ms)} ms.",
        f"Proxy CPU per B (the heal: build context tar, progress stream, replayed create): "
        f"median {statistics.median(proxy_cpu) * 1e3:.0f} ms ({procs.CLK_TCK} ticks/s).",
        f"Image: `FROM scratch`, `COPY` busybox ({BUSYBOX.stat().st_size / 1e6:.1f} MB), "
        f"`ARG BUST`, `RUN` busybox `--install` and `dd` of a {a.heal_mb} MiB file. Recipe: "
        f'`build = {{ context = …, args = {{ BUST = "{{tag}}" }} }}` for '
        f"`{APP_REPO}:{{tag}}`; A runs `DOCKER_BUILDKIT=0 docker build --build-arg BUST=TAG` "
        "on the same context. Both are the daemon's legacy builder.",
        f"{a.heal_rounds} rounds, one new tag each, A and B alternating which goes first; "
        "`docker rmi` after each build removes the image and its `RUN` layer, so neither "
        "side can reuse the other's. Steps served from cache per round, A "
        f"{cached['build']} vs B {cached['heal']}: "
        + ("equal (`COPY` and `ARG`), `RUN` rebuilt on both sides." if same_work else "DIFFER."),
    ]
    b.tables.append(table)
    b.raw["heal"] = {
        "times": times,
        "median": med,
        "cached_steps": cached,
        "paired_ratio": paired,
        "overhead_ms": overhead_ms,
        "proxy_cpu_s": proxy_cpu,
    }
    b.bars.append(
        Bar(
            "docker run of a pruned image, less the run itself, vs the recipe alone "
            "(median of per-round ratios)",
            f"{net:.2f}x",
            f"≤ {BAR_HEAL_RATIO:.2f}x",
            net <= BAR_HEAL_RATIO and same_work,
        )
    )


CACHED_REPO = "127.0.0.1:1/bench/cached"
"""Healed by a ``build`` recipe with ``cache = true``; the registry cache is local."""


def start_registry(b: Bench) -> str:
    """Debian's ``docker-registry`` on a free loopback port (insecure by default there)."""
    folder = b.tmp / "registry"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = procs.spawn("registry", ["/usr/bin/docker-registry", "serve", str(config)], b.tmp)
    b.running["registry"] = proc
    deadline = time.monotonic() + 20
    while registry_tags(f"127.0.0.1:{port}", "probe", proc) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the registry did not answer:\n{proc.log_tail()}")
        time.sleep(0.1)
    return f"127.0.0.1:{port}"


def registry_tags(registry: str, repository: str, proc: procs.Proc) -> list[str] | None:
    """The repository's tags; None while the registry does not answer yet."""
    if not proc.alive():
        raise RuntimeError(f"the registry exited:\n{proc.log_tail()}")
    url = f"http://{registry}/v2/{repository}/tags/list"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["tags"] or [])
    except urllib.error.HTTPError as error:
        return [] if error.code == 404 else None
    except OSError:
        return None


def cache_context(b: Bench) -> Path:
    """``FROM scratch`` + busybox + a ``RUN`` that sleeps ``--cache-sleep`` seconds
    and writes ``--cache-mb`` of random bytes: a slow recipe and a big image that no
    layer of the stack can compress."""
    ctx = b.tmp / "cache-ctx"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    run = (
        "/bin/busybox --install -s /bin && "
        f"sleep {b.args.cache_sleep} && "
        f"head -c {b.args.cache_mb}m /dev/urandom > /blob"
    )
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', run])}\n"
    )
    return ctx


def timed_pull(b: Bench, target: str, image: str) -> float:
    """``docker pull`` through ``target``: through the proxy, a managed tag heals."""
    t0 = time.perf_counter()
    b.docker(target, "pull", "-q", image)
    return time.perf_counter() - t0


def forget(b: Bench, *images: str) -> None:
    """Remove every name of the image, so its layers are gone and must be fetched again."""
    b.docker("direct", "rmi", *images)


def measure_cache(b: Bench) -> None:
    """A heal from the recipe, a heal from the registry cache, a plain ``docker pull``.

    One ``build`` recipe with ``cache = true`` makes ``CACHED_REPO:1``, and a local
    ``docker-registry`` is ``[heal] cache``. The first heal runs the recipe (and
    pushes in the background; we wait for the tag to appear). The same image is
    pushed under a plain name too. Then, per round and in alternating order, the
    image is removed entirely and fetched again, once healed from the cache
    through the proxy (``docker pull`` of a managed tag heals) and once by a plain
    ``docker pull`` of the plain name, straight from the daemon: the same bytes
    from the same registry, so the ratio is what the heal adds to a pull.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    registry = start_registry(b)
    image = f"{CACHED_REPO}:1"
    plain = f"{registry}/bench/plain:1"
    cfg = b.tmp / "cache.toml"
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n\n"
        f"[heal]\ncache = {json.dumps(registry + '/heal-cache')}\n\n"
        "[[images]]\n"
        f"match = {json.dumps(CACHED_REPO + ':{tag}')}\n"
        f"build = {{ context = {json.dumps(str(cache_context(b)))} }}\n"
        "cache = true\n"
    )
    with proxy_config(b, cfg):
        recipe_s = timed_pull(b, "proxy", image)
        deadline = time.monotonic() + 600
        while not registry_tags(registry, "heal-cache", b.running["registry"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the cache push did not land in the registry")
            time.sleep(0.2)
        b.docker("direct", "tag", image, plain)
        b.docker("direct", "push", "-q", plain)
        forget(b, image, plain)
        cached: list[float] = []
        pulled: list[float] = []
        for round_ in range(a.cache_rounds):
            order = ("cache", "pull") if round_ % 2 == 0 else ("pull", "cache")
            for kind in order:
                if kind == "cache":
                    cached.append(timed_pull(b, "proxy", image))
                    forget(b, image)
                else:
                    pulled.append(timed_pull(b, "direct", plain))
                    forget(b, plain)
    size = a.cache_mb
    cache_s, pull_s = statistics.median(cached), statistics.median(pulled)
    ratio = cache_s / pull_s
    table = Table(
        f"Heal of a {size} MiB image: recipe, registry cache, plain pull",
        ["how", "seconds (median)", "rounds", "all rounds (s)", "vs plain pull"],
    )
    table.rows.append(
        [f"heal by the recipe (build, sleeps {a.cache_sleep}s)", f"{recipe_s:.1f}", "1",
         f"{recipe_s:.1f}", f"{recipe_s / pull_s:.1f}x"]
    )  # fmt: skip
    table.rows.append(
        ["heal from the registry cache (through the proxy)", f"{cache_s:.2f}",
         str(len(cached)), " ".join(f"{x:.2f}" for x in cached), f"{ratio:.2f}x"]
    )  # fmt: skip
    table.rows.append(
        ["plain docker pull of the same image (direct)", f"{pull_s:.2f}",
         str(len(pulled)), " ".join(f"{x:.2f}" for x in pulled), "1.00x"]
    )  # fmt: skip
    table.notes.append(
        "Each row starts with the image and all its layers removed; the registry is "
        "Debian's docker-registry on loopback, filesystem storage, no TLS. A heal from "
        "the cache is a pull of the cache tag, a tag as the wanted name and an untag."
    )
    b.tables.append(table)
    b.raw["cache"] = {"recipe_s": recipe_s, "cache_s": cached, "pull_s": pulled, "mb": size}
    b.bars.append(
        Bar(
            f"heal of a {size} MiB image from the registry cache vs a plain docker pull",
            f"{ratio:.2f}x",
            f"≤ {BAR_CACHE_RATIO:.2f}x",
            ratio <= BAR_CACHE_RATIO,
        )
    )


SEED_BASE = "127.0.0.1:1/bench/seedbase:latest"
SEED_GROUP = "127.0.0.1:1/bench/seedagent:g1"


def seed_config(b: Bench, proactive: bool) -> Path:
    """The seed's chain: a base built by a script, a per-group image built FROM it.

    The base is ``app_context`` (its ``RUN`` writes ``--heal-mb``), the group adds
    a ``RUN`` of its own. ``min_free = "0%"``: the bench measures the heal, not
    the machine's disk. Both sides share ``state_dir``, so both remember the group.
    """
    script = b.tmp / "seed-base.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f"DOCKER_BUILDKIT=0 {DOCKER_CLI} build -q --build-arg BUST=seed -t {SEED_BASE} "
        f'"{app_context(b)}"\n'
    )
    script.chmod(0o755)
    ctx = b.tmp / "seed-agent"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile.g1").write_text(
        f"FROM {SEED_BASE}\nARG GROUP\n"
        'RUN ["/bin/sh", "-c", "echo $GROUP > /group && dd if=/dev/zero of=/g bs=1M count=10"]\n'
    )
    flag = "true" if proactive else "false"
    group = SEED_GROUP.rsplit(":", 1)[0] + ":{group}"
    cfg = b.tmp / f"seed-{flag}.toml"
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n"
        '[heal]\nmin_free = "0%"\n\n'
        f"[[images]]\nmatch = {json.dumps(SEED_BASE)}\ncommand = [{json.dumps(str(script))}]\n"
        f"proactive = {flag}\n\n"
        f"[[images]]\nmatch = {json.dumps(group)}\n"
        f"build = {{ context = {json.dumps(str(ctx))}, dockerfile = "
        '"Dockerfile.{group}", args = { GROUP = "{group}" } }\n'
        f"proactive = {flag}\n"
    )
    return cfg


def image_present(b: Bench, image: str) -> bool:
    return b.api("direct", "GET", f"/images/{image}/json")[0] == 200


def measure_proactive(b: Bench) -> None:
    """The first ``docker run`` after a prune, with and without ``proactive``.

    P: proxy with ``proactive = true``; ``docker image prune -a -f`` straight on
    the daemon's socket, timed until both images of the chain are back (polled
    every 50 ms), then ``docker run --rm GROUP true`` through the proxy, timed.
    D: the same with ``proactive = false``: the prune, then the timed run, which
    heals on demand. Sides alternate which goes first each round.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    times: dict[str, list[float]] = {"back": [], "run_proactive": [], "run_on_demand": []}

    def prune_and_run(proactive: bool) -> None:
        with proxy_config(b, seed_config(b, proactive)):
            run_true(b, "proxy", SEED_GROUP)  # heals the chain if a previous side left none
            t0 = time.perf_counter()
            b.docker("direct", "image", "prune", "-a", "-f")
            if proactive:
                deadline = t0 + 1800
                while not (image_present(b, SEED_BASE) and image_present(b, SEED_GROUP)):
                    if time.perf_counter() > deadline:
                        raise RuntimeError("the seed chain did not come back within 30 min")
                    time.sleep(0.05)
                times["back"].append(time.perf_counter() - t0)
            key = "run_proactive" if proactive else "run_on_demand"
            times[key].append(run_true(b, "proxy", SEED_GROUP))

    for rnd in range(a.proactive_rounds):
        for proactive in (True, False) if rnd % 2 == 0 else (False, True):
            prune_and_run(proactive)
        print(
            f"   round {rnd + 1}: back after {times['back'][-1]:.2f}s, first run "
            f"{times['run_proactive'][-1]:.2f}s proactive, "
            f"{times['run_on_demand'][-1]:.2f}s on demand",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [d / p for p, d in zip(times["run_proactive"], times["run_on_demand"], strict=True)]
    table = Table(
        "The first docker run after a prune: proactive heal vs heal on demand (seed chain)",
        ["what is timed", "median s", "runs (s)"],
    )
    for label, key in (
        ("`docker image prune -a -f` on the daemon until both images are back (proactive)", "back"),
        ("then the first `docker run --rm GROUP true` through the proxy", "run_proactive"),
        ("`docker run --rm GROUP true` right after the prune, without proactive", "run_on_demand"),
    ):
        table.rows.append([label, f"{med[key]:.3f}", ", ".join(f"{x:.2f}" for x in times[key])])
    table.notes += [
        f"The first run after a prune without proactive takes {statistics.median(ratios):.1f}x "
        f"as long as with it (median of per-round ratios: "
        f"{', '.join(f'{x:.1f}' for x in ratios)}).",
        f"Chain: base `{SEED_BASE}` built by a script (`docker build` of the heal row's "
        f"context, a {a.heal_mb} MiB `RUN`), group `{SEED_GROUP}` by a `build` recipe FROM "
        "it with a 10 MiB `RUN`. The prune also takes the builder's intermediate images, "
        "so both sides rebuild every step; the debounce after the prune's events is 5 s.",
        f"{a.proactive_rounds} rounds; each side restarts the proxy with its config.",
    ]
    b.tables.append(table)
    b.raw["proactive"] = {"times": times, "median": med, "ratios": ratios}


def build_context(b: Bench) -> Path:
    """``--build-mb`` of random data and a Dockerfile FROM the managed ``APP_PRESENT``.

    ``Dockerfile`` sorts before ``data.bin``, so the CLI sends it first, as it
    does for most contexts; random data, so no layer of the path can shrink it.
    """
    ctx = b.tmp / "build-ctx"
    if not ctx.is_dir():
        ctx.mkdir()
        dockerfile = f"FROM {APP_PRESENT}\nLABEL bench=build\n"
        (ctx / "Dockerfile").write_text(dockerfile)
        (b.tmp / "Dockerfile.outside").write_text(dockerfile)  # for ``-f`` outside the context
        with (ctx / "data.bin").open("wb") as data:
            for _ in range(b.args.build_mb):
                data.write(os.urandom(1 << 20))
    return ctx


def build_once(b: Bench, target: str, outside: bool = False) -> float:
    """Time one classic-builder ``docker build -q`` of ``build_context`` through ``target``;
    ``outside``: with ``-f`` a Dockerfile outside the context, which the CLI sends last."""
    env = b.docker_env(target)
    env["DOCKER_BUILDKIT"] = "0"
    argv = [DOCKER_CLI, "build", "-q", "-t", BUILD_TAG]
    if outside:
        argv += ["-f", str(b.tmp / "Dockerfile.outside")]
    t0 = time.perf_counter()
    subprocess.run([*argv, str(build_context(b))], env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def measure_build(b: Bench) -> None:
    """``docker build`` with a large context FROM a managed base that is present.

    The proxy runs with a recipe config, so it claims the build, spools its
    body until the Dockerfile is read, checks the base and forwards: this is
    the cost every build pays for the heal it does not need. With ``-f``
    outside the context the Dockerfile comes last, so the whole context is
    spooled first: the worst case, shown without a bar.
    """
    a = b.args
    ensure_app_image(b)
    with proxy_config(b, heal_config(b)):
        ratio = build_row(b, outside=False)
        build_row(b, outside=True)
    b.bars.append(
        Bar(
            f"docker build, {a.build_mb} MiB context, no heal needed ≤ {BAR_BUILD_RATIO}x direct",
            f"{ratio:.2f}x",
            f"≤ {BAR_BUILD_RATIO}x",
            ratio <= BAR_BUILD_RATIO,
        )
    )


def build_row(b: Bench, outside: bool) -> float:
    """One table of ``measure_build``; the proxy's median over direct's."""
    a = b.args
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu: list[float] = []
    rss_peak = 0
    pid = b.middle_pid("proxy")
    build_once(b, "direct", outside)  # page cache, the context file and the cached LABEL step
    build_once(b, "proxy", outside)
    for _ in range(a.build_reps):
        times["direct"].append(build_once(b, "direct", outside))
        if pid:
            before = procs.tree_cpu(pid)
            with procs.RssSampler(pid) as sampler:
                times["proxy"].append(build_once(b, "proxy", outside))
            cpu.append(procs.cpu_delta(before, procs.tree_cpu(pid)))
            rss_peak = max(rss_peak, sampler.peak_kb)
        else:
            times["proxy"].append(build_once(b, "proxy", outside))
    chosen = {t: statistics.median(v) for t, v in times.items()}
    where = " and `-f` outside it (Dockerfile last)" if outside else ""
    table = Table(
        f"docker build with a {a.build_mb} MiB context{where}, no heal needed",
        ["target", "median s", "runs (s)", "vs direct"],
    )
    for t, runs in times.items():
        table.rows.append(
            [
                t,
                f"{chosen[t]:.2f}",
                ", ".join(f"{x:.2f}" for x in runs),
                f"{chosen[t] / chosen['direct']:.2f}x",
            ]
        )
    table.notes.append(
        f"`DOCKER_BUILDKIT=0 docker build -q` (the classic builder, as CLI 28 without buildx "
        f"uses) of a {a.build_mb} MiB random file and a Dockerfile FROM the recipe-managed "
        f"{APP_PRESENT}; {a.build_reps} interleaved runs per target after one untimed build "
        "each; medians are compared. The proxy has a recipe config, so it claims the build, "
        "reads the Dockerfile from the body and looks the base up before forwarding."
    )
    if outside:
        table.notes.append(
            "The same build with `-f` naming a Dockerfile outside the context: the CLI appends "
            "it to the tar as `.dockerfile.<random>`, last, so the proxy spools the whole "
            "context before it can read the Dockerfile and forward. No bar: this is the worst "
            "case, shown so that it stays visible."
        )
    if rss_peak:
        table.notes.append(
            f"proxy VmRSS peak sampled every 20 ms during its builds: {rss_peak / 1024:.1f} MiB; "
            f"its CPU per build: {', '.join(f'{x:.2f}' for x in cpu)} s."
        )
    b.raw["build_outside" if outside else "build"] = {
        "times": times,
        "median": chosen,
        "proxy_rss_peak_kb": rss_peak,
        "proxy_cpu_s": cpu,
    }
    b.tables.append(table)
    return chosen["proxy"] / chosen["direct"]


MEASUREMENTS: list[Callable[[Bench], None]] = [
    measure_ping,
    measure_save,
    measure_proxy_memory,
    measure_proxy_profile,
    measure_cpu_split,
    measure_create,
    measure_heal,
    measure_cache,
    measure_build,
    measure_proactive,  # last: it prunes every image the others rely on
]
"""Run in order; append new rows here. The last four restart the proxy with a recipe
config (and back), so they come after the rows that read the proxy's memory and profile.
``measure_proactive`` prunes every image, so it is last."""


# --------------------------------------------------------------------- plumbing


def pct(cpu_s: float, seconds: float) -> str:
    return f"{cpu_s / seconds * 100:.0f}%"


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
    server = b.docker("direct", "version", "-f", "{{.Server.Version}}", check=False)
    driver = b.docker("direct", "info", "-f", "{{.Driver}}", check=False)
    rev = first_line(["git", "-C", str(procs.REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(procs.REPO), "status", "--porcelain", "--", "proxy"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "dockerd": server.stdout.decode().strip() or "?",
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


def render(b: Bench, facts: dict[str, str], started: dt.datetime, took: float) -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` — do not edit by hand; rerun instead (see the end).",
        "Every ratio is against the direct figure measured in the same run, on the same",
        "private dockerd.",
        "",
        f"Run: {started.strftime('%Y-%m-%d %H:%M UTC')}, took {took:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in facts.items()]
    out.append("")
    out.append("## Bars")
    out.append("")
    out.append("| requirement | measured | limit | verdict |")
    out.append("|---|---|---|---|")
    out += [f"| {x.name} | {x.measured} | {x.limit} | **{x.verdict}** |" for x in b.bars]
    out.append("")
    for t in b.tables:
        out.append(t.markdown())
    if b.unavailable:
        out.append("## Not measured")
        out.append("")
        out += [f"- {k}: {v.splitlines()[0]}" for k, v in b.unavailable.items()]
        out.append("")
    out += [
        "## Setup and how to rerun",
        "",
        "```sh",
        "sudo python bench/run.py --rounds 5 # ~10 minutes, rewrites docs/benchmarks.md",
        "sudo python bench/run.py --only measure_ping,measure_cpu_split --out /tmp/ping.md",
        "sudo python bench/run.py --only measure_create,measure_heal --out /tmp/heal.md",
        "sudo python bench/run.py --only measure_cache --out /tmp/cache.md  # docker-registry",
        "sudo python bench/run.py --seconds 1 --rounds 1 --save-mb 64 --out /tmp/quick.md",
        "sudo python bench/run.py --config my-recipes.toml   # proxy with a config",
        "sudo python bench/soak.py          # 10 minutes, rewrites the soak section only",
        "python bench/exchange.py           # no root: the data path's own cost per ping",
        "```",
        "",
        "Exit status: 0 all bars pass, 3 a bar failed, 1 the run was incomplete (the",
        "report is then printed but not written). An aim missed ('not yet') is not a failure.",
        "The profile rows need `py-spy` (in the test extra) and `perf` (Debian's",
        "`linux-perf`); without them they say so and the rest runs.",
        "",
        "One run starts a private `dockerd --bridge=none --iptables=false` (data and exec",
        "roots and its own `--config-file` in a tmp dir under /tmp, thrown away afterwards)",
        "and puts each target in front of its socket:",
        "",
        "- **proxy**: `python -m proxy serve --listen unix://… --upstream unix://…"
        " --metrics-listen '' --log-level warning` (`--config FILE` is passed through).",
        "- **haproxy**: `mode http`, `option http-keep-alive`, `http-reuse safe`,"
        " `nbthread` = nproc, `bind unix@…`, `server d unix@…/docker.sock` — an HTTP-aware"
        " proxy like ours, not a byte pipe.",
        "- **socat**: `socat UNIX-LISTEN:…,fork,backlog=128 UNIX-CONNECT:…/docker.sock`"
        " (one forked process per connection).",
        "",
        "The load generator (`bench/loadgen.py`) is blocking Python over raw Unix sockets,",
        "forked into client processes, each keeping one `GET /_ping` in flight per",
        "connection and parsing Content-Length itself; it runs on the same cores as",
        "dockerd and the proxies, which the CPU columns make visible.",
        "",
        "Shared machines: the run raises its priority (`--nice`, default -10) for itself",
        "and, because the kernel's scheduler autogroups share CPU per session before",
        "nice applies, for the autogroup of every process it starts. Other sessions'",
        "work still fills idle time ('other CPU'); ping rows are the median of",
        "`--rounds` interleaved rounds and save times the median of `--save-reps`.",
        "",
        "The create and heal rows restart the proxy with a config of one `build` recipe",
        "for `127.0.0.1:1/bench/app:{tag}` (`state_dir` in the tmp dir), then restart it",
        "with the run's own config. The create row's client is `loadgen.ApiConn`, one",
        "keep-alive connection, one request in flight. dockerd's debug log is switched on",
        "(rewritten `--config-file` + SIGHUP) only while daemon calls are counted.",
        "",
        "Adding a row: write `measure_x(b: Bench)` in `bench/run.py` that appends a",
        "`Table` (and `Bar`s) and list it in `MEASUREMENTS`; `Bench` has the sockets,",
        "`b.docker(target, ...)`, `b.api(target, method, path, body)` and",
        "`b.restart_proxy(config)`. Raw figures of the last run are in",
        "`bench/results/latest.json` (not committed).",
        "",
    ]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per ping row")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per ping row")
    p.add_argument("--conns", type=int, nargs="+", default=[1, 16], help="connection counts")
    p.add_argument("--saturation-conns", type=int, default=32, help="extra direct row")
    p.add_argument("--procs", type=int, default=4, help="max client processes per row")
    p.add_argument("--rounds", type=int, default=3, help="ping rounds; the median is kept")
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="nice (process and scheduler autogroup) for everything the run starts, so "
        "other sessions on a shared machine disturb the figures less; 0 to leave it",
    )
    p.add_argument("--save-mb", type=int, default=512, help="size of the saved image's file")
    p.add_argument("--save-reps", type=int, default=3, help="timed saves per target")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        type=lambda s: ["direct"] + [t for t in s.split(",") if t and t != "direct"],
        help="comma list from: " + ",".join(ALL_TARGETS),
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile the proxy with py-spy (if on PATH) under the highest-conns load",
    )
    p.add_argument("--profile-top", type=int, default=8, help="frames listed in the profile")
    p.add_argument("--create-n", type=int, default=300, help="timed create+remove pairs")
    p.add_argument("--create-warmup", type=int, default=20, help="untimed pairs per target")
    p.add_argument("--create-block", type=int, default=15, help="pairs per interleaved block")
    p.add_argument(
        "--create-count", type=int, default=20, help="pairs per target in the daemon-call count"
    )
    p.add_argument("--heal-rounds", type=int, default=9, help="heal vs build rounds")
    p.add_argument("--build-mb", type=int, default=256, help="size of the build's context")
    p.add_argument("--build-reps", type=int, default=3, help="timed builds per target")
    p.add_argument("--heal-mb", type=int, default=50, help="size of the file the RUN step writes")
    p.add_argument("--cache-mb", type=int, default=300, help="size of the cached image's file")
    p.add_argument("--cache-sleep", type=int, default=30, help="seconds the cached recipe sleeps")
    p.add_argument("--cache-rounds", type=int, default=3, help="cache vs plain pull rounds")
    p.add_argument(
        "--proactive-rounds", type=int, default=3, help="prune rounds with and without proactive"
    )
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help="comma list of measurements to run (e.g. measure_create,measure_heal)",
    )
    p.add_argument("--config", type=Path, default=None, help="proxy config file")
    p.add_argument("--out", type=Path, default=procs.REPO / "docs" / "benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the tmp dir for debugging")
    args = p.parse_args(argv)
    bad = [t for t in args.targets if t not in ALL_TARGETS]
    if bad:
        p.error(f"unknown targets {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py starts its own dockerd and must run as root", file=sys.stderr)
        return 2
    old_group_nice = procs.set_priority(args.nice) if args.nice else None
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dhb-", dir="/tmp"))
    b = Bench(args=args, tmp=tmp)
    failed = False
    try:
        print(f"== private dockerd in {tmp}", flush=True)
        b.running["direct"], b.sockets["direct"] = procs.start_dockerd(tmp)
        for t in args.targets[1:]:
            b.start_target(t)
        print(f"== targets up: {', '.join(b.targets)}", flush=True)
        facts = machine_facts(b)
        bg = procs.background_cpu(1.0)
        facts["other load at start"] = f"{bg * 100:.0f}% of {100 * (os.cpu_count() or 1)}% CPU"
        if bg > 0.2:
            print(f"!! the machine is busy before we start ({bg:.2f} cores)", file=sys.stderr)
        for m in MEASUREMENTS:
            if args.only is not None and m.__name__ not in args.only:
                continue
            print(f"== {m.__name__}", flush=True)
            try:
                m(b)
            except Exception:
                failed = True
                traceback.print_exc()
                b.unavailable[m.__name__] = "raised; see the run's stderr"
        for name, p in b.running.items():
            if not p.alive():
                failed = True
                b.unavailable[name] = f"{name} died during the run:\n{p.log_tail()}"
    finally:
        for name in [n for n in b.running if n != "direct"] + ["direct"]:
            if name in b.running:
                b.running[name].stop()
        procs.unmount_under(tmp)
        if old_group_nice is not None:  # our session's autogroup is the caller's too
            procs.autogroup_nice(os.getpid(), old_group_nice)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = render(b, facts, started, time.perf_counter() - t0)
    print()
    print(report)
    results = procs.REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(
        json.dumps({"facts": facts, "bars": [asdict(x) for x in b.bars], **b.raw}, indent=1)
    )
    proxy_missing = "proxy" in args.targets and "proxy" not in b.sockets
    if proxy_missing or failed:
        print(f"not writing {args.out}: the run was incomplete", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + soak.section(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(x.ok is not False for x in b.bars if not x.aim) else 3


if __name__ == "__main__":
    sys.exit(main())
