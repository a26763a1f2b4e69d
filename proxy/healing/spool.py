"""Spool files: where a build body waits on disk while the proxy reads its Dockerfile.

Rules:
- One folder, ``<state_dir>/spool``, mode 0700: a build context can hold
  anything its owner could read, so nobody else may list or open it.
- Each spool file is mode 0600 and has no name from the moment it is open
  (``O_TMPFILE`` where the filesystem has it, else created and unlinked at
  once), so no outcome of a build, a crash included, can leave one behind
  for longer than the process lives.
- A file left over anyway (a SIGKILL between create and unlink, on a
  filesystem without ``O_TMPFILE``) is swept when the proxy starts.
- Blocking file I/O runs in worker threads; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PREFIX = "build-"
READ_PIECE = 1 << 20
"""Bytes read back from a spool file at once, when it is forwarded."""


def spool_dir(state_dir: Path) -> Path:
    folder = state_dir / "spool"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # an older or hand-made folder gets closed too
    return folder


def open_spool(state_dir: Path) -> IO[bytes]:
    """A fresh, nameless spool file (blocking: call it in a thread)."""
    return tempfile.TemporaryFile(dir=spool_dir(state_dir), prefix=PREFIX)


def sweep(state_dir: Path) -> int:
    """Remove the spool files an earlier, killed process left; how many there were."""
    removed = 0
    try:
        for path in (state_dir / "spool").glob(PREFIX + "*"):
            path.unlink(missing_ok=True)
            removed += 1
    except OSError as exc:  # not fatal: builds then go unhealed, each with a log line
        log.warning("cannot sweep the build spool folder: %s", exc)
    if removed:
        log.info("removed %d build spool files left by an earlier run", removed)
    return removed


async def replay(spool: IO[bytes]) -> AsyncIterator[bytes]:
    """The spool's bytes from the start, one bounded piece at a time."""

    def read(offset: int) -> bytes:
        return os.pread(spool.fileno(), READ_PIECE, offset)

    await asyncio.to_thread(spool.flush)
    offset = 0
    while piece := await asyncio.to_thread(read, offset):
        offset += len(piece)
        yield piece
