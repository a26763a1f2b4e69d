"""Heal logs and locks: private whatever the umask, and written off the event loop."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IMAGE_A as A
from support import (
    MemoryEngine,
    heal_config,
    heal_once,
    make_healer,
    tags_sharing_a_short_hash,
    wait_for,
)

from proxy.healing.background import memoryfile
from proxy.healing.background.memory import TagMemory
from proxy.healing.claims import spool
from proxy.healing.core import retention, statefiles
from proxy.healing.core.statefiles import QUEUE_CAP, LogFile


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """``serve`` started by hand, outside systemd: the shell's usual umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_logs_and_locks_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Left wide by an earlier version: both folders, and a lock file.
    (state / "logs").mkdir(parents=True, mode=0o755)
    (state / "locks").mkdir(mode=0o755)
    stale = state / "locks" / f"{statefiles.tag_file_name(A)}.lock"
    stale.touch(mode=0o644)
    assert mode(stale) == 0o644
    engine = MemoryEngine(broken={A})
    healer = make_healer(heal_config({"match": A, "pull": True}), engine, state)
    assert "manifest unknown" in (heal_once(healer, A) or "")
    logs = list((state / "logs").iterdir())
    locks = list((state / "locks").iterdir())
    assert len(logs) == 1 and locks == [stale]
    assert "manifest unknown" in logs[0].read_text()
    assert (mode(state / "logs"), mode(state / "locks")) == (0o700, 0o700)
    assert (mode(logs[0]), mode(locks[0])) == (0o600, 0o600)


class SlowDisk:
    """A file whose every write takes 20 ms, remembering which thread wrote."""

    def __init__(self) -> None:
        self.text = ""
        self.threads: set[int] = set()
        self.closed = False

    def write(self, text: str) -> int:
        self.threads.add(threading.get_ident())
        time.sleep(0.02)
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_noisy_heal_does_not_stall_the_loop() -> None:
    """2,000 lines on a disk that takes 20 ms a write: 40 s if written one by one
    on the loop. No write may happen on the loop's thread (a deterministic check;
    timing the loop would flake on a loaded machine), and every line must land,
    in order."""
    disk = SlowDisk()

    async def run() -> None:
        log = LogFile(disk, Path("slow.log"))  # type: ignore[arg-type]
        for n in range(2000):
            log.write(f"line {n}\n")
            if n % 100 == 0:
                await asyncio.sleep(0)
        await log.close()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert disk.threads and threading.get_ident() not in disk.threads
    assert disk.text == "".join(f"line {n}\n" for n in range(2000))
    assert disk.closed


class FullDisk(SlowDisk):
    def __init__(self) -> None:
        super().__init__()
        self.tried = threading.Event()

    def write(self, text: str) -> int:
        self.tried.set()
        raise OSError(28, "No space left on device")


def test_a_full_disk_costs_the_log_not_the_heal(caplog: pytest.LogCaptureFixture) -> None:
    disk = FullDisk()

    async def run() -> None:
        log = LogFile(disk, Path("full.log"))  # type: ignore[arg-type]
        log.write("line 0\n")
        await asyncio.to_thread(disk.tried.wait, 10)  # the disk has refused a write
        log.write("line 1\n")
        log.write("line 2\n")
        await log.close()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert disk.closed
    assert caplog.text.count("cannot write the heal log full.log: No space left") == 1


class HungDisk(SlowDisk):
    """A disk whose writes block until ``release`` is set, as a hung NFS mount's do."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait()
        self.text += text
        return len(text)

    def close(self) -> None:
        self.release.wait()  # a real file's close waits for the write in progress
        super().close()


def test_a_hung_disk_bounds_the_queue_and_says_what_it_dropped() -> None:
    """A noisy recipe on a hung disk grew the queue to 250 MB in 4 s. Past the cap
    lines are dropped, and one marker says how many once the disk catches up."""
    disk = HungDisk()
    line = "x" * 99 + "\n"
    flood = 3 * QUEUE_CAP // len(line)

    async def run() -> None:
        log = LogFile(disk, Path("hung.log"))  # type: ignore[arg-type]
        log.write("first\n")
        await asyncio.to_thread(disk.entered.wait, 10)  # "first" is stuck on the disk
        for _ in range(flood):
            log.write(line)
        disk.release.set()
        await log.close()

    asyncio.run(asyncio.wait_for(run(), 30))
    kept = QUEUE_CAP // len(line)
    marker = f"[{flood - kept} lines dropped: the disk is behind]\n"
    assert disk.text == "first\n" + line * kept + marker
    assert disk.closed


def test_close_gives_up_on_a_disk_that_never_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown waits for the transcript a bounded time, then goes on without it."""
    monkeypatch.setattr(statefiles, "CLOSE_WAIT", 0.2)
    disk = HungDisk()

    async def run() -> None:
        log = LogFile(disk, Path("stuck.log"))  # type: ignore[arg-type]
        log.write("line\n")
        await asyncio.to_thread(disk.entered.wait, 10)
        await log.close()

    try:
        asyncio.run(asyncio.wait_for(run(), 10))
        assert "the heal log stuck.log is still being written after 0.2s" in caplog.text
        assert not disk.closed
    finally:
        disk.release.set()  # let the stuck writer end, and close the file behind it
    wait_for(lambda: disk.closed, 10, "the file closed once the write returned")


