"""What the proxy knows about each image it made or adopted: image id -> sources.

Rules:
- A record is written after each heal or rebuild of a stale-mode tag, from
  the sources hashed *before* the recipe ran: an edit made while it ran
  leaves a record that no longer matches, so one more rebuild follows and
  no image is ever taken for a tree it was not built from.
- A record holds the inputs hash, each input file's short key (to name the
  first input that differs), and the image ids of its managed bases then.
- An image the proxy did not make is adopted: fresh if no input is newer
  than the image's ``Created``, else recorded as stale with why (``reason``).
- Bounded like the remembered tags: at most ``CAP`` records, the least
  recently written first to go, and at most ``MAX_FILES`` file keys across
  them. Past that the oldest records keep their hash but lose their file
  keys: staleness is still exact, only the first differing file goes
  unnamed.
- Saved as one JSON object (``dumps``); ``recordfile`` writes and reads it.

Theory of operation: pure (no clock, no disk: times are passed in), a dict
kept in order of writing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..sources.inputs import FileEntry

CAP = 1000
MAX_FILES = 100_000


def file_key(entry: FileEntry) -> str:
    """A short, comparable key of one input file: its mode and content."""
    return f"{entry.mode.decode()}:{entry.digest[:16]}"


@dataclass(frozen=True)
class ImageRecord:
    inputs: str
    """The inputs hash the image was made from; "" for an image adopted stale."""
    files: Mapping[str, str] | None
    """Relative path -> ``file_key`` then; None once trimmed (see the rules)."""
    bases: Mapping[str, str]
    """Normalised tag -> image id of each managed base it was made on."""
    made: float
    """Wall-clock time of the record."""
    reason: str = ""
    """Why an adopted image is stale; empty for any other."""
    adopted: bool = False
    """Built by someone else, judged by its ``Created`` time."""

    def view(self) -> dict[str, Any]:
        data: dict[str, Any] = {"inputs": self.inputs, "bases": dict(self.bases), "made": self.made}
        if self.files is not None:
            data["files"] = dict(self.files)
        if self.reason:
            data["reason"] = self.reason
        if self.adopted:
            data["adopted"] = True
        return data


@dataclass
class RecordStore:
    """Records by image id, oldest first; ``dirty`` until saved."""

    records: dict[str, ImageRecord] = field(default_factory=dict)
    cap: int = CAP
    max_files: int = MAX_FILES
    dirty: bool = False
    version: int = 0
    """Counts every change (see ``TagMap.version``)."""

    def get(self, image_id: str) -> ImageRecord | None:
        return self.records.get(image_id)

    def put(self, image_id: str, record: ImageRecord) -> None:
        self.version += 1
        self.records.pop(image_id, None)  # re-inserted last: the order is the age
        self.records[image_id] = record
        while len(self.records) > self.cap:
            del self.records[next(iter(self.records))]
        files = sum(len(r.files) for r in self.records.values() if r.files is not None)
        for old, kept in self.records.items():
            if files <= self.max_files:
                break
            if kept.files is not None and old != image_id:
                files -= len(kept.files)
                self.records[old] = replace(kept, files=None)
        self.dirty = True

    def dumps(self) -> str:
        records = {image_id: r.view() for image_id, r in self.records.items()}
        return json.dumps({"version": 1, "records": records}, indent=1) + "\n"

    @classmethod
    def loads(cls, text: str) -> RecordStore:
        """Read what ``dumps`` wrote; anything malformed raises ValueError."""
        data = json.loads(text)
        entries = data.get("records") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise ValueError("expected {'records': {image id: record}}")
        store = cls()
        for image_id, raw in entries.items():
            store.put(image_id, _record(raw))
        store.dirty = False
        return store


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected a table of strings")
    return value


def _record(raw: object) -> ImageRecord:
    if not isinstance(raw, dict):
        raise ValueError("a record is not an object")
    made, inputs, reason = raw.get("made"), raw.get("inputs"), raw.get("reason", "")
    adopted = raw.get("adopted", False)
    if (
        not isinstance(made, int | float)
        or isinstance(made, bool)
        or not isinstance(inputs, str)
        or not isinstance(reason, str)
        or not isinstance(adopted, bool)
    ):
        raise ValueError("a record lacks its inputs hash or time")
    files = _strings(raw["files"]) if "files" in raw else None
    bases = _strings(raw.get("bases", {}))
    return ImageRecord(inputs, files, bases, float(made), reason, adopted)
