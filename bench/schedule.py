"""The order the measurements run in, from what each declares about its setup.

Rules: pure, no I/O; the harness runs what ``order`` returns.

Theory of operation: measurements share one daemon and one proxy, so some of
them spoil the setup of others. ``measure_proactive`` prunes every image, and a
row that builds an image once per run and reuses it must come before it; a row
that restarts the proxy resets the peak memory another row reads over the
proxy's whole life. Each measurement says, as data, what it needs (``Need``) and
what it does to the shared setup (``Effect``); ``SPOILS`` says which effect
breaks which need. ``order`` keeps the declaration order wherever no rule
applies (the report's tables follow it), and moves a measurement only as far as
a rule demands: every measurement that needs something runs before every other
one that spoils it, and after the ones whose figures it reads.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

B = TypeVar("B")


class Need(enum.Enum):
    """What a measurement relies on; the value is how ``--help`` names it."""

    PROXY = "the proxy"
    HAPROXY = "HAProxy (compared with when it is up)"
    REGISTRY = "docker-registry"
    PY_SPY = "py-spy"
    PERF = "perf"
    IMAGES_KEPT = "the images it builds once per run kept"
    PROXY_LIFETIME = "the proxy never restarted"


class Effect(enum.Enum):
    """What a measurement does to the setup the others share."""

    PRUNES_IMAGES = "prunes every image"
    RESTARTS_PROXY = "restarts the proxy"


SPOILS: dict[Effect, frozenset[Need]] = {
    Effect.PRUNES_IMAGES: frozenset({Need.IMAGES_KEPT}),
    Effect.RESTARTS_PROXY: frozenset({Need.PROXY_LIFETIME}),
}
"""Which needs each effect breaks for a measurement that runs after it."""


@dataclass(frozen=True)
class Measure(Generic[B]):
    """One row of the report: how to run it and what it declares about its setup."""

    name: str
    """The name ``--only`` selects it by."""
    run: Callable[[B], None]
    needs: frozenset[Need] = frozenset()
    effects: frozenset[Effect] = frozenset()
    reads: tuple[str, ...] = ()
    """Names of the measurements whose figures it shows, when they run too."""

    def spoils(self, other: Measure[B]) -> bool:
        """Whether running this one first breaks what ``other`` needs."""
        if other is self:
            return False
        return any(SPOILS[e] & other.needs for e in self.effects)

    def describe(self) -> str:
        """One line for ``--help``: the name and its declarations."""
        parts = []
        if self.needs:
            parts.append("needs " + ", ".join(n.value for n in Need if n in self.needs))
        parts += [e.value for e in Effect if e in self.effects]
        if self.reads:
            parts.append("shows figures of " + ", ".join(self.reads))
        return f"{self.name}: " + ("; ".join(parts) if parts else "no declarations")


class OrderError(ValueError):
    """The declarations contradict each other; the message names the measurements."""


def order(measures: Sequence[Measure[B]]) -> list[Measure[B]]:
    """The measurements in a run order that honours every declaration.

    A stable topological sort: at each step the first remaining measurement (in
    declaration order) with nothing left that must run before it. So the result is
    the declaration order whenever that order already honours the rules.
    """
    before: dict[str, set[str]] = {m.name: set() for m in measures}
    names = set(before)
    for m in measures:
        for other in measures:
            if other.spoils(m):
                before[other.name].add(m.name)  # m runs before the one that spoils it
        for read in m.reads:
            if read in names and read != m.name:
                before[m.name].add(read)
    placed: list[Measure[B]] = []
    left = list(measures)
    while left:
        ready = next((m for m in left if not before[m.name] & _names(left)), None)
        if ready is None:
            raise OrderError(
                "the declarations of " + ", ".join(m.name for m in left) + " contradict"
            )
        placed.append(ready)
        left.remove(ready)
    return placed


def _names(measures: Iterable[Measure[B]]) -> set[str]:
    return {m.name for m in measures}
