"""Files a heal leaves in ``state_dir``: private, never through a link, written off the loop.

Rules:
- ``state_dir`` is this user's alone. It is made 0700 and owned by the
  effective uid; one that another user owns is refused, and so is one below a
  folder that others can write without the sticky bit (they could swap the
  folder for one of their own). ``prepare_state_dir`` checks this once, at
  start, and returns the real path, so that no later open follows a link.
- Nothing in it is reached through a symbolic link. Whoever can plant a link
  there could make root open, create or chmod any file on the machine. Every
  folder is opened ``O_DIRECTORY|O_NOFOLLOW`` relative to the descriptor of
  the one above it, and every file ``O_NOFOLLOW`` relative to its folder's
  descriptor; modes change through the descriptor (``fchmod``), never by
  path. A link, a file that is not a regular file, or one someone else owns
  fails the open with a sentence that names it and the fix.
- Private whatever the umask. A recipe's output can hold secrets (that is why
  ``/_heal/status`` is served only on the proxy's own socket), and ``serve``
  started by hand runs with the shell's umask, usually 022. So folders are
  made 0700 and files 0600 explicitly, and ones an earlier run left wider are
  narrowed. ``open_private`` and ``open_folder`` are the one way into
  ``state_dir``, for every part that keeps a file there.
- A state file (the remembered tags, the image records of stale mode) is
  replaced whole, never left half-written where the next start reads: the
  text goes to a new temporary file of its own, is flushed to the disk, and
  only then renamed over the old one (``renameat``, within the folder's
  descriptor); a save that fails
  removes its temporary file. Saves run one at a time, in the order they
  began: a save cancelled by its caller goes on in its thread, and a second
  one must neither race it nor be overwritten by it. A state file that is
  missing or unreadable reads as empty, with a warning: losing it costs a
  rebuild, never a start. These are blocking calls, meant for a thread.
- A transcript is never written on the event loop's thread. A noisy build
  prints thousands of lines a second; written one by one on the loop, a slow
  disk would stall every client connection. Lines are queued and written in
  batches by one worker thread at a time, so they stay in order.
- A new transcript is a new file (``O_EXCL``): its name is predictable, and
  one that exists already was not made by this heal. The heal then writes
  under a name with a random part instead.
- A write that fails (a full disk) costs the transcript, not the heal: it is
  logged once, and later lines are dropped rather than queued without end.
- A disk that is behind (hung, or slower than the recipe is noisy) costs
  lines, not memory: at most ``QUEUE_CAP`` characters wait; past that lines
  are dropped and one marker line says how many, where they were.
- A disk that never returns does not hold up the heal or the exit: ``close``
  waits ``CLOSE_WAIT``, and the writes run on daemon threads, which neither
  the loop's shutdown nor the interpreter's exit waits for.

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
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import stat
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


class StateDirError(Exception):
    """``state_dir`` is not this user's alone; the text names the path and the fix."""


class UnsafeStateFile(OSError):
    """A name in ``state_dir`` is a link, not what it should be, or someone else's."""


def unsafe_folder(st: os.stat_result, euid: int) -> str | None:
    """Why a folder above ``state_dir`` lets another user swap what is below it, or None.

    Only root and this user may own it. Others may write it only with the
    sticky bit set (as in ``/tmp``), which keeps them from renaming what is ours.
    """
    if st.st_uid not in (0, euid):
        return f"is owned by uid {st.st_uid}"
    if st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0):
        return "is writable by others and has no sticky bit"
    return None


def prepare_state_dir(path: Path) -> Path:
    """``path`` made and checked as the module rules say; its real path, for every later open."""
    euid = os.geteuid()
    absolute = Path(os.path.abspath(path))
    # The way is judged before anything is made, opened or narrowed on it (a
    # refused state_dir leaves the machine as it was), and again once what was
    # missing is made, before the folder itself is opened and narrowed.
    _refuse_unsafe_way(path, absolute, euid)
    try:
        Path(os.path.realpath(absolute)).mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        real = _refuse_unsafe_way(path, absolute, euid)
        os.close(open_folder(real))
    except UnsafeStateFile as exc:
        raise StateDirError(f"state_dir {path}: {exc}") from None
    except OSError as exc:
        raise StateDirError(f"cannot make state_dir {path}: {exc.strerror or exc}") from None
    return real


def _refuse_unsafe_way(path: Path, absolute: Path, euid: int) -> Path:
    """The real path of ``absolute``, once no folder or link on the way to it
    lets another user choose what it is; raises StateDirError. What is not
    there yet is skipped: it is made by this user."""
    real = Path(os.path.realpath(absolute))  # a link may name it: its target is what is used
    # The links on the way count as much as the folders: whoever may change one
    # chooses where state_dir is. The folder itself is open_folder's to judge.
    for folder in dict.fromkeys([absolute, *absolute.parents, *real.parents]):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            continue
        if folder == absolute and not stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode):
            why = None if st.st_uid in (0, euid) else f"is a link owned by uid {st.st_uid}"
        else:
            why = unsafe_folder(st, euid)
        if why is not None:
            raise StateDirError(
                f"state_dir {path} is not safe: {folder} {why}, so another user could "
                f"replace what is in it (fix {folder}, or choose another state_dir)"
            )
    return real


