"""The report's rows, one module each, in the order their tables appear.

``MEASUREMENTS`` is the declaration order; ``schedule.order`` runs them in it
except where a row's declared needs and effects demand otherwise (a row that
prunes every image runs after every row that needs the images it built).
"""

from __future__ import annotations

from bench.harness import Bench
from bench.measures import (
    build,
    buildkit,
    cache,
    cpu_split,
    create,
    createpolicy,
    heal,
    memory,
    ping,
    policy,
    proactive,
    profile,
    save,
    stale,
)
from bench.schedule import Measure

MEASUREMENTS: tuple[Measure[Bench], ...] = (
    ping.MEASURE,
    save.MEASURE,
    memory.MEASURE,
    profile.MEASURE,
    cpu_split.MEASURE,
    policy.MEASURE,
    create.MEASURE,
    createpolicy.MEASURE,
    heal.MEASURE,
    cache.MEASURE,
    build.MEASURE,
    buildkit.MEASURE,
    stale.MEASURE,
    proactive.MEASURE,
)
"""Append new rows here; where one must run relative to others, say so in its declaration."""
