"""The audit log's writer: the data path's ``Auditor``, writing on a thread of its own.

Rules:
- The event loop never waits on the log. ``record`` judges the record
  (``auditlines.logged``), stamps the time and appends it to a bounded
  queue; a writer thread builds, encodes and writes the lines. A disk that
  stalls stalls the writer, not the proxy.
- Bounded. With ``on_full = "drop"``, a record that finds the queue full is
  dropped and counted (``dropped``, the ``audit_dropped_total`` metric); so
  is a batch the output refused (a full disk). With ``on_full = "refuse"``,
  ``admits`` says no to new exchanges while the queue is full, and nothing
  already admitted is dropped: the queue may pass its size by the exchanges
  in flight, which the connection limit bounds. A batch the output refused
  is tried again a second later, keeping the queue full, so the proxy stays
  closed until the log can be written.
- The file is created mode 0640 (set after the open, as the service's
  ``UMask=0077`` would narrow it), opened ``O_APPEND|O_NOFOLLOW``: a symlink
  at the path is refused, since whoever can plant one could send the log
  anywhere root can write. A file already there keeps its owner and mode.
- ``reopen`` (SIGHUP, logrotate's convention) opens the path anew and only
  then lets the old descriptor go: a path that cannot be opened leaves the
  lines going to the old file, and says so.
- ``"journal"`` sends each line to journald's native socket as one datagram,
  ``MESSAGE`` being the JSON line, with ``SYSLOG_IDENTIFIER`` and a few
  fields to filter on. Chosen over stdout: stdout is the proxy's own log
  stream (text or JSON, interleaved with it, and a file or a terminal when
  not under systemd); the native protocol keeps audit lines apart
  (``journalctl -t docker-heal-proxy-audit``) and filterable by field.
- ``close`` writes what is queued and stops the thread; it is the last
  thing the proxy does before exit, after its connections have ended.

Theory of operation: the queue is a ``deque`` (append and popleft are
atomic) and a ``threading.Event`` wakes the writer. The writer clears the
event before it drains the queue, so a record appended after the clear sets
it again and one appended before is drained: none waits for the next. The
loop and the writer count drops in counters of their own, summed when
read, so neither increment races the other.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..wire.access import AccessRecord
from .auditconfig import AuditSettings
from .auditlines import decision, encode, logged, route_of

log = logging.getLogger(__name__)

MODE = 0o640
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "docker-heal-proxy-audit"
RETRY = 1.0
"""Seconds before a refused batch is written again under ``on_full = "refuse"``."""
CLOSE_WAIT = 10.0
"""How long ``close`` waits for the writer to finish the queue."""


class AuditError(Exception):
    """Why the audit log cannot be opened, in one line."""


class Output(Protocol):
    """Where lines go; every call is the writer thread's but the constructor's."""

    def write(self, batch: list[tuple[float, AccessRecord]]) -> None:
        """Raises OSError when the lines could not be written."""

    def reopen(self) -> None:
        """Raises AuditError; the output stays usable as it was."""

    def close(self) -> None: ...


def open_file(path: str) -> int:
    """A descriptor for appending to ``path`` (see the rules); raises AuditError."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, MODE)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise AuditError(f"cannot open the audit log {path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(f"cannot open the audit log {path}: it is not a regular file")
        if created:
            os.fchmod(fd, MODE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileOutput:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_file(path)

    def write(self, batch: list[tuple[float, AccessRecord]]) -> None:
        data = memoryview(b"".join(encode(record, when) for when, record in batch))
        while data:
            data = data[os.write(self.fd, data) :]

    def reopen(self) -> None:
        fd = open_file(self.path)
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def journal_field(name: str, value: bytes) -> bytes:
    """One field of the native protocol; a value with a newline needs its length."""
    key = name.encode()
    if b"\n" not in value:
        return key + b"=" + value + b"\n"
    return key + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"


class JournalOutput:
    def __init__(self, address: str = JOURNAL_SOCKET) -> None:
        self.address = address
        try:
            if not stat.S_ISSOCK(os.stat(address).st_mode):
                raise AuditError(f"the journal's socket {address} is not a socket")
        except OSError as exc:
            raise AuditError(f"cannot reach the journal at {address}: {exc.strerror}") from None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def write(self, batch: list[tuple[float, AccessRecord]]) -> None:
        for when, record in batch:
            denied = decision(record) != "allow"
            message = b"".join(
                (
                    journal_field("MESSAGE", encode(record, when).rstrip(b"\n")),
                    journal_field("SYSLOG_IDENTIFIER", IDENTIFIER.encode()),
                    journal_field("PRIORITY", b"5" if denied else b"6"),
                    journal_field("AUDIT_LISTENER", record.listener.encode()),
                    journal_field("AUDIT_ROUTE", route_of(record).encode()),
                    journal_field("AUDIT_DECISION", decision(record).encode()),
                )
            )
            self.sock.sendto(message, self.address)

    def reopen(self) -> None:
        """Every datagram finds the socket by its path: nothing to reopen."""

    def close(self) -> None:
        self.sock.close()


def open_output(settings: AuditSettings) -> Output:
    return JournalOutput() if settings.journal else FileOutput(settings.path)


class AuditSink:
    """The ``Auditor`` of every listener: ``admits`` and ``record`` on the loop, the rest on
    the writer thread."""

    def __init__(
        self,
        output: Output,
        size: int,
        refuse_when_full: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.output = output
        self.size = size
        self.refuse_when_full = refuse_when_full
        self.clock = clock
        self._queue: deque[tuple[float, AccessRecord]] = deque()
        self._wake = threading.Event()
        self._reopen = False
        self._closing = threading.Event()
        self._failing = False
        self._dropped_on_loop = 0
        self._dropped_by_writer = 0
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, settings: AuditSettings) -> AuditSink:
        """The sink ``[audit]`` asks for; raises AuditError when the log cannot be opened."""
        return cls(open_output(settings), settings.buffer, settings.on_full == "refuse")

    @property
    def dropped(self) -> int:
        """Lines lost since start (``audit_dropped_total``)."""
        return self._dropped_on_loop + self._dropped_by_writer

    # -- the data path's Auditor ---------------------------------------------

    def admits(self) -> bool:
        return not self.refuse_when_full or len(self._queue) < self.size

    def record(self, record: AccessRecord) -> None:
        if not logged(record):
            return
        if not self.refuse_when_full and len(self._queue) >= self.size:
            self._dropped_on_loop += 1
            return
        self._queue.append((self.clock(), record))
        if not self._wake.is_set():
            self._wake.set()

    # -- the app's -------------------------------------------------------------

    def reopen(self) -> None:
        """Reopen the file at its path before the next line (SIGHUP)."""
        self._reopen = True
        self._wake.set()

    def close(self) -> None:
        """Write what is queued, then stop; blocks, so the app calls it off the loop.
        Once only: a second call returns at once."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        self._thread.join(CLOSE_WAIT)
        if self._thread.is_alive():
            log.error("audit log: %d lines not written at exit (stuck)", len(self._queue))
            return
        self.output.close()

    # -- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._reopen:
                self._reopen = False
                try:
                    self.output.reopen()
                except AuditError as exc:
                    log.error("%s; lines go on to the file open before", exc)
                else:
                    log.info("audit log reopened")
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if batch:
                self._write(batch)
            if self._closing.is_set() and not self._queue:
                return

    def _write(self, batch: list[tuple[float, AccessRecord]]) -> None:
        try:
            self.output.write(batch)
        except OSError as exc:
            if not self._failing:
                log.error("audit log: cannot write: %s", exc.strerror or exc)
                self._failing = True
            if self.refuse_when_full and not self._closing.is_set():
                self._queue.extendleft(reversed(batch))  # first out again, in order
                self._closing.wait(RETRY)  # the writer's own pace; the loop is not waiting
                self._wake.set()
            else:
                self._dropped_by_writer += len(batch)
            return
        if self._failing:
            log.warning("audit log: writing again")
            self._failing = False
