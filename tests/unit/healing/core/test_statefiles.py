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
from support import MemoryEngine, heal_config, heal_once, make_healer, wait_for

from proxy.healing.core import healer as healer_module
from proxy.healing.core import statefiles
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
    stale = state / "locks" / f"{healer_module._file_name(A)}.lock"
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
        log = LogFile(disk, "slow.log")  # type: ignore[arg-type]
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
        log = LogFile(disk, "full.log")  # type: ignore[arg-type]
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
        log = LogFile(disk, "hung.log")  # type: ignore[arg-type]
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
        log = LogFile(disk, "stuck.log")  # type: ignore[arg-type]
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
