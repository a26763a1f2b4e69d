"""records: what is kept per image id, how much, and how it reads back."""

from __future__ import annotations

import pytest

from proxy.healing.stale.records import ImageRecord, RecordStore


def record(files: int = 1, reason: str = "") -> ImageRecord:
    keys = {f"f{i}": f"100644:{i:016x}" for i in range(files)}
    return ImageRecord("sha256:x", keys, {"docker.io/library/base:latest": "sha256:b"}, 5.0, reason)


def test_records_read_back_as_written() -> None:
    store = RecordStore()
    store.put("sha256:1", record())
    store.put("sha256:2", record(reason="built before src/a last changed (adopted stale)"))
    store.put("sha256:3", ImageRecord("sha256:y", None, {}, 1.0, adopted=True))
    assert store.dirty
    again = RecordStore.loads(store.dumps())
    assert again.records == store.records and not again.dirty


def test_the_oldest_record_goes_past_the_cap_and_a_rewrite_is_young_again() -> None:
    store = RecordStore(cap=2)
    store.put("sha256:1", record())
    store.put("sha256:2", record())
    store.put("sha256:1", record())
    store.put("sha256:3", record())
    assert list(store.records) == ["sha256:1", "sha256:3"]


def test_past_max_files_the_oldest_records_lose_their_file_keys_not_their_hash() -> None:
    store = RecordStore(max_files=5)
    store.put("sha256:1", record(files=3))
    store.put("sha256:2", record(files=3))
    assert store.records["sha256:1"].files is None
    assert store.records["sha256:1"].inputs == "sha256:x"
    assert store.records["sha256:2"].files is not None


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"records": []}',
        '{"records": {"sha256:1": {"inputs": "x"}}}',
        '{"records": {"sha256:1": {"inputs": 1, "made": 1}}}',
        '{"records": {"sha256:1": {"inputs": "x", "made": true}}}',
        '{"records": {"sha256:1": {"inputs": "x", "made": 1, "bases": {"a": 1}}}}',
        "not json",
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RecordStore.loads(text)
