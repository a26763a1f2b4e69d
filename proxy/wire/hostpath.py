"""A host path resolved as the kernel resolves it, one symlink at a time, in another root.

A bind source is judged where it leads, not where it is written: a symlink
inside an allowed folder must not lead out of it. It has to be resolved as
dockerd will see it, in dockerd's mount namespace (the unit's
``PrivateTmp=yes`` gives the proxy a ``/tmp`` of its own), so ``realpath``
in the proxy's own root will not do: an absolute symlink found through
``/proc/PID/root`` would be followed in the proxy's root.

Rules:
- Each component is looked up in turn; a symlink's target replaces it (an
  absolute target starting again from the root), and ``..`` after a
  symlink goes up from where the symlink led, as the kernel does (not as
  ``path.Clean`` does, which runs first, in the caller).
- A component that is not there is kept as written, and so is the rest
  (dockerd makes a missing ``Binds`` source as a folder).
- More than 40 symlinks (Linux's ``MAXSYMLINKS``) is an error, as ``ELOOP``.
- Pure: the one lookup, ``readlink`` of a path in the daemon's root (the
  target, None for a component that is no symlink or is not there), is
  given by the caller.

Theory of operation: the components still to walk are a stack; each is
looked up below the resolved ones, and a symlink pushes its target's
components in its place.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_LINKS = 40


class Loop(ValueError):
    """Too many symlinks on the way (``ELOOP``)."""


def resolve(path: str, readlink: Callable[[str], str | None]) -> str:
    """``path`` (absolute) as the kernel reaches it through ``readlink``'s root."""
    pending = list(reversed(path.split("/")))
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        target = readlink("/" + "/".join([*done, part]))
        if target is None:
            done.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise Loop(f"{path}: more than {MAX_LINKS} symbolic links")
        if target.startswith("/"):
            done = []
        pending.extend(reversed(target.split("/")))
    return "/" + "/".join(done)
