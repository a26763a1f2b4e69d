"""Spool files: private, nameless from the start, swept after a crash."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from proxy.healing.spool import PREFIX, READ_PIECE, open_spool, replay, sweep


def test_the_folder_is_private_and_the_file_has_no_name(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)
    with open_spool(tmp_path) as spool:
        spool.write(b"context")
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert stat.S_IMODE(os.fstat(spool.fileno()).st_mode) == 0o600
        assert os.fstat(spool.fileno()).st_nlink == 0
        assert list((tmp_path / "spool").iterdir()) == []


def test_replay_reads_everything_written_in_bounded_pieces(tmp_path: Path) -> None:
    data = os.urandom(2 * READ_PIECE + 17)

    async def read_back() -> list[bytes]:
        with open_spool(tmp_path) as spool:
            spool.write(data)  # still in the file object's buffer: replay flushes it
            return [piece async for piece in replay(spool)]

    pieces = asyncio.run(read_back())
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == READ_PIECE


def test_sweep_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / f"{PREFIX}abc123").write_bytes(b"left over")
    (folder / "unrelated").write_bytes(b"kept")
    assert sweep(tmp_path) == 1
    assert [p.name for p in folder.iterdir()] == ["unrelated"]
    assert sweep(tmp_path / "never-made") == 0
