"""Whether the image a tag points to is stale: the rule, with nothing looked up.

Rules:
- Fresh, stale or not known yet, from facts already in memory: the tag's
  image id (``tagmap``), the record of that id (``records``), the tag's
  sources as hashed now (``sources``), and the same for its bases.
- Stale when the record's inputs hash differs from the current one; the
  reason names the first input, in path order, that was added, removed or
  changed (or says the inputs changed, for a record whose file keys were
  trimmed). Stale too when an adopted image was found older than its inputs.
- Stale when a managed base recorded with the image now points to another
  image id ("rebuilt after it"), or is itself stale: the base is then
  rebuilt first, and this image after it. A base that is missing is no
  reason: the image still runs, and a heal of the base is the missing path's
  business.
- Not known: the tag's (or a base's) image id while the tag map is being
  relisted (one inspect answers it), an image id with no record (adopt it:
  inspect its ``Created``), or sources not hashed yet (wait for the hash).
- Sources that cannot be hashed (a glob that matches nothing) make no image
  stale: a rebuild could not record what it was built from and would run
  again on every create. ``status`` shows the problem instead.
- An adopted image is fresh only if no input file changed after the image
  was created (``adopt``): an image built before a ``git pull`` and first
  seen after it is exactly the stale image this mode exists for.

Theory of operation: plain functions over a ``Facts`` protocol, so the
tracker answers from its memory and the tests from dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from ..sources.inputs import Entries, tree_hash
from .records import ImageRecord, file_key


@dataclass(frozen=True)
class Sources:
    """A tag's input files as hashed now, or why they cannot be."""

    entries: Entries
    error: str | None = None
    hash: str = field(init=False, compare=False)
    """Taken once here: a create compares it, and must not hash on the way."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", tree_hash(self.entries))


@dataclass(frozen=True)
class Fresh:
    note: str = ""
    """Why staleness could not be judged, if it could not (see the rules)."""


@dataclass(frozen=True)
class Stale:
    reason: str


@dataclass(frozen=True)
class Unknown:
    need: Literal["inspect", "adopt", "hash"]
    tag: str
    """The tag (this one or a base) whose fact is missing."""


Decision = Fresh | Stale | Unknown


class Facts(Protocol):
    def image_id(self, tag: str) -> str | None:
        """The id ``tag`` points to, "" if no image has it, None if not known now."""

    def record(self, image_id: str) -> ImageRecord | None: ...

    def sources(self, tag: str) -> Sources | None:
        """The tag's sources now; None if not hashed yet or not in stale mode."""

    def stale_mode(self, tag: str) -> bool: ...


def first_difference(recorded: Mapping[str, str] | None, now: Entries) -> str:
    """The first input, in path order, that differs between a record and now."""
    if recorded is None:
        return "its inputs changed"
    for path in sorted(recorded.keys() | now.keys()):
        if path not in now:
            return f"{path} was removed"
        if path not in recorded:
            return f"{path} was added"
        if recorded[path] != file_key(now[path]):
            return f"{path} changed"
    return "its inputs changed"


def decide(tag: str, facts: Facts, seen: frozenset[str] = frozenset()) -> Decision:
    """Whether the image ``tag`` points to must be rebuilt before it runs."""
    image_id = facts.image_id(tag)
    if image_id is None:
        return Unknown("inspect", tag)
    if not image_id or tag in seen:
        return Fresh()  # missing: healed as any missing image is
    record = facts.record(image_id)
    if record is None:
        return Unknown("adopt", tag)
    sources = facts.sources(tag)
    if sources is None:
        return Unknown("hash", tag)
    if sources.error is not None:
        return Fresh(note=sources.error)
    if record.reason:
        return Stale(record.reason)
    if record.inputs != sources.hash:
        return Stale(first_difference(record.files, sources.entries))
    for base, base_id in sorted(record.bases.items()):
        now = facts.image_id(base)
        if now is None:
            return Unknown("inspect", base)
        if now and now != base_id:
            return Stale(f"its base {base} was rebuilt after it")
        if now and facts.stale_mode(base):
            found = decide(base, facts, seen | {tag})
            if isinstance(found, Stale):
                return Stale(f"its base {base} is stale: {found.reason}")
            if isinstance(found, Unknown):
                return found
    return Fresh()


def adopt(created: float, sources: Sources, bases: Mapping[str, str], now: float) -> ImageRecord:
    """The record of an image the proxy did not make, created at ``created``."""
    files = {path: file_key(entry) for path, entry in sources.entries.items()}
    newer = sorted(path for path, entry in sources.entries.items() if entry.mtime > created)
    reason = f"built before {newer[0]} last changed (adopted stale)" if newer else ""
    return ImageRecord("" if newer else sources.hash, files, dict(bases), now, reason, True)


def made(sources: Sources, bases: Mapping[str, str], now: float) -> ImageRecord:
    """The record of an image the proxy just made from ``sources``."""
    files = {path: file_key(entry) for path, entry in sources.entries.items()}
    return ImageRecord(sources.hash, files, dict(bases), now)


def created_seconds(text: str) -> float:
    """Seconds since the epoch in an inspect's ``Created`` (RFC 3339, nanoseconds);
    raises ValueError."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return whole + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)