def _checked(fd: int, name: Path, kind: int, fix: str = "remove it") -> int:
    """``fd``, once it is a ``kind`` of this user's with one name; else closed, and why."""
    st = os.fstat(fd)
    why = None
    if stat.S_IFMT(st.st_mode) != kind:
        why = "is not a regular file" if kind == stat.S_IFREG else "is not a folder"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif kind == stat.S_IFREG and st.st_nlink > 1:
        why = "has other names (hard links)"
    if why is not None:
        os.close(fd)
        raise UnsafeStateFile(f"{name} {why}; {fix}")
    wanted = PRIVATE_DIR if kind == stat.S_IFDIR else PRIVATE_FILE
    if stat.S_IMODE(st.st_mode) != wanted:
        try:
            os.fchmod(fd, wanted)
        except OSError:
            os.close(fd)
            raise
    return fd


def _no_link(exc: OSError, name: Path) -> OSError:
    """ELOOP (and ENOTDIR for a folder) from an ``O_NOFOLLOW`` open, said plainly."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
        return UnsafeStateFile(f"{name} is a symbolic link or not what it should be; remove it")
    return exc


def _subfolder(parent: int, name: str, path: Path) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # made meanwhile: opened below
            os.mkdir(name, PRIVATE_DIR, dir_fd=parent)
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except OSError as exc:
            raise _no_link(exc, path) from None
    except OSError as exc:
        raise _no_link(exc, path) from None
    return _checked(fd, path, stat.S_IFDIR)


def open_folder(state_dir: Path, *names: str) -> int:
    """A descriptor of ``state_dir/names...``, each made if need be, private, none a link.

    ``state_dir`` itself is made with its parents when missing (its last
    name no link either); ``prepare_state_dir`` has checked the folders above.
    """
    if not state_dir.is_dir():  # follows nothing that matters: the open below does not
        state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _no_link(exc, state_dir) from None
    fd = _checked(fd, state_dir, stat.S_IFDIR, "chown it, or choose another state_dir")
    path = state_dir
    for name in names:
        path = path / name
        try:
            inner = _subfolder(fd, name, path)
        finally:
            os.close(fd)
        fd = inner
    return fd


def open_in(folder: int, name: str, flags: int, where: Path) -> int:
    """A descriptor of the file ``name`` in the open ``folder`` (``where`` names it).

    ``flags`` say whether to create (``O_CREAT``, made 0600) and whether it
    must be new (``O_EXCL``). ``O_NONBLOCK`` keeps a planted FIFO from
    hanging the open, which the type check then refuses; on a regular file
    it changes nothing.
    """
    path = where / name
    try:
        fd = os.open(
            name,
            flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            PRIVATE_FILE,
            dir_fd=folder,
        )
    except OSError as exc:
        raise _no_link(exc, path) from None
    return _checked(fd, path, stat.S_IFREG)


def open_private(state_dir: Path, relative: str, flags: int) -> int:
    """A descriptor of ``state_dir/relative`` (folders ``/``-separated), by the rules."""
    *folders, name = relative.split("/")
    folder = open_folder(state_dir, *folders)
    try:
        return open_in(folder, name, flags, state_dir.joinpath(*folders))
    finally:
        os.close(folder)


def read_state(
    state_dir: Path, name: str, loads: Callable[[str], T], empty: Callable[[], T], what: str
) -> T:
    """The state file ``name``, read with ``loads``; ``empty()``, with a warning,
    when it cannot be read."""
    try:
        with open(open_private(state_dir, name, os.O_RDONLY), encoding="utf-8") as handle:
            return loads(handle.read())
    except FileNotFoundError:
        return empty()
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s from %s, starting empty: %s", what, state_dir / name, exc)
        return empty()


def save_state(state_dir: Path, name: str, text: str) -> None:
    """Replace the state file ``name`` with ``text``, atomically and durably;
    raises OSError."""
    with _saving:
        folder = open_folder(state_dir)
        try:
            temporary = f".{name}.{secrets.token_hex(6)}"
            fd = open_in(folder, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, state_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)
                raise
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)


TAG_HASH_HEX = 32
"""Hex digits of a tag's SHA-256 in its file names: 128 bits. The readable part
is lossy (cut at 100 characters, symbols folded), so the hash alone keeps tags
apart, and a tag is chosen by whoever can reach the socket. With 32 bits (8
digits, as older versions wrote) a tag sharing a victim's lock and log group
was a minute's search; with 128 bits no search reaches one."""
OLD_TAG_HASH_HEX = 8
"""What older versions wrote, still recognised so that their files expire."""


def tag_file_name(image: str) -> str:
    """A file name for a tag's state: readable, and unique by a hash of the whole tag."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", image)[:100]
    return f"{readable}-{hashlib.sha256(image.encode()).hexdigest()[:TAG_HASH_HEX]}"


LOG_FOLDER = "logs"


def _open_new_log(state_dir: Path, name: str) -> tuple[TextIO, Path]:
    """A transcript file that did not exist; a random part is added when the name did."""
    folder = open_folder(state_dir, LOG_FOLDER)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
    try:
        try:
            fd = open_in(folder, f"{name}.log", flags, state_dir / LOG_FOLDER)
        except FileExistsError:
            name = f"{name}-{secrets.token_hex(4)}"
            fd = open_in(folder, f"{name}.log", flags, state_dir / LOG_FOLDER)
    finally:
        os.close(folder)
    return open(fd, "a", encoding="utf-8", errors="replace"), state_dir / LOG_FOLDER / f"{name}.log"


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
    async def create(cls, state_dir: Path, name: str) -> LogFile:
        """A new transcript ``logs/<name>.log``; its ``path`` says where it went."""
        handle, path = await asyncio.to_thread(_open_new_log, state_dir, name)
        return cls(handle, path)

    def __init__(self, handle: TextIO, path: Path) -> None:
        self._handle = handle
        self.path = path
        self._name = str(path)
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