# -- state_dir: checked at start, and never reached through a link -------------


def test_state_dir_is_made_private_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    state = statefiles.prepare_state_dir(tmp_path / "link" / "state")
    assert state == tmp_path / "real" / "state"
    assert mode(state) == 0o700 and state.stat().st_uid == os.geteuid()
    (tmp_path / "state-link").symlink_to(state)  # a state_dir named by a link of root's
    assert statefiles.prepare_state_dir(tmp_path / "state-link") == state


def test_a_link_on_the_way_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the link away")
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    os.lchown(link, 65534, 65534)
    with pytest.raises(statefiles.StateDirError, match=f"{link} is a link owned by uid 65534"):
        statefiles.prepare_state_dir(link)


def test_a_wider_state_dir_is_narrowed(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)
    statefiles.prepare_state_dir(tmp_path / "state")
    assert mode(tmp_path / "state") == 0o700


def test_a_state_dir_another_user_owns_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder away")
    (tmp_path / "state").mkdir(mode=0o700)
    os.chown(tmp_path / "state", 65534, 65534)
    with pytest.raises(statefiles.StateDirError, match="owned by uid 65534, not by this user"):
        statefiles.prepare_state_dir(tmp_path / "state")


def test_a_folder_above_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(statefiles.StateDirError, match=f"{shared} is writable by others"):
        statefiles.prepare_state_dir(shared / "state")
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert statefiles.prepare_state_dir(shared / "state") == shared / "state"


def test_a_refused_state_dir_is_neither_made_nor_narrowed(tmp_path: Path) -> None:
    """The folders on the way are judged before anything is made or changed:
    a refusal leaves the machine as it found it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "kept").mkdir(mode=0o755)
    for name in ("kept", "new/state"):
        with pytest.raises(statefiles.StateDirError, match="writable by others"):
            statefiles.prepare_state_dir(shared / name)
    assert mode(shared / "kept") == 0o755
    assert os.listdir(shared) == ["kept"]


def test_a_link_planted_in_a_sticky_folder_leaves_its_target_as_it_was(tmp_path: Path) -> None:
    """``state_dir = /tmp/heal-state``, and another user made that name a link
    to a folder of root's first (``/etc``): it is refused, and the folder keeps
    its mode, rather than being made 0700 before the refusal."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the link away")
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "etc"
    target.mkdir(mode=0o755)
    (shared / "heal-state").symlink_to(target)
    os.lchown(shared / "heal-state", 65534, 65534)
    (shared / "later").symlink_to(target / "made")  # not there yet: not made either
    os.lchown(shared / "later", 65534, 65534)
    for name in ("heal-state", "later"):
        with pytest.raises(statefiles.StateDirError, match="is a link owned by uid 65534"):
            statefiles.prepare_state_dir(shared / name)
    assert mode(target) == 0o755
    assert os.listdir(target) == []


def test_a_folder_above_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder away")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(statefiles.StateDirError, match=f"{theirs} is owned by uid 65534"):
        statefiles.prepare_state_dir(theirs / "state")


