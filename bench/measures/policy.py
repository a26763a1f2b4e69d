"""GET /_ping through a listener with the ``runner`` policy, against the same proxy's default one.

Why one proxy with two listeners: the question is what judging a request costs,
and the answer is a few microseconds among the proxy's tens. Two proxies, or two
runs, would differ by more than that. Both listeners of one process, measured in
interleaved rounds against the same daemon, differ only by the policy: the
default listener is ``full`` (no gate, no judge), the other judges every head.
The figure that matters is the proxy's CPU per request, the one least moved by
neighbours on a shared machine.
"""

from __future__ import annotations

from dataclasses import asdict

from bench import loadgen, procs
from bench.harness import Bench
from bench.measures.ping import PingRow, median_row
from bench.report import Table, fmt_rate, pct
from bench.schedule import Effect, Measure, Need

CONNS = (1, 16)


def measure_policy(b: Bench) -> None:
    """``/_ping`` req/s and the proxy's CPU per request, with and without a policy."""
    a = b.args
    runner = b.tmp / "runner.sock"
    config = b.tmp / "policy.toml"
    config.write_text(
        f'[[listeners]]\nname = "runner"\nlisten = "unix://{runner}"\npolicy = "runner"\n'
    )
    paths = {"full (no policy)": None, "runner": runner}
    runs: dict[tuple[str, int], list[PingRow]] = {(k, c): [] for c in CONNS for k in paths}
    with b.proxy_config(config):
        paths["full (no policy)"] = b.sockets["proxy"]
        for rnd in range(a.rounds):
            for (name, conns), rows in runs.items():
                path = paths[name]
                assert path is not None
                cpu = procs.CpuWindow(b.running["direct"].pid, b.middle_pid("proxy"))
                load = loadgen.run_load(
                    str(path), conns, a.seconds, a.warmup, a.procs, on_window=cpu
                )
                rows.append(PingRow(name, load, cpu))
                print(
                    f"   round {rnd + 1} {name:16s} {conns:3d} conns: {fmt_rate(load.rps)} "
                    f"req/s, proxy {cpu.middle_s / max(1, load.count) * 1e6:.1f} µs CPU/req",
                    flush=True,
                )
    table = Table(
        "GET /_ping through a listener with a policy (runner) and without (full)",
        ["listener", "conns", "req/s", "p50 µs", "proxy µs CPU/req", "vs full", "proxy CPU"],
    )
    chosen = {k: median_row(v) for k, v in runs.items()}
    for (name, conns), row in chosen.items():
        full = chosen[("full (no policy)", conns)]
        per = row.cpu.middle_s / max(1, row.load.count) * 1e6
        base = full.cpu.middle_s / max(1, full.load.count) * 1e6
        table.rows.append(
            [
                name,
                str(conns),
                fmt_rate(row.load.rps),
                f"{row.load.p50_us:.0f}",
                f"{per:.1f}",
                f"{per - base:+.1f} µs" if row is not full else "-",
                pct(row.cpu.middle_s, a.seconds),
            ]
        )
        b.raw[f"policy/{name}/{conns}"] = {**asdict(row.load), "cpu": asdict(row.cpu)}
        if row.load.errors:
            table.notes.append(f"{name} with {conns} conns: {row.load.errors} errors")
    table.notes.append(
        f"One proxy, two listeners, {a.rounds} interleaved rounds per row (median by req/s, "
        f"{a.seconds:g} s each): the default listener has no policy (no peer read, no "
        "judge); 'runner' judges every head. 'vs full' is the proxy's CPU per request "
        "above the default listener's in the same run."
    )
    b.tables.append(table)


MEASURE = Measure[Bench](
    "measure_policy",
    measure_policy,
    needs=frozenset({Need.PROXY}),
    effects=frozenset({Effect.RESTARTS_PROXY}),
)
