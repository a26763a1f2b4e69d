"""The build context as a tar stream, made the way ``docker build`` makes it.

Rules:
- The context never sits in memory whole. File data is read one bounded
  piece at a time, in a worker thread, and handed on before the next read;
  peak memory is about one chunk however large the context is.
- Every chunk yielded is exactly ``chunk_size`` bytes except the last, so a
  chunked HTTP upload sees steady, bounded writes.
- ``.dockerignore`` at the context root decides what is sent (see
  ``dockerignore``); the Dockerfile and ``.dockerignore`` are always sent.
- Entries are regular files, directories and symlinks, with their
  permission bits and modification times; owner is root (uid and gid 0, no
  names), as the docker CLI sends them. Symlinks are stored, never followed.
  Sockets, FIFOs and devices are left out: a build cannot use them.
- Order is deterministic: depth first, names sorted within each directory,
  a directory's entry before its contents. Same tree, same bytes, so the
  builder's cache sees the same context.
- A file that shrinks while it is read fails the stream (``ContextError``)
  instead of sending a tar whose header lies about the size; one that grows
  is cut at the size its header announced.

Theory of operation:

``stream_context`` is an async generator. It lists one directory at a time
(in a thread), consults the ignore rules, and for each kept entry appends a
tar header (``TarInfo.tobuf`` in PAX format, so long names and huge files
need no special casing) and then the file's bytes, zero-padded to the
512-byte block, into a small buffer that is cut into ``chunk_size`` pieces
as it fills. Two zero blocks end the archive. A directory that the rules
exclude is either pruned outright or, when an exception could re-include
something below it, walked without emitting its own entry (the tar reader
creates it implicitly), which is what the docker CLI does too.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ...recipes.dockerignore import IgnoreRules, IgnoreSyntaxError
from ...recipes.recipe import ConcreteRecipe

DEFAULT_CHUNK_SIZE = 1 << 20

_BLOCK = tarfile.BLOCKSIZE


def read_dockerfile_from_disk(concrete: ConcreteRecipe, *, limit: int) -> str | None:
    """The build's Dockerfile text, at most ``limit`` bytes and one more, or None
    if it is not a build or cannot be read.

    An unreadable Dockerfile only hides bases; the build itself will report it.
    The byte past ``limit`` is what tells the caller the file is too big to
    parse, without reading a file of any size into memory to find out.
    """
    if concrete.build is None:
        return None
    try:
        path = concrete.build.context / concrete.build.dockerfile
        with path.open("rb") as file:
            return file.read(limit + 1).decode("utf-8", errors="replace")
    except OSError:
        return None


class ContextError(Exception):
    """The context directory cannot be sent as it is."""


@dataclass(frozen=True)
class _Entry:
    rel: str
    """Slash-separated path inside the context."""
    path: Path
    st: os.stat_result


def tar_header(entry_name: str, st: os.stat_result, link_target: str = "") -> bytes:
    """One tar header for a file, directory or symlink whose ``lstat`` is ``st``."""
    info = tarfile.TarInfo(entry_name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = link_target
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def padding(size: int) -> bytes:
    """The zeros that fill file data of ``size`` bytes out to a whole block."""
    return bytes(-size % _BLOCK)


def load_rules(context: Path, dockerfile: str) -> IgnoreRules:
    """The context's .dockerignore (if any), keeping what the builder must read."""
    try:
        text = (context / ".dockerignore").read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ContextError(f"cannot read {context / '.dockerignore'}: {exc.strerror}") from None
    try:
        rules = IgnoreRules.from_text(text)
    except IgnoreSyntaxError as exc:
        raise ContextError(str(exc)) from None
    return rules.keeping([dockerfile, ".dockerignore"])


def _list_dir(directory: Path, rel: str) -> list[_Entry]:
    try:
        with os.scandir(directory) as entries:
            found = [
                _Entry(f"{rel}/{e.name}".lstrip("/"), Path(e.path), e.stat(follow_symlinks=False))
                for e in entries
            ]
    except OSError as exc:
        raise ContextError(f"cannot read {exc.filename or directory}: {exc.strerror}") from None
    return sorted(found, key=lambda e: e.rel)


async def _walk(root: Path, rel: str, rules: IgnoreRules) -> AsyncIterator[tuple[_Entry, bool]]:
    """Yield ``(entry, send)`` depth first; ``send`` is false for an excluded
    directory that is walked only for the exceptions inside it."""
    for entry in await asyncio.to_thread(_list_dir, root / rel if rel else root, rel):
        if stat.S_ISDIR(entry.st.st_mode):
            if rules.prunes(entry.rel):
                continue
            yield entry, not rules.excludes(entry.rel)
            async for inner in _walk(root, entry.rel, rules):
                yield inner
        elif not rules.excludes(entry.rel) and (
            stat.S_ISREG(entry.st.st_mode) or stat.S_ISLNK(entry.st.st_mode)
        ):
            yield entry, True


async def _link_target(entry: _Entry) -> str:
    try:
        return await asyncio.to_thread(os.readlink, entry.path)
    except OSError as exc:
        raise ContextError(f"cannot read link {entry.path}: {exc.strerror}") from None


async def _file_data(entry: _Entry, room: int, chunk_size: int) -> AsyncIterator[bytes]:
    """The file's bytes as its header announced them, the first piece at most
    ``room`` long so it tops up a partly filled chunk."""
    remaining = entry.st.st_size
    try:
        fd = await asyncio.to_thread(os.open, entry.path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ContextError(f"cannot read {entry.path}: {exc.strerror}") from None
    try:
        want = room
        while remaining:
            piece = await asyncio.to_thread(os.read, fd, min(want, remaining))
            if not piece:
                raise ContextError(f"{entry.path} shrank while it was being sent")
            remaining -= len(piece)
            want = chunk_size
            yield piece
    finally:
        os.close(fd)


async def stream_context(
    context: Path, dockerfile: str = "Dockerfile", *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """The tar of ``context`` that ``docker build`` would upload, in chunks."""
    if not context.is_dir():
        raise ContextError(f"build context {context} is not a directory")
    rules = await asyncio.to_thread(load_rules, context, dockerfile)
    pending = bytearray()

    def full_chunks() -> list[bytes]:
        cut = len(pending) - len(pending) % chunk_size
        chunks = [bytes(pending[i : i + chunk_size]) for i in range(0, cut, chunk_size)]
        del pending[:cut]
        return chunks

    async for entry, send in _walk(context, "", rules):
        if not send:
            continue
        target = await _link_target(entry) if stat.S_ISLNK(entry.st.st_mode) else ""
        pending += tar_header(entry.rel, entry.st, target)
        if stat.S_ISREG(entry.st.st_mode):
            for chunk in full_chunks():
                yield chunk
            async for piece in _file_data(entry, chunk_size - len(pending), chunk_size):
                pending += piece
                for chunk in full_chunks():
                    yield chunk
            pending += padding(entry.st.st_size)
        for chunk in full_chunks():
            yield chunk
    pending += bytes(2 * _BLOCK)
    for chunk in full_chunks():
        yield chunk
    if pending:
        yield bytes(pending)
