"""memoryfile: the remembered tags survive a restart, and a failed or racing save
never leaves a file the next start cannot read."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from proxy.healing.background import memoryfile
from proxy.healing.background.memory import TagMemory


def test_the_file_reads_back_in_order_of_use(tmp_path: Path) -> None:
    tags = TagMemory()
    tags.remember("new", 5.0)
    tags.remember("old", 1.0)
    tags.remember("new", 9.0)
    memoryfile.save(tmp_path / "state", tags.dumps())
    path = tmp_path / "state" / memoryfile.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    again = memoryfile.load(tmp_path / "state")
    assert again.last_used == {"old": 1.0, "new": 9.0} and not again.dirty
    again.cap = 1
    again.remember("x", 10.0)
    assert again.tags() == ["x"]


def test_a_missing_file_is_an_empty_memory(tmp_path: Path) -> None:
    assert memoryfile.load(tmp_path).tags() == []


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"last_used": []}', '{"last_used": {"a": "x"}}', '{"last_used": {"a": true}}'],
)
def test_a_damaged_file_is_an_empty_memory_with_a_warning(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / memoryfile.FILE_NAME).write_text(text)
    assert memoryfile.load(tmp_path).tags() == []
    assert "cannot read remembered tags" in caplog.text


def test_saves_racing_from_threads_leave_one_whole_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    errors: list[BaseException] = []

    def saves(name: str) -> None:
        tags = TagMemory()
        for i in range(50):
            tags.remember(f"{name}-{i}" * 200, float(i))  # big enough to be written in pieces
            try:
                memoryfile.save(state, tags.dumps())
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=saves, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(json.loads((state / memoryfile.FILE_NAME).read_text())["last_used"]) == 50
    assert sorted(os.listdir(state)) == [memoryfile.FILE_NAME], "a temporary file was left"


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tags = TagMemory()
    tags.remember("kept", 1.0)
    memoryfile.save(tmp_path, tags.dumps())

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        memoryfile.save(tmp_path, TagMemory().dumps())
    assert os.listdir(tmp_path) == [memoryfile.FILE_NAME]
    assert memoryfile.load(tmp_path).tags() == ["kept"]
