"""The middle's CPU per request by binary, for the proxy and HAProxy, sampled by perf."""

from __future__ import annotations

import shutil
import subprocess

from bench import loadgen, procs
from bench.harness import Bench
from bench.perf import CPU_PARTS, perf_shares, perf_top
from bench.report import Table
from bench.schedule import Measure, Need


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
            shares[column] = perf_shares(perf, data, "dso", CPU_PARTS)
            kernel_top[column] = perf_top(perf, data, "[kernel.kallsyms]")
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


MEASURE = Measure[Bench](
    "measure_cpu_split",
    measure_cpu_split,
    needs=frozenset({Need.PROXY, Need.HAPROXY, Need.PERF}),
)