def test_the_folder_rule_row_by_row() -> None:
    def st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))

    rule = statefiles.unsafe_folder
    assert rule(st(0o755), 1000) is None
    assert rule(st(0o755, uid=1000), 1000) is None
    assert rule(st(0o755, uid=1001), 1000) == "is owned by uid 1001"
    assert rule(st(0o775, gid=0), 1000) is None  # root's group: root already
    assert rule(st(0o775, gid=50), 1000) == "is writable by others and has no sticky bit"
    assert rule(st(0o757), 1000) == "is writable by others and has no sticky bit"
    assert rule(st(0o1777), 1000) is None


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """What a planted link points at: it must come out as it went in."""
    folder = tmp_path / "target"
    folder.mkdir(mode=0o755)
    (folder / "file").write_text("untouched")
    (folder / "file").chmod(0o644)
    return folder


def untouched(target: Path) -> bool:
    return (
        mode(target) == 0o755
        and mode(target / "file") == 0o644
        and (target / "file").read_text() == "untouched"
        and sorted(p.name for p in target.iterdir()) == ["file"]
    )


def heal_with_pull(state: Path) -> tuple[MemoryEngine, str | None]:
    engine = MemoryEngine()
    healer = make_healer(heal_config({"match": A, "pull": True}), engine, state)
    return engine, heal_once(healer, A)


def test_a_planted_logs_link_fails_the_heal_and_leaves_its_target(
    tmp_path: Path, target: Path
) -> None:
    state = statefiles.prepare_state_dir(tmp_path / "state")
    (state / "logs").symlink_to(target)
    engine, failure = heal_with_pull(state)
    assert failure is not None
    assert f"{state / 'logs'} is a symbolic link or not what it should be; remove it" in failure
    assert engine.pulls == [] and untouched(target)


def test_a_planted_lock_link_fails_the_heal_and_leaves_its_target(
    tmp_path: Path, target: Path
) -> None:
    state = statefiles.prepare_state_dir(tmp_path / "state")
    (state / "locks").mkdir(mode=0o700)
    lock = state / "locks" / f"{statefiles.tag_file_name(A)}.lock"
    lock.symlink_to(target / "file")
    engine, failure = heal_with_pull(state)
    assert failure is not None and f"{lock} is a symbolic link" in failure
    assert engine.pulls == [] and untouched(target)


def test_a_planted_log_file_link_is_passed_by(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transcript's name is predictable (here: fixed); one that exists was not
    made by this heal, so the heal writes under another name and goes on."""
    monkeypatch.setattr(retention, "log_name", lambda tag, started: f"{tag}-predicted")
    state = statefiles.prepare_state_dir(tmp_path / "state")
    (state / "logs").mkdir(mode=0o700)
    planted = f"{statefiles.tag_file_name(A)}-predicted.log"
    (state / "logs" / planted).symlink_to(target / "file")
    engine, failure = heal_with_pull(state)
    assert failure is None and engine.pulls == [A]
    written = [p for p in (state / "logs").iterdir() if p.name != planted]
    assert len(written) == 1 and not written[0].is_symlink()
    assert written[0].name.startswith(f"{statefiles.tag_file_name(A)}-predicted-")
    assert f"produced {A}" in written[0].read_text()
    assert untouched(target)


def test_a_planted_spool_link_fails_the_spool_and_leaves_its_target(
    tmp_path: Path, target: Path
) -> None:
    state = statefiles.prepare_state_dir(tmp_path / "state")
    (state / "spool").symlink_to(target)
    (target / f"{spool.PREFIX}left").write_text("not the sweep's")
    with pytest.raises(OSError, match="spool is a symbolic link"):
        spool.Spool(state)
    assert spool.sweep(state) == 0
    (target / f"{spool.PREFIX}left").unlink()
    assert untouched(target)


def test_a_planted_remembered_tags_link_is_not_followed(tmp_path: Path, target: Path) -> None:
    state = statefiles.prepare_state_dir(tmp_path / "state")
    (state / memoryfile.FILE_NAME).symlink_to(target / "file")
    assert memoryfile.load(state).tags() == []
    memoryfile.save(state, TagMemory().dumps())  # replaces the link, writes nothing through it
    assert not (state / memoryfile.FILE_NAME).is_symlink()
    assert untouched(target)


def test_tags_a_32_bit_hash_would_confuse_get_names_of_their_own() -> None:
    """Older names carried 8 hex digits of the hash: a pair of tags sharing one
    (a victim's and a crafted one) was a second's search away, and shared a
    lock file and a log group."""
    first, second = tags_sharing_a_short_hash()
    assert statefiles.tag_file_name(first) != statefiles.tag_file_name(second)
    assert len(statefiles.tag_file_name(first).rsplit("-", 1)[1]) == statefiles.TAG_HASH_HEX
