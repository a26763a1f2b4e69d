"""The inputs hash: one digest of the files a recipe is built from.

The cache key (``recipes.cachekey``) includes it, so that changed sources
never pull an old build. It is a module of its own because it answers a
question beyond the cache: "did the sources change since this image was
built?".

Rules:
- ``inputs`` globs are relative to the recipe's build context or workdir.
  ``*``, ``?`` and ``[...]`` stay within one path component, ``**`` is any
  number of them, hidden files count, and a glob that names a folder takes
  every file under it. ``.`` (or ``./``, ``src/.``) is the folder itself.
  A symlinked folder is one entry, never entered, not even by a literal
  path through it: it may lead out of the tree, or round in a loop.
- A folder that cannot be listed is an error, like a file that cannot be
  read: skipping it would leave its files out of the key.
- Each file is hashed on its own into an entry (mode, size, sha256 of its
  content), and the inputs hash is a sha256 over ``relative path \\0 mode \\0
  size \\0 content hex`` lines in order of path (``/``-separated). One
  changed file is then re-hashed alone (``file_entry``) and the whole hash
  recomputed from the entries kept (``tree_hash``), which is what keeps a
  watched tree's hash current at the cost of the change, not of the tree.
- The mode is the one git would record: ``100755`` if any execute bit is
  set, else ``100644``, and ``120000`` for a symlink, whose content is its
  target (it is not followed). Hosts check the same sources out under
  different umasks; full permission bits would give each host its own key
  and the fleet would never share a build.
- Other kinds of file (fifos, sockets, devices) are skipped: reading a fifo
  would block, and a build does not copy them.
- A glob that matches nothing is an error, not an empty set: it is almost
  always a typo, and a key that silently ignores the sources is the stale
  build the key exists to prevent.
- Names are hashed as their bytes (``os.fsencode``): a file name need not
  be UTF-8.
- The work is blocking file I/O; callers run ``inputs_hash`` in a thread.

Theory of operation: each glob is split into components (``.`` and empty
ones dropped). Its literal leading components are followed without a walk,
checking that none is a symlink; the rest, if any, is matched against an
``os.walk`` of that prefix only, so ``src/*.py`` never walks ``node_modules``.
Every hit that is a real folder is expanded to the files under it. The
sorted union is then hashed file by file, streaming each content.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


class InputsError(Exception):
    """The inputs cannot be hashed; the text says which glob or file, for a person."""


def _matches(parts: Sequence[str], path: Sequence[str]) -> bool:
    """Whether path components match glob components; ``**`` is any number of them."""
    if not parts:
        return not path
    if parts[0] == "**":
        return any(_matches(parts[1:], path[skip:]) for skip in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], parts[0]) and _matches(parts[1:], path[1:])


def _unreadable(error: OSError) -> InputsError:
    return InputsError(f"inputs: cannot read {error.filename}: {error.strerror}")


def _refuse(error: OSError) -> None:
    """os.walk's onerror: a folder it cannot list would otherwise vanish from the key."""
    raise _unreadable(error)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _tree(root: Path) -> Iterator[tuple[str, bool]]:
    """Every path under ``root`` (relative), and whether it is a folder to go into."""
    for folder, dirs, files in os.walk(root, onerror=_refuse):
        base = os.path.relpath(folder, root).replace(os.sep, "/")
        base = "" if base == "." else base
        for name in dirs:
            yield _join(base, name), not (Path(folder) / name).is_symlink()
        for name in files:
            yield _join(base, name), False


def _entered(root: Path, folders: Sequence[str]) -> bool:
    """Whether ``folders`` lead down from ``root`` through real folders, no symlink."""
    path = root
    for name in folders:
        path = path / name
        if path.is_symlink() or not path.is_dir():
            return False
    return True


