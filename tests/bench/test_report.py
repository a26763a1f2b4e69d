"""The page docs/benchmarks.md is, from tables and bars, without a run."""

from __future__ import annotations

import datetime as dt

from bench.report import Bar, Table, render, runs_table


def test_a_table_is_markdown_with_its_notes_under_it() -> None:
    t = Table("T", ["a", "b"], [["1", "2"]], ["note"])
    assert t.markdown() == "## T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- note\n"


def test_a_missed_aim_is_not_a_failure() -> None:
    assert Bar("x", "1", "2", False).verdict == "FAIL"
    assert Bar("x", "1", "2", False, aim=True).verdict == "not yet"
    assert Bar("x", "1", "2", True, aim=True).verdict == "PASS"
    assert Bar("x", "-", "2", None).verdict == "not measured"


def test_the_page_has_the_header_bars_tables_and_what_was_not_measured_in_order() -> None:
    page = render(
        {"nproc": "2"},
        [Bar("req", "1.0x", "≥ 1x", True)],
        [Table("Ping", ["a"], [["1"]])],
        {"socat": "not installed\nmore"},
        dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
        12.4,
    )
    lines = page.splitlines()
    assert lines[0] == "# Benchmarks"
    assert "Run: 2026-01-02 03:04 UTC, took 12 s." in lines
    assert "| nproc | 2 |" in lines
    assert "| req | 1.0x | ≥ 1x | **PASS** |" in lines
    assert "- socat: not installed" in lines
    order = [lines.index(x) for x in ("## Bars", "## Ping", "## Not measured")]
    assert order == sorted(order)
    assert lines.index("## Setup and how to rerun") > order[-1]


def test_a_runs_table_gives_each_target_its_median_against_direct() -> None:
    table, chosen = runs_table("t", {"direct": [2.0, 1.0, 3.0], "proxy": [4.0, 2.2, 2.4]})
    assert chosen == {"direct": 2.0, "proxy": 2.4}
    assert table.rows == [
        ["direct", "2.00", "2.00, 1.00, 3.00", "1.00x"],
        ["proxy", "2.40", "4.00, 2.20, 2.40", "1.20x"],
    ]
