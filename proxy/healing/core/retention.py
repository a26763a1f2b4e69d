"""What ``state_dir`` keeps: heal transcripts by ``[heal] keep_logs``, live lock files.

Rules:
- A transcript is kept while it is among the ``last`` of its tag and younger
  than ``max_age``; the others are removed. A failing pattern tag writes one
  at every cooldown, and nothing else would ever delete them.
- Age and order come from the name (``<tag file name>-<UTC start>.log``),
  not from the file's times: the name says when the heal began, a copy or a
  ``touch`` does not change it, and the rule stays a pure function of names.
  A file in ``logs`` that is not named so is left alone.
- Names older versions wrote (a 32-bit tag hash, ``statefiles.OLD_TAG_HASH_HEX``)
  are recognised too. They form groups of their own, apart from the same
  tag's new names, and nothing is added to them any more, so they go by
  ``max_age`` (and a group's count past ``last`` goes at once).
- Tidying runs at start and after each heal, in a thread.
  It never fails anything: what cannot be removed is logged and left.

Theory of operation: ``expired`` is the pure rule; ``tidy`` lists ``logs``
through its descriptor, unlinks what ``expired`` names, then has
``lockfiles`` remove the lock files of tags no recipe heals any more.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ...recipes.config import KeepLogs
from . import lockfiles
from .statefiles import LOG_FOLDER, OLD_TAG_HASH_HEX, TAG_HASH_HEX, open_folder

log = logging.getLogger(__name__)

STAMP = "%Y%m%dT%H%M%S"
"""How a transcript's name says when its heal began (UTC), then milliseconds:
heals of one tag a second apart (``heal --force`` in a loop) still sort."""
_LOG_NAME = re.compile(
    rf"(?P<tag>.+-(?:[0-9a-f]{{{TAG_HASH_HEX}}}|[0-9a-f]{{{OLD_TAG_HASH_HEX}}}))"
    r"-(?P<stamp>\d{8}T\d{6}\.\d{3})(?:-[0-9a-f]+)?\.log"
)


def _stamp(when: float) -> str:
    return f"{time.strftime(STAMP, time.gmtime(when))}.{int(when * 1000) % 1000:03d}"


def log_name(tag_file: str, started: float) -> str:
    """The name (without ``.log``) of a transcript of a heal that began at ``started``."""
    return f"{tag_file}-{_stamp(started)}"


def expired(names: Iterable[str], keep: KeepLogs, now: float) -> list[str]:
    """The transcripts in ``names`` that ``keep`` no longer keeps at ``now``."""
    by_tag: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        found = _LOG_NAME.fullmatch(name)
        if found is not None:
            by_tag.setdefault(found["tag"], []).append((found["stamp"], name))
    oldest = _stamp(now - keep.max_age)
    gone: list[str] = []
    for logs in by_tag.values():
        logs.sort(reverse=True)
        gone += [name for i, (stamp, name) in enumerate(logs) if i >= keep.last or stamp < oldest]
    return sorted(gone)


def tidy(state_dir: Path, keep: KeepLogs, healed: Callable[[str], bool]) -> None:
    """Apply ``keep`` to the transcripts, and drop the lock files of unhealed tags."""
    try:
        folder = open_folder(state_dir, LOG_FOLDER)
    except OSError as exc:
        log.warning("cannot tidy the heal logs in %s: %s", state_dir / LOG_FOLDER, exc)
    else:
        try:
            for name in expired(os.listdir(folder), keep, time.time()):
                try:
                    os.unlink(name, dir_fd=folder)
                except FileNotFoundError:
                    pass  # removed meanwhile, by another process tidying
                except OSError as exc:
                    log.warning("cannot remove the heal log %s: %s", name, exc)
        finally:
            os.close(folder)
    lockfiles.remove_unused(state_dir, healed)
