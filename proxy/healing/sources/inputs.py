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
- Each file contributes ``relative path \\0 mode \\0 size \\0 content``, in
  order of path (``/``-separated). The size keeps one file's content from
  passing for the next file's path.
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
from collections.abc import Iterator, Sequence
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


def _record(digest: hashlib._Hash, root: Path, relative: str) -> None:
    path = root / relative
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        target = os.fsencode(os.readlink(path))
        digest.update(b"%s\x00120000\x00%d\x00" % (os.fsencode(relative), len(target)) + target)
        return
    if not stat.S_ISREG(info.st_mode):
        return
    mode = b"100755" if info.st_mode & 0o111 else b"100644"
    digest.update(b"%s\x00%s\x00%d\x00" % (os.fsencode(relative), mode, info.st_size))
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def inputs_hash(root: Path, patterns: Sequence[str]) -> str:
    """``sha256:<hex>`` of the files ``patterns`` name under ``root``; "" for no globs."""
    if not patterns:
        return ""
    digest = hashlib.sha256()
    try:
        for relative in input_files(root, patterns):
            _record(digest, root, relative)
    except OSError as error:
        raise _unreadable(error) from None
    return f"sha256:{digest.hexdigest()}"
