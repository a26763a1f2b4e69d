"""Reading the profilers' output: ``perf report`` lines and py-spy's raw stacks.

Rules: the parsing and grouping are pure and tested without a profiler; only
``perf_shares`` and ``perf_top`` run ``perf report``. Both profilers name where a
sample landed (a binary, a frame); a table of parts maps those names to the part
of the stack a reader cares about, first match wins and the rest is "other".
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

Parts = tuple[tuple[str, str], ...]
"""(substring of a binary or frame name, the part it belongs to), in match order."""

CPU_PARTS: Parts = (
    ("[kernel", "kernel: socket syscalls, wakeups, context switches"),
    ("libpython", "CPython: the proxy's Python code"),
    ("python3", "CPython: the proxy's Python code"),
    ("loop.cpython", "uvloop and libuv: the event loop in C"),
    ("haproxy", "HAProxy's own code"),
    ("libc", "libc: malloc and syscall entry"),
)
"""perf's binaries grouped into parts (first match wins; the rest is "other")."""

PROFILE_PARTS: Parts = (
    ("uvloop", "event loop (epoll, recv, dispatch)"),
    ("http1.py", "framing (http1)"),
    ("policy.py", "policy (judging a listener's requests)"),
    ("locate (proxy/wire/routes.py)", "policy (judging a listener's requests)"),
    ("routes.py", "metrics"),
    # The rest of the wire: connection.py and the objects split out of it
    # (local, daemon, flow, splice, hub, rules, states), one part as before.
    ("proxy/wire/", "data path: states and send syscalls (connection)"),
    ("metrics.py", "metrics"),
    ("prometheus_client", "metrics"),
)
"""Profile frames grouped by the part of the proxy they belong to (first match wins)."""

_PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+(.+?)\s*$")


def part_of(name: str, parts: Parts) -> str:
    return next((label for key, label in parts if key in name), "other")


def group(weights: Iterable[tuple[str, float]], parts: Parts) -> dict[str, float]:
    """Sum (name, weight) pairs by the part each name belongs to."""
    grouped: dict[str, float] = {}
    for name, weight in weights:
        part = part_of(name, parts)
        grouped[part] = grouped.get(part, 0.0) + weight
    return grouped


def parse_report(text: str) -> list[tuple[float, str]]:
    """``perf report --stdio -q`` lines as (share of all samples, name); other lines skipped."""
    return [
        (float(m[1]) / 100, m[2]) for line in text.splitlines() if (m := _PERF_LINE.match(line))
    ]


def top_symbols(rows: list[tuple[float, str]], n: int = 3) -> list[tuple[str, float]]:
    """The first ``n`` rows of a by-symbol report as (symbol, share), the kernel's ``[k]`` cut."""
    return [(name.removeprefix("[k] ").strip(), share) for share, name in rows[:n]]


def frame_label(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``; the event loop's own frame named for what it is."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if func == "Runner.run" and path.endswith("asyncio/runners.py"):
        return "uvloop's C loop (epoll, recv, callback dispatch)"
    return f"{func} ({path})"


def spy_self_counts(raw: str) -> tuple[int, dict[str, int]]:
    """py-spy's ``-f raw`` output (``frame;frame;leaf count`` lines): (samples, by leaf).

    The leaf is the frame a sample's time is charged to (self time), labelled by
    ``frame_label`` so the lines of one function add up.
    """
    self_n: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        leaf = frame_label(stack.split(";")[-1])
        self_n[leaf] = self_n.get(leaf, 0) + int(n)
    return total, self_n


def _perf_report(perf: str, data: Path, sort: str, *extra: str) -> list[tuple[float, str]]:
    out = subprocess.run(
        [perf, "report", "-i", str(data), "--stdio", "-q", "--sort", sort, *extra],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return parse_report(out)


def perf_shares(perf: str, data: Path, sort: str, parts: Parts) -> dict[str, float]:
    """Shares of all samples in ``data`` by part, the report sorted by ``sort``."""
    return group(((name, share) for share, name in _perf_report(perf, data, sort)), parts)


def perf_top(perf: str, data: Path, dso: str, n: int = 3) -> list[tuple[str, float]]:
    """The heaviest symbols of one binary, as shares of all samples."""
    return top_symbols(_perf_report(perf, data, "sym", "--dsos", dso), n)