def _hits(root: Path, parts: Sequence[str]) -> list[tuple[str, bool]]:
    """The paths one glob's components name, and whether each is a folder to go into."""
    literal = 0
    while literal < len(parts) and not glob.has_magic(parts[literal]):
        literal += 1
    prefix = "/".join(parts[:literal])
    if literal == len(parts):
        full = root / prefix
        if not _entered(root, parts[:-1]) or not os.path.lexists(full):
            return []
        return [(prefix, full.is_dir() and not full.is_symlink())]
    if not _entered(root, parts[:literal]):
        return []
    rest = parts[literal:]
    return [
        (_join(prefix, path), folder)
        for path, folder in _tree(root / prefix)
        if _matches(rest, path.split("/"))
    ]


def input_files(root: Path, patterns: Sequence[str]) -> list[str]:
    """The relative paths the globs name, sorted and without repeats."""
    if not root.is_dir():
        raise InputsError(f"inputs: {root} is not a folder")
    found: set[str] = set()
    for pattern in patterns:
        parts = [part for part in pattern.split("/") if part not in ("", ".")]
        hits = _hits(root, parts)
        if not hits:
            raise InputsError(f"inputs: {pattern!r} matches no file under {root}")
        for path, folder in hits:
            if folder:
                found.update(_join(path, sub) for sub, deeper in _tree(root / path) if not deeper)
            else:
                found.add(path)
    assert not any(path.startswith("/") for path in found), found
    return sorted(found)


@dataclass(frozen=True)
class FileEntry:
    """What one input file adds to the hash, and when it last changed."""

    mode: bytes
    size: int
    digest: str
    """sha256 hex of the content (of the target, for a symlink)."""
    mtime: float
    """Not hashed: a checkout touches every file. Only adoption reads it."""


Entries = Mapping[str, FileEntry]
"""Input files by relative path: a recipe's sources, file by file."""


def file_entry(root: Path, relative: str) -> FileEntry | None:
    """The entry of one file, or None for a kind that is skipped; raises OSError."""
    path = root / relative
    info = path.lstat()
    digest = hashlib.sha256()
    if stat.S_ISLNK(info.st_mode):
        target = os.fsencode(os.readlink(path))
        digest.update(target)
        return FileEntry(b"120000", len(target), digest.hexdigest(), info.st_mtime)
    if not stat.S_ISREG(info.st_mode):
        return None
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    mode = b"100755" if info.st_mode & 0o111 else b"100644"
    return FileEntry(mode, size, digest.hexdigest(), info.st_mtime)


def input_entries(root: Path, patterns: Sequence[str]) -> dict[str, FileEntry]:
    """Every file the globs name, with its entry; raises InputsError."""
    entries: dict[str, FileEntry] = {}
    try:
        for relative in input_files(root, patterns):
            entry = file_entry(root, relative)
            if entry is not None:
                entries[relative] = entry
    except OSError as error:
        raise _unreadable(error) from None
    return entries


def tree_hash(entries: Entries) -> str:
    """``sha256:<hex>`` over the entries in path order; "" for none at all."""
    if not entries:
        return ""
    digest = hashlib.sha256()
    for relative in sorted(entries):
        entry = entries[relative]
        digest.update(
            b"%s\x00%s\x00%d\x00%s\n"
            % (os.fsencode(relative), entry.mode, entry.size, entry.digest.encode())
        )
    return f"sha256:{digest.hexdigest()}"


def named(patterns: Sequence[str], relative: str) -> bool:
    """Whether a file at ``relative`` would be one of the inputs: a glob names
    it or a folder it is in. Symlinked folders on the way are not checked; the
    full rescan corrects that rare case."""
    path = relative.split("/")
    for pattern in patterns:
        parts = [part for part in pattern.split("/") if part not in ("", ".")]
        if any(_matches(parts, path[:end]) for end in range(len(path) + 1)):
            return True
    return False


def inputs_hash(root: Path, patterns: Sequence[str]) -> str:
    """``sha256:<hex>`` of the files ``patterns`` name under ``root``; "" for no globs."""
    if not patterns:
        return ""
    return tree_hash(input_entries(root, patterns))
