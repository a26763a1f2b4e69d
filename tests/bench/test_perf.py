"""Parsing the profilers' output, from text as perf and py-spy write it."""

from __future__ import annotations

import pytest

from bench.perf import (
    CPU_PARTS,
    PROFILE_PARTS,
    frame_label,
    group,
    parse_report,
    spy_self_counts,
    top_symbols,
)

REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
    41.20%  [kernel.kallsyms]
    30.05%  libpython3.11.so.1.0
    12.50%  loop.cpython-311-x86_64-linux-gnu.so
     6.25%  libc.so.6
     0.00%  ld-linux-x86-64.so.2
     5.00%  [unknown]

"""


def test_a_report_is_read_as_shares_of_all_samples() -> None:
    rows = parse_report(REPORT)
    assert rows[0][1] == "[kernel.kallsyms]"
    assert rows[0][0] == pytest.approx(0.412)
    assert [name for _, name in rows][-1] == "[unknown]"
    assert len(rows) == 6


def test_binaries_group_into_parts_first_match_wins_rest_is_other() -> None:
    shares = group(((name, share) for share, name in parse_report(REPORT)), CPU_PARTS)
    assert shares == {
        "kernel: socket syscalls, wakeups, context switches": pytest.approx(0.412),
        "CPython: the proxy's Python code": pytest.approx(0.3005),
        "uvloop and libuv: the event loop in C": pytest.approx(0.125),
        "libc: malloc and syscall entry": pytest.approx(0.0625),
        "other": pytest.approx(0.05),
    }


def test_the_kernels_top_symbols_lose_their_marker() -> None:
    rows = parse_report("  20.00%  [k] tcp_sendmsg\n  10.00%  [k] __schedule\n   5.00%  [k] x\n")
    assert top_symbols(rows, 2) == [("tcp_sendmsg", 0.2), ("__schedule", 0.1)]


def test_frames_are_named_by_function_and_file() -> None:
    assert frame_label("data_received (proxy/wire/connection.py:120)") == (
        "data_received (proxy/wire/connection.py)"
    )
    assert frame_label("Runner.run (/usr/lib/python3.11/asyncio/runners.py:118)") == (
        "uvloop's C loop (epoll, recv, callback dispatch)"
    )


def test_py_spy_stacks_charge_their_leaf() -> None:
    raw = (
        "<module> (m.py:1);run (a.py:2);data_received (proxy/wire/connection.py:10) 7\n"
        "<module> (m.py:1);data_received (proxy/wire/connection.py:12) 3\n"
        "<module> (m.py:1);feed (proxy/wire/http1.py:5) 5\n"
        "<module> (m.py:1);flush (proxy/wire/flow.py:7) 2\n"
        "a line py-spy did not write\n"
    )
    total, self_n = spy_self_counts(raw)
    assert total == 17
    assert self_n == {
        "data_received (proxy/wire/connection.py)": 10,
        "feed (proxy/wire/http1.py)": 5,
        "flush (proxy/wire/flow.py)": 2,
    }
    assert group(self_n.items(), PROFILE_PARTS) == {
        "data path: states and send syscalls (connection)": 12,
        "framing (http1)": 5,
    }
