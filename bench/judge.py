"""What a policy's decision costs, in process: microseconds per request judged.

Usage (no root, no daemon)::

    python bench/judge.py [--requests 200000] [--repeats 5]

Why: a listener with a policy judges every request head before a byte of it
reaches the daemon, so the decision sits on the hot path beside the framing
that ``bench/exchange.py`` times. A listener without one never calls it: its
cost there is nothing, and the "loop alone" row is what the timing loop
itself costs, to subtract. Each row judges pre-made targets, best of
``--repeats`` runs:

- ``GET /_ping`` under ``runner``: one target again and again, so the route
  comes from ``locate``'s cache (a client's pings, a runner's waits);
- an inspect under ``readonly`` with a new container id each time: more ids
  than the cache holds, so every call routes the path afresh;
- an archive read refused under ``runner``, new ids: the refusal's text too;
- ``POST /build`` with a tag under a policy allowing builds: the query check.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/judge.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.wire.policy import Policy, policies_from_config

DISTINCT = 20_000
"""Ids per fresh-path row: several times what ``locate`` caches."""
TAR = [b"application/x-tar"]


def rows() -> dict[str, tuple[Callable[..., object], list[tuple[object, ...]]]]:
    """Each row's call and the argument tuples it cycles through."""
    policies = policies_from_config({})
    builder = Policy("builder", allow=("POST /build",))
    ids = [f"{n:064x}" for n in range(DISTINCT)]
    return {
        "loop alone (no policy: no call)": (lambda *_: None, [("GET", "/_ping")]),
        "GET /_ping, runner (cached route)": (policies["runner"].judge, [("GET", "/v1.41/_ping")]),
        "GET /containers/ID/json, readonly (new ids)": (
            policies["readonly"].judge,
            [("GET", f"/v1.41/containers/{i}/json") for i in ids],
        ),
        "GET /containers/ID/archive, runner, refused (new ids)": (
            policies["runner"].judge,
            [("GET", f"/v1.41/containers/{i}/archive?path=%2Fetc") for i in ids],
        ),
        "POST /build?t=..., builder (new tags)": (
            builder.judge,
            [("POST", f"/v1.41/build?t=app%3A{i[:12]}&networkmode=default", TAR) for i in ids],
        ),
    }


def per_call(
    call: Callable[..., object], args: list[tuple[object, ...]], n: int, repeats: int
) -> float:
    """The best of ``repeats`` runs of ``n`` calls, in microseconds per call."""
    cycle = (args * (n // len(args) + 1))[:n]
    for a in cycle[:1000]:
        call(*a)
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for a in cycle:
            call(*a)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name, (call, arguments) in rows().items():
        cost = per_call(call, arguments, args.requests, args.repeats)
        print(f"{cost:6.2f} µs per request  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
