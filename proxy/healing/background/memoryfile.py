"""The remembered tags (``memory``) on disk: ``state_dir/remembered-tags.json``.

Rules:
- A save never leaves a half-written file where the next start reads: the
  text goes to a temporary file of its own (``mkstemp``, mode 0600 like the
  rest of ``state_dir``), is flushed to the disk, and only then renamed over
  the old one. A save that fails removes its temporary file.
- Saves run one at a time, in the order they began: a save cancelled by its
  caller goes on in its thread, and a second one must neither race it nor be
  overwritten by it.
- A missing or unreadable file is an empty memory, with a warning: losing the
  list costs a proactive heal, never a start.

Theory of operation: blocking calls, meant for a thread; a process-wide lock
orders the saves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .memory import TagMemory

log = logging.getLogger(__name__)

T = TypeVar("T")
FILE_NAME = "remembered-tags.json"
_saving = threading.Lock()


def load(state_dir: Path) -> TagMemory:
    return read(state_dir, FILE_NAME, TagMemory.loads, TagMemory, "remembered tags")


def read(
    state_dir: Path, name: str, loads: Callable[[str], T], empty: Callable[[], T], what: str
) -> T:
    """A file of ``state_dir`` kept this way, read with ``loads``; ``empty()``, with
    a warning, when it cannot be read."""
    path = state_dir / name
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty()
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s from %s, starting empty: %s", what, path, exc)
        return empty()


def save(state_dir: Path, text: str, name: str = FILE_NAME) -> None:
    """Write ``text`` (a ``TagMemory.dumps``, or another file of ``state_dir``
    kept the same way) atomically and durably; raises OSError."""
    with _saving:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
