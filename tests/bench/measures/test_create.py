"""The create row's counting and percentiles, from text and numbers alone."""

from __future__ import annotations

import pytest

from bench.measures.create import quantile_ms, routes_per_pair

CID = "0123456789abcdef" * 4

LOG = f"""\
time="t" level=debug msg="Calling HEAD /_ping"
time="t" level=debug msg="Calling POST /v1.41/containers/create"
time="t" level=debug msg="Calling DELETE /v1.41/containers/{CID}"
time="t" level=debug msg="Calling POST /v1.41/containers/create"
time="t" level=debug msg="Calling DELETE /v1.41/containers/{CID[::-1]}"
time="t" level=info msg="something else"
"""


def test_routes_are_counted_per_pair_without_version_or_ids() -> None:
    assert routes_per_pair(LOG, 2) == {
        "HEAD /_ping": 0.5,
        "POST /containers/create": 1.0,
        "DELETE /containers/{id}": 1.0,
    }


def test_quantiles_pick_a_measured_value_in_ms() -> None:
    ns = [5_000_000, 1_000_000, 3_000_000, 2_000_000, 4_000_000]
    assert quantile_ms(ns, 0.5) == 3.0
    assert quantile_ms(ns, 0.99) == 5.0
    assert quantile_ms(ns, 0.0) == pytest.approx(1.0)
