"""Lock files: one holder per tag, and removal that never lets two builders in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import tags_sharing_a_short_hash

from proxy.healing.core import lockfiles
from proxy.healing.core.statefiles import tag_file_name

A = "example.com/app:1"
B = "example.com/gone:1"


def lock_path(state: Path, image: str) -> Path:
    return state / "locks" / f"{tag_file_name(image)}.lock"


def taken(state: Path, image: str) -> lockfiles.LockFile:
    lock = lockfiles.LockFile(state, image)
    assert lock.take()
    return lock


def test_one_holder_at_a_time_and_the_file_names_its_tag(tmp_path: Path) -> None:
    held = taken(tmp_path, A)
    waiting = lockfiles.LockFile(tmp_path, A)
    assert not waiting.take()
    assert lock_path(tmp_path, A).read_text() == A
    held.close()
    assert waiting.take()
    waiting.close()


def test_unused_locks_of_unhealed_tags_go_and_the_rest_stay(tmp_path: Path) -> None:
    for image in (A, B):
        taken(tmp_path, image).close()
    held = taken(tmp_path, "example.com/held:1")
    legacy = tmp_path / "locks" / "from-an-older-version.lock"
    legacy.touch()
    removed = lockfiles.remove_unused(tmp_path, lambda tag: tag == A)
    assert removed == 2  # B's and the unreadable one; the held one is not touched
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == sorted(
        [lock_path(tmp_path, A).name, lock_path(tmp_path, "example.com/held:1").name]
    )
    held.close()


def test_a_taker_of_a_removed_file_locks_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened before a removal, locked after it: the taker must not believe it
    holds the lock, or a second taker of the new file would build at once."""
    real = lockfiles._locked
    removals = []

    def removed_meanwhile(fd: int) -> bool:
        if not removals:  # between this taker's open and its flock, once
            removals.append(lock_path(tmp_path, B))
            lock_path(tmp_path, B).unlink()
        return real(fd)

    waiting = lockfiles.LockFile(tmp_path, B)  # opened, and then removed before its flock
    monkeypatch.setattr(lockfiles, "_locked", removed_meanwhile)
    assert waiting.take() and removals
    named = lock_path(tmp_path, B).stat()
    assert (os.fstat(waiting.fd).st_ino, os.fstat(waiting.fd).st_nlink) == (named.st_ino, 1)
    assert not lockfiles.LockFile(tmp_path, B).take()
    waiting.close()


def test_a_crafted_tag_does_not_hold_its_victims_lock(tmp_path: Path) -> None:
    victim, crafted = tags_sharing_a_short_hash()
    held = taken(tmp_path, crafted)
    assert lockfiles.LockFile(tmp_path, victim).take()
    held.close()


def test_a_lock_file_named_by_an_older_version_goes_though_its_tag_is_healed(
    tmp_path: Path,
) -> None:
    """Its name carries a 32-bit hash, so nobody takes it again: kept because
    its tag is still healed, it would stay for ever."""
    taken(tmp_path, A).close()
    older = lock_path(tmp_path, A).with_name(f"example.com_app_1-{'0' * 8}.lock")
    older.write_text(A)
    assert lockfiles.remove_unused(tmp_path, lambda tag: tag == A) == 1
    assert list((tmp_path / "locks").iterdir()) == [lock_path(tmp_path, A)]
