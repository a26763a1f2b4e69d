"""The remembered tags (``memory``) on disk: ``state_dir/remembered-tags.json``.

Rules: a state file as ``core.statefiles`` keeps one: replaced atomically
and durably, saves in order, and a missing or unreadable file is an empty
memory, with a warning (losing the list costs a proactive heal, never a
start). Blocking calls, meant for a thread.
"""

from __future__ import annotations

from pathlib import Path

from ..core.statefiles import read_state, save_state
from .memory import TagMemory

FILE_NAME = "remembered-tags.json"


def load(state_dir: Path) -> TagMemory:
    return read_state(state_dir, FILE_NAME, TagMemory.loads, TagMemory, "remembered tags")


def save(state_dir: Path, text: str) -> None:
    """Write ``text`` (a ``TagMemory.dumps``); raises OSError."""
    save_state(state_dir, FILE_NAME, text)
