"""The run order, from the declarations alone: no daemon, no processes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from bench.measures import MEASUREMENTS
from bench.schedule import Effect, Measure, Need, OrderError, order


def noop(_: object) -> None:
    raise AssertionError("ordering must not run a measurement")


def m(
    name: str,
    needs: set[Need] | None = None,
    effects: set[Effect] | None = None,
    reads: tuple[str, ...] = (),
) -> Measure[object]:
    return Measure(name, noop, frozenset(needs or ()), frozenset(effects or ()), reads)


PRUNE = m("prune", {Need.PROXY}, {Effect.PRUNES_IMAGES})
USES_A = m("uses_a", {Need.IMAGES_KEPT})
USES_B = m("uses_b", {Need.IMAGES_KEPT, Need.PROXY}, {Effect.RESTARTS_PROXY})
PLAIN = m("plain")


def names(measures: Sequence[Measure[Any]]) -> list[str]:
    return [x.name for x in measures]


def test_an_order_that_honours_the_rules_is_kept() -> None:
    assert names(order([PLAIN, USES_A, USES_B, PRUNE])) == ["plain", "uses_a", "uses_b", "prune"]


@pytest.mark.parametrize("declared", list(itertools.permutations([PRUNE, USES_A, USES_B, PLAIN])))
def test_a_prune_runs_after_every_measure_that_needs_images(
    declared: tuple[Measure[object], ...],
) -> None:
    ran = names(order(list(declared)))
    assert ran.index("prune") > ran.index("uses_a")
    assert ran.index("prune") > ran.index("uses_b")
    assert sorted(ran) == sorted(x.name for x in declared)


def test_a_prune_moves_only_as_far_as_it_must() -> None:
    """What needs nothing keeps its declared place relative to the prune."""
    assert names(order([PRUNE, PLAIN, USES_A])) == ["plain", "uses_a", "prune"]
    assert names(order([PRUNE, USES_A, PLAIN])) == ["uses_a", "prune", "plain"]


def test_a_restart_runs_after_what_reads_the_proxys_whole_life() -> None:
    lifetime = m("peak", {Need.PROXY_LIFETIME})
    assert names(order([USES_B, lifetime])) == ["peak", "uses_b"]


def test_a_measure_runs_after_the_ones_whose_figures_it_shows() -> None:
    shows = m("shows", reads=("source", "not_selected"))
    source = m("source")
    assert names(order([shows, PLAIN, source])) == ["plain", "source", "shows"]


def test_a_measure_may_spoil_what_it_needs_itself() -> None:
    both = m("both", {Need.IMAGES_KEPT}, {Effect.PRUNES_IMAGES})
    assert names(order([both])) == ["both"]


def test_contradicting_declarations_are_named() -> None:
    a = m("a", {Need.IMAGES_KEPT}, {Effect.PRUNES_IMAGES})
    b = m("b", {Need.IMAGES_KEPT}, {Effect.PRUNES_IMAGES})
    with pytest.raises(OrderError, match="a, b"):
        order([a, b])


def test_the_benchmarks_own_rows_run_as_declared() -> None:
    """The report's tables follow the declaration; proactive, which prunes, is last."""
    assert order(MEASUREMENTS) == list(MEASUREMENTS)
    assert order(MEASUREMENTS)[-1].name == "measure_proactive"
    reversed_run = names(order(list(reversed(MEASUREMENTS))))
    for needs_images in ("measure_create", "measure_heal", "measure_build", "measure_stale"):
        assert reversed_run.index(needs_images) < reversed_run.index("measure_proactive")
    assert reversed_run.index("measure_save") < reversed_run.index("measure_proxy_memory")
    for restarts in ("measure_create", "measure_heal", "measure_cache", "measure_build"):
        assert reversed_run.index("measure_proxy_memory") < reversed_run.index(restarts)


def test_describe_says_what_a_measure_declares() -> None:
    assert PLAIN.describe() == "plain: no declarations"
    assert USES_B.describe() == (
        "uses_b: needs the proxy, the images it builds once per run kept; restarts the proxy"
    )
