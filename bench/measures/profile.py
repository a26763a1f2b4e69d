"""Where the proxy's Python time goes under ping load, sampled by py-spy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench import loadgen
from bench.harness import Bench
from bench.perf import PROFILE_PARTS, group, spy_self_counts
from bench.report import Table, fmt_rate
from bench.schedule import Measure, Need


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
    total, self_n = spy_self_counts(raw.read_text() if raw.exists() else "")
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
    parts = group(self_n.items(), PROFILE_PARTS)
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


MEASURE = Measure[Bench](
    "measure_proxy_profile",
    measure_proxy_profile,
    needs=frozenset({Need.PROXY, Need.PY_SPY}),
)
