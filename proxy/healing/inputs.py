"""The inputs hash: one digest of the files a recipe is built from.

The cache key (``recipes.cachekey``) includes it, so that changed sources
never pull an old build. It is a module of its own because it answers a
question beyond the cache: "did the sources change since this image was
built?".

Rules:
- ``inputs`` globs are relative to the recipe's build context or workdir.
  ``*``, ``?`` and ``[...]`` stay within one path component, ``**`` is any
  number of them, hidden files count, and a glob that names a folder takes
  every file under it. A symlinked folder is one entry, never entered: it
  may lead out of the tree, or round in a loop.
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
- The work is blocking file I/O; callers run ``inputs_hash`` in a thread.
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


def _tree(root: Path) -> Iterator[tuple[str, bool]]:
    """Every path under ``root`` (relative), and whether it is a folder to go into."""
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in dirs:
            yield (base / name).as_posix(), not (Path(folder) / name).is_symlink()
        for name in files:
            yield (base / name).as_posix(), False


def input_files(root: Path, patterns: Sequence[str]) -> list[str]:
    """The relative paths the globs name, sorted and without repeats."""
    if not root.is_dir():
        raise InputsError(f"inputs: {root} is not a folder")
    globs = [[part for part in pattern.split("/") if part not in ("", ".")] for pattern in patterns]
    # os.walk does not follow symlinked folders, unlike glob's "**".
    entries = list(_tree(root)) if any(glob.has_magic(p) for p in patterns) else []
    found: set[str] = set()
    for pattern, parts in zip(patterns, globs, strict=True):
        if not glob.has_magic(pattern):
            relative = "/".join(parts)
            full = root / relative
            real_folder = full.is_dir() and not full.is_symlink()
            hits = [(relative, real_folder)] if os.path.lexists(full) else []
        else:
            hits = [(path, folder) for path, folder in entries if _matches(parts, path.split("/"))]
        if not hits:
            raise InputsError(f"inputs: {pattern!r} matches no file under {root}")
        for path, folder in hits:
            if folder:
                found.update(f"{path}/{sub}" for sub, deeper in _tree(root / path) if not deeper)
            else:
                found.add(path)
    return sorted(found)


def _record(digest: hashlib._Hash, root: Path, relative: str) -> None:
    path = root / relative
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path).encode()
        digest.update(b"%s\x00120000\x00%d\x00" % (relative.encode(), len(target)) + target)
        return
    if not stat.S_ISREG(info.st_mode):
        return
    mode = b"100755" if info.st_mode & 0o111 else b"100644"
    digest.update(b"%s\x00%s\x00%d\x00" % (relative.encode(), mode, info.st_size))
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
        raise InputsError(f"inputs: cannot read {error.filename}: {error.strerror}") from None
    return f"sha256:{digest.hexdigest()}"
