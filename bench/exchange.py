"""The data path's own cost of one keep-alive ``GET /_ping``, in process, without sockets.

Usage (no root, no daemon)::

    python bench/exchange.py [--exchanges 200000] [--repeats 5]

Why: ``bench/run.py`` measures the proxy as users meet it, but on a two-core
VM its figures move by tens of percent between runs, and most of the proxy's
CPU per request is the kernel's (see "Where the microseconds go" in
``docs/benchmarks.md``). This drives ``Connection`` with the real metrics
and an interceptor that claims nothing, through transports that only count
bytes, so what it times is Python: the framing, the tables, the counting.
Its figure is stable to a few percent and changes with the code alone, which
makes it the one to compare before and after a change to the hot path. It
is not the proxy's CPU per request: on the real path the same code runs with
cold caches, several times slower (compare the CPython row of that table).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/exchange.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.service.metrics import Metrics
from proxy.wire.connection import Connection
from proxy.wire.daemon import Upstream
from proxy.wire.http1 import RequestHead
from proxy.wire.hub import Hub
from proxy.wire.local import Handler

REQUEST = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n"
    b"Cache-Control: no-cache, no-store, must-revalidate\r\nDocker-Experimental: false\r\n"
    b"Ostype: linux\r\nPragma: no-cache\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n"
    b"Date: Mon, 30 Nov 2026 03:00:00 GMT\r\nContent-Length: 2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nOK"
)
"""dockerd 20.10's answer to ``GET /_ping``, as it writes it."""


class CountingTransport:
    """Takes what the data path writes and only counts it."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class ClaimsNothing:
    """The interceptor's checks for a GET, which it never claims."""

    def claim(self, head: RequestHead) -> Handler | None:
        return None


async def per_exchange(exchanges: int, repeats: int) -> float:
    """The best of ``repeats`` runs, in microseconds per request and answer."""
    conn = Connection(Hub("/nowhere", ClaimsNothing(), Metrics()))
    client, daemon = CountingTransport(), CountingTransport()
    conn.connection_made(client)  # type: ignore[arg-type]
    upstream = Upstream(conn)
    upstream.connection_made(daemon)  # type: ignore[arg-type]
    conn.up = upstream  # as if the daemon connection were open already
    request, answer = conn.data_received, upstream.data_received
    for _ in range(1000):  # the first head is parsed and remembered
        request(REQUEST)
        answer(ANSWER)
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for _ in range(exchanges):
            request(REQUEST)
            answer(ANSWER)
        best = min(best, (time.perf_counter() - started) / exchanges * 1e6)
    if client.written != (1000 + exchanges * repeats) * len(ANSWER):
        raise RuntimeError("an answer did not reach the client whole")
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cost = asyncio.run(per_exchange(args.exchanges, args.repeats))
    print(f"{cost:.2f} µs per GET /_ping exchange (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
