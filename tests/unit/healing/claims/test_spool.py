"""Spool files: private, nameless from the start, closed only when idle, swept after a crash."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from proxy.healing.claims.spool import PREFIX, READ_PIECE, Spool, sweep, write_all


def test_the_folder_is_private_and_the_file_has_no_name(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)
    with Spool(tmp_path) as spool:
        write_all(spool.file, b"context")
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert stat.S_IMODE(os.fstat(spool.file.fileno()).st_mode) == 0o600
        assert os.fstat(spool.file.fileno()).st_nlink == 0
        assert list((tmp_path / "spool").iterdir()) == []
    assert spool.file.closed


def test_replay_reads_everything_written_in_bounded_pieces(tmp_path: Path) -> None:
    data = os.urandom(2 * READ_PIECE + 17)

    async def read_back() -> list[bytes]:
        with Spool(tmp_path) as spool:
            await spool.run(lambda f: write_all(f, data))
            return [piece async for piece in spool.replay()]

    pieces = asyncio.run(read_back())
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == READ_PIECE


def test_a_cancelled_caller_does_not_close_the_file_under_its_worker(tmp_path: Path) -> None:
    """The descriptor's number could be reused by then, and the write land elsewhere."""
    started, release = threading.Event(), threading.Event()

    def slow_write(file: IO[bytes]) -> None:
        started.set()
        release.wait(10)
        write_all(file, b"late")

    async def cancel_mid_write() -> Spool:
        spool = Spool(tmp_path)

        async def build() -> None:
            with spool:
                await spool.run(slow_write)

        task = asyncio.ensure_future(build())
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not spool.file.closed
        release.set()
        while not spool.file.closed:  # closed by the worker's completion, on the loop
            await asyncio.sleep(0.01)
        return spool

    asyncio.run(asyncio.wait_for(cancel_mid_write(), 10))


def test_sweep_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / f"{PREFIX}abc123").write_bytes(b"left over")
    (folder / "unrelated").write_bytes(b"kept")
    assert sweep(tmp_path) == 1
    assert [p.name for p in folder.iterdir()] == ["unrelated"]
    assert sweep(tmp_path / "never-made") == 0


def test_spool_work_goes_on_while_the_default_executor_is_busy(tmp_path: Path) -> None:
    release = threading.Event()

    async def main() -> bytes:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        blocker = asyncio.ensure_future(asyncio.to_thread(release.wait, 30))
        try:
            with Spool(tmp_path) as spool:
                await asyncio.wait_for(spool.run(lambda f: write_all(f, b"on")), 10)
                return b"".join([piece async for piece in spool.replay()])
        finally:
            release.set()
            await blocker

    assert asyncio.run(main()) == b"on"
