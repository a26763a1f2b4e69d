"""A lean keep-alive HTTP/1.1 load generator over raw Unix sockets.

Why not aiohttp or a thread pool: on a 2-core machine the client competes with the
daemon and the proxy for CPU, so every microsecond the client spends per request is
stolen from what we are measuring. A blocking socket, one ``sendall`` and usually one
``recv`` per request, and a hand-rolled Content-Length parse keep the client's cost
to a few microseconds. Several connections share one process by keeping one request
in flight on each and reading them in turn; that avoids one Python process (and its
context switches) per connection while still offering the server N concurrent
requests.

Workers are forked processes (``multiprocessing``) so the GIL never serialises
connection groups. They agree on the measurement window through absolute
``time.perf_counter_ns`` deadlines (CLOCK_MONOTONIC, shared across processes): the
parent picks the times, every worker warms up until ``t_start`` and counts only the
requests that complete inside ``[t_start, t_end)``.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import socket
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
_CL = b"\r\ncontent-length:"
_TE_CHUNKED = b"\r\ntransfer-encoding: chunked"
CLOSE_GRACE_NS = 300_000_000


class ProtocolError(Exception):
    """The peer sent something this minimal client does not understand."""


class Conn:
    """One keep-alive connection with a receive buffer that survives across responses."""

    __slots__ = ("buf", "path", "sock")

    def __init__(self, path: str) -> None:
        self.path = path
        self.buf = b""
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        # A full listen backlog makes AF_UNIX connect() fail with EAGAIN at once
        # rather than wait (socat's default backlog is 5); retry briefly.
        for attempt in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except BlockingIOError:
                s.close()
                time.sleep(0.005 * (1 + attempt % 10))
                continue
            s.settimeout(30.0)
            return s
        raise ProtocolError(f"listen backlog of {self.path} stayed full")

    def reconnect(self) -> None:
        """Start over after the server closed the connection (counted as an error)."""
        self.sock.close()
        self.buf = b""
        self.sock = self._connect()

    def close(self) -> None:
        self.sock.close()

    def read_response(self) -> tuple[int, bool]:
        """Read exactly one response; return (status, server_wants_close).

        The body is discarded. Content-Length is the fast path (Docker and the
        proxies answer ``/_ping`` that way); chunked is handled so a proxy that
        re-frames the body is measured rather than misparsed.
        """
        buf = self.buf
        recv = self.sock.recv
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = recv(65536)
            if not chunk:
                raise ProtocolError("connection closed before headers")
            buf += chunk
        head = buf[:end].lower()
        try:
            status = int(head[9:12])
        except ValueError as e:
            raise ProtocolError(f"bad status line {buf[:40]!r}") from e
        close = b"\r\nconnection: close" in head
        body_start = end + 4
        i = head.find(_CL)
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + len(_CL) : j if j >= 0 else len(head)])
            need = body_start + length
            while len(buf) < need:
                chunk = recv(65536)
                if not chunk:
                    raise ProtocolError("connection closed inside body")
                buf += chunk
            self.buf = buf[need:]
            return status, close
        if _TE_CHUNKED in head:
            self.buf = self._read_chunked(buf[body_start:])
            return status, close
        if status in (204, 304) or 100 <= status < 200:
            self.buf = buf[body_start:]
            return status, close
        raise ProtocolError("response without Content-Length or chunked framing")

    def _read_chunked(self, buf: bytes, body: bytearray | None = None) -> bytes:
        """Consume a chunked body (into ``body`` if given); return the bytes after it."""
        recv = self.sock.recv
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                chunk = recv(65536)
                if not chunk:
                    raise ProtocolError("connection closed inside chunked body")
                buf += chunk
            size = int(buf[:eol].split(b";", 1)[0], 16)
            need = eol + 2 + size + 2
            while len(buf) < need:
                chunk = recv(65536)
                if not chunk:
                    raise ProtocolError("connection closed inside chunk")
                buf += chunk
            if body is not None:
                body += buf[eol + 2 : eol + 2 + size]
            buf = buf[need:]
            if size == 0:
                # No trailers expected from Docker; the final CRLF was consumed above.
                return buf


class ApiConn(Conn):
    """A keep-alive connection for API calls whose answer matters (a container id).

    ``Conn.read_response`` throws bodies away to stay cheap under ping load; a
    create/remove loop needs the body of the create, and at tens of milliseconds
    per call the extra copy is noise. Kept next to ``Conn`` so both latency rows
    share one framing parser and one way of connecting.
    """

    __slots__ = ()

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request and return (status, body); reconnects if the server closes."""
        head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        status, payload, close = self._read_with_body()
        if close:
            self.reconnect()
        return status, payload

    def _read_with_body(self) -> tuple[int, bytes, bool]:
        buf = self.buf
        recv = self.sock.recv
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = recv(65536)
            if not chunk:
                raise ProtocolError("connection closed before headers")
            buf += chunk
        head = buf[:end].lower()
        status = int(head[9:12])
        close = b"\r\nconnection: close" in head
        rest = buf[end + 4 :]
        i = head.find(_CL)
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + len(_CL) : j if j >= 0 else len(head)])
            while len(rest) < length:
                chunk = recv(65536)
                if not chunk:
                    raise ProtocolError("connection closed inside body")
                rest += chunk
            self.buf = rest[length:]
            return status, rest[:length], close
        if _TE_CHUNKED in head:
            body = bytearray()
            self.buf = self._read_chunked(rest, body)
            return status, bytes(body), close
        self.buf = rest
        return status, b"", close


