"""The ``[audit]`` table: where the audit log goes and what happens when it backs up.

Rules:
- No ``[audit]`` table, no audit log: nothing is read or written, and the
  data path is handed no auditor.
- ``path`` is an absolute file path or ``"journal"``. A relative path is
  refused rather than resolved: the service's working folder is ``/``, and a
  log that lands somewhere else than the admin thought is an audit gap.
- ``on_full = "drop"`` (the default) keeps serving when the writer falls
  behind and counts the lines lost; ``"refuse"`` fails closed: no request is
  taken that could not be written down.
- Pure, and each error is one line naming the key, as the config file's are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

JOURNAL = "journal"
OnFull = Literal["drop", "refuse"]
ON_FULL: tuple[OnFull, ...] = ("drop", "refuse")
KEYS = ("path", "on_full", "buffer")
MAX_BUFFER = 1_000_000


@dataclass(frozen=True)
class AuditSettings:
    path: str
    """An absolute file path, or ``JOURNAL``."""
    on_full: OnFull = "drop"
    buffer: int = 4096
    """Lines held for the writer; past that, ``on_full`` decides."""

    @property
    def journal(self) -> bool:
        return self.path == JOURNAL


def audit_settings(table: Mapping[str, Any]) -> AuditSettings | None:
    """The settings ``[audit]`` asks for, None without one; raises ValueError."""
    if not table:
        return None
    for key in table:
        if key not in KEYS:
            raise ValueError(f"[audit] unknown key {key!r}")
    path = table.get("path")
    if not isinstance(path, str) or (
        path != JOURNAL and not (path.startswith("/") and not path.endswith("/"))
    ):
        raise ValueError(f'[audit] path must be an absolute file path or "journal", not {path!r}')
    on_full = table.get("on_full", "drop")
    if on_full not in ON_FULL:
        raise ValueError(f'[audit] on_full must be "drop" or "refuse", not {on_full!r}')
    buffer = table.get("buffer", AuditSettings.buffer)
    if isinstance(buffer, bool) or not isinstance(buffer, int) or not 1 <= buffer <= MAX_BUFFER:
        raise ValueError(f"[audit] buffer must be a number of lines from 1 to {MAX_BUFFER}")
    return AuditSettings(path, on_full, buffer)
