"""The build-context tar: what is in it, how it is cut, and that it streams."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from proxy.healing.sources.buildcontext import (
    ContextError,
    read_dockerfile_from_disk,
    stream_context,
)
from proxy.recipes.patterns import instantiate
from proxy.recipes.recipe import Recipe


async def _collect(context: Path, chunk_size: int = 1 << 20) -> list[bytes]:
    return [chunk async for chunk in stream_context(context, chunk_size=chunk_size)]


def tar_of(context: Path) -> tarfile.TarFile:
    data = b"".join(asyncio.run(_collect(context)))
    return tarfile.open(fileobj=io.BytesIO(data))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text(
        "# build junk\n*.log\ncache\n!cache/keep\nDockerfile\n.dockerignore\n"
    )
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "private").write_text("p")
    (tmp_path / "private").chmod(0o600)
    (tmp_path / "debug.log").write_text("noise")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "sub" / "deep" / "trace.log").write_text("noise")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "blob").write_text("dropped")
    (tmp_path / "cache" / "keep").write_text("kept")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to("run.sh")
    (tmp_path / "dangling").symlink_to("nowhere")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


def test_members_follow_dockerignore_in_sorted_order(tree: Path) -> None:
    with tar_of(tree) as tar:
        names = tar.getnames()
    assert names == [
        ".dockerignore",
        "Dockerfile",
        "cache/keep",
        "dangling",
        "empty",
        "link",
        "private",
        "run.sh",
        "sub",
        "sub/deep",
        "sub/deep/data.bin",
        "sub/deep/trace.log",  # "*.log" is for the top level only, as in docker
    ]


def test_members_keep_type_mode_and_content_owned_by_root(tree: Path) -> None:
    with tar_of(tree) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())
        assert members["run.sh"].mode == 0o755
        assert members["private"].mode == 0o600
        assert members["sub"].isdir()
        assert members["link"].issym() and members["link"].linkname == "run.sh"
        assert members["dangling"].issym() and members["dangling"].linkname == "nowhere"
        data = tar.extractfile(members["sub/deep/data.bin"])
        assert data is not None and data.read() == bytes(range(256)) * 3
        keep = tar.extractfile(members["cache/keep"])
        assert keep is not None and keep.read() == b"kept"
        assert members["run.sh"].mtime == int((tree / "run.sh").stat().st_mtime)


def test_same_tree_same_bytes(tree: Path) -> None:
    assert asyncio.run(_collect(tree)) == asyncio.run(_collect(tree))


def test_chunks_are_full_except_the_last(tree: Path) -> None:
    chunks = asyncio.run(_collect(tree, chunk_size=700))
    assert len(chunks) > 3
    assert all(len(chunk) == 700 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 700
    assert sum(map(len, chunks)) % tarfile.BLOCKSIZE == 0


def test_long_and_non_ascii_names(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / ("é" * 60)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    with tar_of(tmp_path) as tar:
        assert tar.getnames()[-1] == f"{'d' * 120}/{'é' * 60}/f"


def test_large_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    size = 256 << 20
    with (tmp_path / "huge").open("wb") as handle:
        handle.truncate(size)  # sparse: the test's disk use stays small

    async def sizes() -> list[int]:
        return [len(chunk) async for chunk in stream_context(tmp_path, chunk_size=1 << 20)]

    tracemalloc.start()
    try:
        lengths = asyncio.run(sizes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(lengths) == 1 << 20
    assert sum(lengths) == tarfile.BLOCKSIZE + size + 2 * tarfile.BLOCKSIZE
    assert peak < 16 << 20


def test_a_file_that_shrinks_fails_the_stream(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 2000)

    async def run() -> None:
        chunks = stream_context(tmp_path, chunk_size=tarfile.BLOCKSIZE)
        header = await anext(chunks)  # the header is out; its size is promised
        assert header[:1] == b"f"
        (tmp_path / "f").write_bytes(b"x" * 10)
        async for _ in chunks:
            pass

    with pytest.raises(ContextError, match="shrank"):
        asyncio.run(run())


def test_bad_dockerignore_is_a_context_error(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("[unclosed\n")
    with pytest.raises(ContextError, match="unclosed"):
        asyncio.run(_collect(tmp_path))


def test_missing_context_is_a_context_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="not a directory"):
        asyncio.run(_collect(tmp_path / "absent"))


def test_dockerfile_elsewhere_is_kept(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "app.Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "docker" / "other").write_text("x")
    (tmp_path / ".dockerignore").write_text("docker\n")

    async def run() -> list[bytes]:
        return [c async for c in stream_context(tmp_path, "docker/app.Dockerfile")]

    with tarfile.open(fileobj=io.BytesIO(b"".join(asyncio.run(run())))) as tar:
        assert tar.getnames() == [".dockerignore", "docker/app.Dockerfile"]


def test_read_dockerfile_from_disk_without_a_file() -> None:
    pulled = instantiate(Recipe(index=0, match="a", kind="pull", pull="a"), "a", {})
    assert read_dockerfile_from_disk(pulled, limit=10) is None
    missing = Recipe(index=0, match="a", kind="build", build={"context": "/nonexistent/dhp"})
    assert read_dockerfile_from_disk(instantiate(missing, "a", {}), limit=10) is None


def test_read_dockerfile_from_disk_reads_one_byte_past_the_limit(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM a\n" * 1000)
    recipe = Recipe(index=0, match="a", kind="build", build={"context": str(tmp_path)})
    assert read_dockerfile_from_disk(instantiate(recipe, "a", {}), limit=10) == "FROM a\nFROM"