def request_once(path: str, request: bytes = PING, timeout: float = 2.0) -> int:
    """One request on a fresh connection; used for readiness polling."""
    c = Conn(path)
    try:
        c.sock.settimeout(timeout)
        c.sock.sendall(request)
        status, _ = c.read_response()
        return status
    finally:
        c.close()


@dataclass
class WorkerResult:
    """What one connection group measured inside the window."""

    count: int = 0
    errors: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))
    cpu_s: float = 0.0
    """User+system CPU this worker burnt inside the window: the client's share."""
    error_text: str = ""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker(
    path: str,
    nconns: int,
    t_go: int,
    t_start: int,
    t_end: int,
    max_requests: int,
    request: bytes,
    out: mp.Queue,
) -> None:
    """Keep one request in flight on each of ``nconns`` connections until ``t_end``."""
    res = WorkerResult()
    conns: list[Conn] = []
    try:
        conns = [Conn(path) for _ in range(nconns)]
        while time.perf_counter_ns() < t_go:
            time.sleep(0.001)
        clock = time.perf_counter_ns
        sent_at = [0] * nconns
        for k, c in enumerate(conns):
            sent_at[k] = clock()
            c.sock.sendall(request)
        lat = res.latencies_ns
        counted = 0
        cpu0: float | None = None
        running = True
        while running:
            for k, c in enumerate(conns):
                try:
                    status, close = c.read_response()
                except (ProtocolError, OSError):
                    res.errors += 1
                    c.reconnect()
                    status, close = 0, False
                now = clock()
                if now >= t_start:
                    if cpu0 is None:
                        cpu0 = _cpu()
                    if now >= t_end or counted >= max_requests:
                        running = False
                        break
                    if status == 200:
                        counted += 1
                        lat.append(now - sent_at[k])
                    elif status:
                        res.errors += 1
                if close:
                    c.reconnect()
                sent_at[k] = clock()
                c.sock.sendall(request)
        res.count = counted
        res.cpu_s = _cpu() - cpu0 if cpu0 is not None else 0.0
        # Hold the connections open past the window: socat forks one child per
        # connection and a child that exits before the parent's closing CPU sample
        # would take its CPU time out of the middle's figure.
        while clock() < t_end + CLOSE_GRACE_NS:
            time.sleep(0.01)
    except Exception as e:  # reported to the parent rather than lost in a child
        res.error_text = f"{type(e).__name__}: {e}"
    finally:
        for c in conns:
            c.close()
    out.put(res)


@dataclass
class LoadResult:
    """A row's aggregate: throughput, latency distribution and the client's CPU."""

    conns: int
    procs: int
    seconds: float
    count: int
    errors: int
    rps: float
    p50_us: float
    p99_us: float
    client_cpu_s: float


def _percentile(sorted_vals: array, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, round(q * (len(sorted_vals) - 1)))
    return sorted_vals[idx] / 1000.0


def split(conns: int, max_procs: int) -> list[int]:
    """Spread ``conns`` connections over at most ``max_procs`` processes, evenly."""
    procs = max(1, min(conns, max_procs))
    base, extra = divmod(conns, procs)
    return [base + (1 if i < extra else 0) for i in range(procs)]


def run_load(
    path: str,
    conns: int,
    seconds: float,
    warmup: float,
    max_procs: int,
    max_requests: int = 5_000_000,
    request: bytes = PING,
    on_window: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Drive ``conns`` keep-alive connections at ``path`` for ``warmup + seconds``.

    ``on_window``, if given, is called as ``on_window(t_start_ns, t_end_ns)`` in the
    parent while the workers run, so the caller can sample the server's CPU over
    exactly the measured window.
    """
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    groups = split(conns, max_procs)
    now = time.perf_counter_ns()
    t_go = now + 300_000_000  # time to fork and connect before anyone sends
    t_start = t_go + int(warmup * 1e9)
    t_end = t_start + int(seconds * 1e9)
    per_worker_max = max(1, max_requests // len(groups))
    procs = [
        ctx.Process(
            target=_worker,
            args=(path, n, t_go, t_start, t_end, per_worker_max, request, q),
            daemon=True,
        )
        for n in groups
    ]
    for p in procs:
        p.start()
    if on_window is not None:
        on_window(t_start, t_end)
    results: list[WorkerResult] = [q.get(timeout=seconds + warmup + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    failures = [r.error_text for r in results if r.error_text]
    if failures:
        raise RuntimeError(f"load worker failed against {path}: {failures[0]}")
    lat = array("q")
    for r in results:
        lat.extend(r.latencies_ns)
    lat = array("q", sorted(lat))
    count = sum(r.count for r in results)
    return LoadResult(
        conns=conns,
        procs=len(groups),
        seconds=seconds,
        count=count,
        errors=sum(r.errors for r in results),
        rps=count / seconds,
        p50_us=_percentile(lat, 0.50),
        p99_us=_percentile(lat, 0.99),
        client_cpu_s=sum(r.cpu_s for r in results),
    )
