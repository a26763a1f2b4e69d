"""The proxy's peak memory over the run, and while ``docker save`` streamed."""

from __future__ import annotations

from bench import procs
from bench.harness import Bench
from bench.report import Table
from bench.schedule import Measure, Need


def measure_proxy_memory(b: Bench) -> None:
    """Peak RSS of the proxy over the whole run (VmHWM).

    Read after the rows that load the proxy in the run's own config and before any
    row restarts it (a new process starts a new peak): its declaration says so.
    """
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


MEASURE = Measure[Bench](
    "measure_proxy_memory",
    measure_proxy_memory,
    needs=frozenset({Need.PROXY, Need.PROXY_LIFETIME}),
    reads=("measure_save",),
)
