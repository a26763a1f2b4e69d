"""Files a heal leaves in ``state_dir``: private, and written off the event loop.

Rules:
- Private whatever the umask. A recipe's output can hold secrets (that is why
  ``/_heal/status`` is served only on the proxy's own socket), and ``serve``
  started by hand runs with the shell's umask, usually 022. So the logs and
  locks folders are made 0700 and their files 0600 explicitly, and a folder an
  earlier run left wider is narrowed.
- A transcript is never written on the event loop's thread. A noisy build
  prints thousands of lines a second; written one by one on the loop, a slow
  disk would stall every client connection. Lines are queued and written in
  batches by one worker thread at a time, so they stay in order.
- A write that fails (a full disk) costs the transcript, not the heal: it is
  logged once, and later lines are dropped rather than queued without end.
- A disk that is behind (hung, or slower than the recipe is noisy) costs
  lines, not memory: at most ``QUEUE_CAP`` characters wait; past that lines
  are dropped and one marker line says how many, where they were.
- A disk that never returns does not hold up the heal or the exit: ``close``
  waits ``CLOSE_WAIT``, and the writes run on daemon threads, which neither
  the loop's shutdown nor the interpreter's exit waits for.
- A state file (the remembered tags, the image records of stale mode) is
  replaced whole, never left half-written where the next start reads: the
  text goes to a temporary file of its own (``mkstemp``, 0600), is flushed
  to the disk, and only then renamed over the old one; a save that fails
  removes its temporary file. Saves run one at a time, in the order they
  began: a save cancelled by its caller goes on in its thread, and a second
  one must neither race it nor be overwritten by it. A state file that is
  missing or unreadable reads as empty, with a warning: losing it costs a
  rebuild, never a start. These are blocking calls, meant for a thread.

Theory of operation: ``LogFile.write`` appends to a list and wakes a drain
task; the drain joins what has queued and hands it to a worker thread, so
while one batch is on disk the next one gathers. Lines dropped meanwhile are
counted, and the count goes out as a marker at the end of the next batch,
which is where the gap is. ``close`` lets the drain empty the queue, then the
file is closed (a single syscall, everything having been flushed by the
worker); if the drain is still stuck after ``CLOSE_WAIT`` it is cancelled,
and the file is closed by a thread of its own once the stuck write returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_saving = threading.Lock()

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
QUEUE_CAP = 4 * 1024 * 1024
"""Characters of transcript waiting for the disk, at most."""
CLOSE_WAIT = 10.0
"""Seconds ``close`` waits for the queue to reach the disk."""


def read_state(
    state_dir: Path, name: str, loads: Callable[[str], T], empty: Callable[[], T], what: str
) -> T:
    """The state file ``name``, read with ``loads``; ``empty()``, with a warning,
    when it cannot be read."""
    path = state_dir / name
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty()
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s from %s, starting empty: %s", what, path, exc)
        return empty()


def save_state(state_dir: Path, name: str, text: str) -> None:
    """Replace the state file ``name`` with ``text``, atomically and durably;
    raises OSError."""
    with _saving:
        state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, state_dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter, created if need be."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def open_private(path: Path, flags: int) -> int:
    """A descriptor of ``path`` (created 0600 if need be, in a private folder)."""
    private_dir(path.parent)
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return fd


def _open_append(path: Path) -> TextIO:
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    return open(fd, "a", encoding="utf-8", errors="replace")


async def _on_daemon_thread(work: Callable[[], None]) -> None:
    """``work()`` off the loop, on a thread that nothing at exit waits for."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            work()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name="heal-log", daemon=True).start()
    await done


class LogFile:
    """One heal's log file, appended to from the event loop without blocking it."""

    @classmethod
    async def open(cls, path: Path) -> LogFile:
        return cls(await asyncio.to_thread(_open_append, path), str(path))

    def __init__(self, handle: TextIO, name: str) -> None:
        self._handle = handle
        self._name = name
        self._pending: list[str] = []
        self._queued = 0
        self._dropped = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._failed = False
        self._drain = asyncio.get_running_loop().create_task(self._drain_queue())

    def write(self, text: str) -> None:
        if self._failed:
            return
        if self._queued + len(text) > QUEUE_CAP:
            self._dropped += text.count("\n") or 1
            return
        self._queued += len(text)
        self._pending.append(text)
        self._wake.set()

    async def close(self) -> None:
        """Write what is queued, then close; safe to call once the heal is over."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._drain), CLOSE_WAIT)
        except TimeoutError:
            log.warning(
                "the heal log %s is still being written after %gs; going on without it",
                self._name,
                CLOSE_WAIT,
            )
            self._drain.cancel()

    async def _drain_queue(self) -> None:
        try:
            while self._pending or self._dropped or not self._closing:
                await self._wake.wait()
                self._wake.clear()
                if self._dropped:
                    self._pending.append(f"[{self._dropped} lines dropped: the disk is behind]\n")
                    self._dropped = 0
                if self._pending:
                    batch = "".join(self._pending)
                    self._pending.clear()
                    self._queued = 0
                    await _on_daemon_thread(functools.partial(self._write, batch))
        finally:
            if self._drain.cancelling():
                self._failed = True
                # The stuck write holds the file's lock: closing here would block the loop.
                threading.Thread(target=self._close_handle, daemon=True).start()
            else:
                self._close_handle()

    def _close_handle(self) -> None:
        with contextlib.suppress(OSError):  # reported by _write already
            self._handle.close()

    def _write(self, batch: str) -> None:
        if self._failed:
            return
        try:
            self._handle.write(batch)
            self._handle.flush()
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the heal log %s: %s", self._name, exc.strerror or exc)
            self._failed = True
