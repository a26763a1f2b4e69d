"""Benchmark docker-heal-proxy against the bare daemon, HAProxy and socat, in one run.

Usage (as root; needs dockerd, haproxy, socat and the docker CLI)::

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
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, procs

DOCKER_CLI = "/usr/local/bin/docker"
BIG_IMAGE = "127.0.0.1:1/bench/big:1"
"""A registry-qualified name on a closed port: nothing can ever pull or push it."""
ALL_TARGETS = ("direct", "proxy", "haproxy", "socat")

# Bars the proxy must meet (from the project brief).
BAR_RPS_RATIO_16 = 0.3
BAR_ADDED_P50_US = 250.0
BAR_SAVE_RATIO = 1.25


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
    """A pass/fail requirement; ``ok is None`` means it could not be measured."""

    name: str
    measured: str
    limit: str
    ok: bool | None

    @property
    def verdict(self) -> str:
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
        """Run the docker CLI against one target's socket."""
        return subprocess.run(
            [DOCKER_CLI, *args],
            env=self.docker_env(target),
            stdout=stdout,
            stderr=subprocess.PIPE,
            check=check,
        )

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
    spy = shutil.which("py-spy")
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
    b.raw["proxy_profile"] = {"samples": total, "self": self_n, "rps": r.rps}
    b.tables.append(t)


MEASUREMENTS: list[Callable[[Bench], None]] = [
    measure_ping,
    measure_save,
    measure_proxy_memory,
    measure_proxy_profile,
]
"""Run in order; append new rows here (e.g. containers/create latency, time to heal)."""


# --------------------------------------------------------------------- plumbing


def pct(cpu_s: float, seconds: float) -> str:
    return f"{cpu_s / seconds * 100:.0f}%"


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
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
        "haproxy": first_line(["haproxy", "-v"]).split(" - ")[0],
        "socat": socat_version(),
        "python": platform.python_version(),
        "priority of the run": f"nice {os.getpriority(os.PRIO_PROCESS, 0)}, "
        + Path("/proc/self/autogroup").read_text().strip().split(" ", 1)[-1]
        + " (scheduler autogroup)",
        "proxy commit": rev
        + (" (+ uncommitted changes in proxy/)" if dirty not in ("", "?") else ""),
    }


def socat_version() -> str:
    out = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=False).stdout
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
        "sudo python bench/run.py            # ~2.5 minutes, rewrites docs/benchmarks.md",
        "sudo python bench/run.py --seconds 1 --rounds 1 --save-mb 64 --out /tmp/quick.md",
        "sudo python bench/run.py --config my-recipes.toml   # proxy with a config",
        "```",
        "",
        "Exit status: 0 all bars pass, 3 a bar failed, 1 the run was incomplete (the",
        "report is then printed but not written).",
        "",
        "One run starts a private `dockerd --bridge=none --iptables=false` (data and exec",
        "roots in a tmp dir under /tmp, thrown away afterwards) and puts each target in",
        "front of its socket:",
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
    args.out.write_text(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(x.ok is not False for x in b.bars) else 3


if __name__ == "__main__":
    sys.exit(main())
