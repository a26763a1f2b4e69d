"""The ping row's pick of a round, without load."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from bench.measures.ping import PingRow, median_row


def row(rps: float) -> PingRow:
    return PingRow("proxy", cast(Any, SimpleNamespace(rps=rps)), cast(Any, None))


def test_the_median_round_is_kept_not_the_best() -> None:
    rows = [row(3), row(9), row(1), row(5), row(7)]
    assert median_row(rows).load.rps == 5
    assert median_row([row(2), row(1)]).load.rps == 1  # the lower of two middles
    assert median_row([row(4)]).load.rps == 4
