"""Spool files: where a build body waits on disk while the proxy reads its Dockerfile.

Rules:
- One folder, ``<state_dir>/spool``, mode 0700: a build context can hold
  anything its owner could read, so nobody else may list or open it. It is
  reached as every folder of ``state_dir`` is (``statefiles``): through
  descriptors, never through a link.
- Each spool file is mode 0600 and has no name from the moment it is open
  (``O_TMPFILE`` where the filesystem has it, else created ``O_EXCL`` under
  a random name and unlinked at once), so no outcome of a build, a crash
  included, can leave one behind for longer than the process lives.
- A file left over anyway (a SIGKILL between create and unlink, on a
  filesystem without ``O_TMPFILE``) is swept when the proxy starts, by
  unlinking names in the folder's descriptor: an unlink never follows a link.
- All builds together spool at most ``[heal] max_build_spool_total`` bytes
  (``Budget``): each build reserves what it writes, and gives it back when
  its spool closes. A build the budget cannot take goes on unhealed, so
  concurrent large builds cannot fill the disk ``state_dir`` is on.
- Reading and writing data run in worker threads, one piece of work at a
  time, in a small pool of their own (``WORKERS``): many builds at once
  queue there, and never starve the default executor that heals and log
  writers use. Opening and closing are a few metadata syscalls and run on the
  loop, so that a cancelled build can neither lose an open descriptor nor
  close one a worker is still writing to (its number could be reused by
  then): a close waits for the work in flight.
- Writes are unbuffered: a full disk shows at the write that hit it, not at
  a later flush or at close. A write may have stored part of its piece
  then, so a replay can stop at an offset the caller knows to be whole.

Theory of operation: ``Spool`` wraps one file opened by ``TemporaryFile``
(``O_TMPFILE`` or create-and-unlink). ``run`` hands work on the file to a
spool thread and remembers it as ``_busy``; ``close`` closes at once when
nothing is busy, else from the busy work's done callback. ``replay`` reads
back with ``pread`` at its own offset, so appends and reads never share a
file position. ``sweep`` removes named leftovers at start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from ..core.statefiles import PRIVATE_FILE, open_folder, open_in

log = logging.getLogger(__name__)

PREFIX = "build-"
READ_PIECE = 1 << 20
"""Bytes read back from a spool file at once, when it is forwarded."""

WORKERS = 4
"""Threads for spool work, shared by every build."""

T = TypeVar("T")

_EXECUTOR = ThreadPoolExecutor(WORKERS, thread_name_prefix="spool")


FOLDER = "spool"


def _nameless(folder: int, where: Path) -> int:
    """A 0600 file in ``folder`` that has no name: O_TMPFILE, else made and unlinked."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(".", flags | os.O_TMPFILE, PRIVATE_FILE, dir_fd=folder)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    name = PREFIX + secrets.token_hex(8)
    fd = open_in(folder, name, flags | os.O_CREAT | os.O_EXCL, where)
    os.unlink(name, dir_fd=folder)
    return fd


def sweep(state_dir: Path) -> int:
    """Remove the spool files an earlier, killed process left; how many there were."""
    removed = 0
    try:
        folder = open_folder(state_dir, FOLDER)
        try:
            for name in os.listdir(folder):
                if name.startswith(PREFIX):
                    os.unlink(name, dir_fd=folder)
                    removed += 1
        finally:
            os.close(folder)
    except OSError as exc:  # not fatal: builds then go unhealed, each with a log line
        log.warning("cannot sweep the build spool folder: %s", exc)
    if removed:
        log.info("removed %d build spool files left by an earlier run", removed)
    return removed


class Budget:
    """Bytes spooled by all builds at once, against ``[heal] max_build_spool_total``."""

    def __init__(self, total: Callable[[], int]) -> None:
        self._total = total
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the total."""
        if self.used + size > self._total():
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


def _read_at(file: IO[bytes], offset: int) -> bytes:
    return os.pread(file.fileno(), READ_PIECE, offset)


def write_all(file: IO[bytes], data: bytes) -> None:
    """``write`` on an unbuffered file may take less than all of ``data``."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) or 0 :]


class Spool:
    """One nameless spool file and the worker-thread work done on it."""

    def __init__(self, state_dir: Path, budget: Budget | None = None) -> None:
        folder = open_folder(state_dir, FOLDER)
        try:
            fd = _nameless(folder, state_dir / FOLDER)
        finally:
            os.close(folder)
        self.file: IO[bytes] = open(fd, "r+b", buffering=0)  # noqa: SIM115 (closed by close)
        self._busy: asyncio.Future[Any] | None = None
        self._budget = budget
        self.reserved = 0
        """Bytes of ``budget`` this spool holds, given back when it closes."""

    def reserve(self, size: int) -> bool:
        """Take ``size`` more bytes of the budget before writing them; False if over it."""
        if self._budget is None:
            return True
        if not self._budget.take(size):
            return False
        self.reserved += size
        return True

    async def run(self, work: Callable[[IO[bytes]], T]) -> T:
        """``work(file)`` in a worker thread; it finishes even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        busy = self._busy = loop.run_in_executor(_EXECUTOR, work, self.file)
        return await asyncio.shield(busy)

    async def replay(self, end: int | None = None) -> AsyncIterator[bytes]:
        """The spool's bytes from the start to ``end``, one bounded piece at a time."""
        offset = 0
        while end is None or offset < end:
            piece = await self.run(partial(_read_at, offset=offset))
            if end is not None:
                piece = piece[: end - offset]
            if not piece:
                return
            offset += len(piece)
            yield piece

    def close(self) -> None:
        if self._budget is not None:
            self._budget.give(self.reserved)  # the file's blocks go with its last descriptor
            self.reserved = 0
        busy = self._busy
        if busy is None or busy.done():
            self.file.close()
            return

        def then_close(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: its caller is gone, the build with it
            self.file.close()

        busy.add_done_callback(then_close)

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
