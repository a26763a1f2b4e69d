"""The Dockerfiles BuildKit sessions sent, for a build whose daemon does not ask for one again.

Rules:
- dockerd 20.10's BuildKit keeps the files of each build's Dockerfile
  transfer, keyed by the session's shared key, and asks only for what
  changed: a second build of the same folder with an unchanged Dockerfile
  lists it and never asks for it, so the relay sees no text to heal from.
  (dockerd 26 asks for the Dockerfile on every build.)
- So the relay remembers each Dockerfile the daemon asked for and got
  whole (what the daemon keeps), under the session's shared key
  (``X-Docker-Expose-Session-Sharedkey``: buildx derives it from the
  folder, so it is the same for every build of one folder) and the file's
  name, with the fsutil Stat it was listed with.
- A text is given back only for the very Stat it was seen with. That is
  fsutil's own test of "unchanged" (the daemon asks again when the listed
  Stat differs from the one it keeps), so the text given back is the one
  the daemon has. A session without a shared key is neither remembered
  nor recalled: it names no folder.
- Bounded: at most ``ENTRIES`` files and ``BYTES`` of text, the least
  recently used forgotten first. Memory only: after a restart the first
  unchanged build of a folder is not healed (the relay fails open on it).
- Pure: no I/O.

Theory of operation:
An ordered dict from (shared key, name) to (Stat, text), moved to the end
on each use; one folder's later Dockerfile replaces its earlier one.
"""

from __future__ import annotations

from collections import OrderedDict

ENTRIES = 256
BYTES = 16 << 20


class DockerfileMemory:
    """The last Dockerfile seen per (session shared key, file name), with its Stat."""

    __slots__ = ("_entries", "_size", "entries", "size")

    def __init__(self, entries: int = ENTRIES, size: int = BYTES) -> None:
        self.entries = entries
        self.size = size
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[bytes, bytes]] = OrderedDict()
        self._size = 0

    def remember(self, key: bytes, name: bytes, stat: bytes, text: bytes) -> None:
        if not key or len(text) > self.size:
            return
        self._forget((key, name))
        self._entries[key, name] = (stat, text)
        self._size += len(text)
        while len(self._entries) > self.entries or self._size > self.size:
            self._forget(next(iter(self._entries)))

    def recall(self, key: bytes, name: bytes, stat: bytes) -> bytes | None:
        """The text seen for this folder's file with this very Stat, or None."""
        entry = self._entries.get((key, name)) if key else None
        if entry is None or entry[0] != stat:
            return None
        self._entries.move_to_end((key, name))
        return entry[1]

    def _forget(self, where: tuple[bytes, bytes]) -> None:
        entry = self._entries.pop(where, None)
        if entry is not None:
            self._size -= len(entry[1])
