"""Lock files: one builder per tag across processes, in ``state_dir/locks``.

Rules:
- A tag's lock is an ``flock`` on ``locks/<tag_file_name>.lock``, held while
  its recipe runs. ``flock`` has no wake-up, so a taker polls (the healer).
- The file holds the tag it locks, written by whoever takes it: the name is
  a lossy rendering, and ``remove_unused`` must know whose lock a file is.
- A lock file may be removed, but only by someone holding its lock, and a
  taker checks after ``flock`` that the file it locked still has the name.
  Otherwise a taker that opened the file before it was removed would lock a
  nameless file while the next taker locks a new one, and two builds of one
  tag would run. A taker that finds its file gone opens the new one.
- Lock files of tags no recipe heals any more are removed (at start and
  after each heal), so a failing pattern tag leaves nothing behind
  once its recipe is gone. A file whose tag cannot be read (an older
  version's, empty) is removed too: it is made again when needed. So is one
  whose name is not its tag's (an older version's, whose names carried a
  32-bit hash): nobody takes it any more, and it would be kept for ever.

Theory of operation: blocking calls on descriptors from ``statefiles``,
meant for a thread or for the loop when they cannot block (``LOCK_NB``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .statefiles import open_folder, open_in, tag_file_name

log = logging.getLogger(__name__)

FOLDER = "locks"
SUFFIX = ".lock"


def _locked(fd: int) -> bool:
    """``flock`` ``fd`` without waiting; False when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _still_named(folder: int, name: str, fd: int) -> bool:
    """Whether ``name`` in ``folder`` is still the file ``fd`` is open on."""
    try:
        named = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class LockFile:
    """One tag's lock file, held open while its taker waits for the lock."""

    def __init__(self, state_dir: Path, image: str) -> None:
        self.state_dir = state_dir
        self.image = image
        self.name = tag_file_name(image) + SUFFIX
        self.fd = self._open()

    def _open(self) -> int:
        folder = open_folder(self.state_dir, FOLDER)
        try:
            return open_in(folder, self.name, os.O_RDWR | os.O_CREAT, self.state_dir / FOLDER)
        finally:
            os.close(folder)

    def take(self) -> bool:
        """Take the lock without waiting; False when another holds it."""
        while _locked(self.fd):
            folder = open_folder(self.state_dir, FOLDER)
            try:
                named = _still_named(folder, self.name, self.fd)
            finally:
                os.close(folder)
            if named:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.image.encode(), 0)
                return True
            os.close(self.fd)  # removed while we waited for it: lock the new one
            self.fd = self._open()
        return False

    def close(self) -> None:
        """Release the lock, if taken, with the descriptor."""
        os.close(self.fd)


def remove_unused(state_dir: Path, healed: Callable[[str], bool]) -> int:
    """Remove lock files nobody holds whose tag ``healed`` says no recipe heals; how many."""
    try:
        folder = open_folder(state_dir, FOLDER)
    except OSError as exc:
        log.warning("cannot tidy the lock files in %s: %s", state_dir / FOLDER, exc)
        return 0
    removed = 0
    try:
        for name in os.listdir(folder):
            if not name.endswith(SUFFIX):
                continue
            try:
                removed += _remove_if_unused(folder, name, state_dir / FOLDER, healed)
            except FileNotFoundError:
                pass  # removed meanwhile, by another process tidying
            except OSError as exc:
                log.warning("cannot tidy the lock file %s: %s", state_dir / FOLDER / name, exc)
    finally:
        os.close(folder)
    return removed


def _remove_if_unused(folder: int, name: str, where: Path, healed: Callable[[str], bool]) -> bool:
    fd = open_in(folder, name, os.O_RDWR, where)
    try:
        if not _locked(fd) or not _still_named(folder, name, fd):
            return False
        tag = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if tag and name == tag_file_name(tag) + SUFFIX and healed(tag):
            return False
        os.unlink(name, dir_fd=folder)
        return True
    finally:
        os.close(fd)
