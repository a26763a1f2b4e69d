"""Whether root may trust a file it runs: sshd's StrictModes, for the proxy's own files.

Root runs what the config says, and any caller of the socket can start a heal
(``docker rmi``, then ``docker run``). So whoever can change the config, a
recipe's program, the script it hands to a shell or ``make``, or the folder
it runs in, can run commands as root. Before root starts or reloads, every
such path is held to one rule, and a path that breaks it is refused with a
line naming it and the fix.

Rules:
- Owner: root, the running user, or a member of a root-equivalent group (the
  group that may write the daemon's socket, or the proxy's own: its members
  can already run anything as root through Docker). Run as another user,
  only root and that user count.
- Not writable by anyone else: never world-writable; group-writable only by
  a root-equivalent group, or by the owner's own primary group (a user's
  private group, the umask 002 layout) while every member it lists is
  trusted. Any other group is refused whoever is in it today: membership is
  read once, at the check, one ``usermod -aG`` changes it, and a user
  database that does not enumerate (LDAP) hides members.
- A character device (``--config=/dev/null``) is judged by its owner only:
  what root reads from it is the driver's, not text someone wrote there.
- A folder above a checked path may be writable by others when it has the
  sticky bit (``/tmp``): then they cannot rename or remove the entry of a
  trusted owner in it. The checked path itself gets no such pass: others
  could add files to a sticky workdir.
- A path at or under a ``[security] trust_paths`` folder is not checked. That
  is a foot-gun, for shared folders whose writers are trusted some other way.

Theory of operation: pure. ``trustscan`` walks the config and gathers the
stat facts (``Checked``) and who is trusted (``Principals``); ``problems``
applies the rule to them, so every rule is tested without touching a disk.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Checked:
    """One path root would trust, with what ``stat`` says of it."""

    path: str
    role: str
    """What it is to the proxy, for the message: ``images[0].command[0]``."""
    uid: int
    gid: int
    mode: int
    """``st_mode``, file type bits included."""
    above: bool = False
    """A folder above what is run or read, rather than that thing itself."""


@dataclass(frozen=True)
class Principals:
    """Who may own and write what root runs, and their names for messages."""

    trusted: frozenset[int]
    """uids: root, the running user, members of root-equivalent groups."""
    members: Mapping[int, frozenset[int]]
    """gid -> member uids (supplementary and primary), for the groups of checked paths."""
    who: str
    """The trusted owners in words: ``root or a member of group docker``."""
    users: Mapping[int, str]
    groups: Mapping[int, str]
    equivalent: frozenset[int]
    """gids of the root-equivalent groups (none for a run as another user)."""
    primary: Mapping[int, int]
    """uid -> primary gid, to know an owner's own group."""


def _sticky_folder_above(checked: Checked) -> bool:
    return checked.above and stat.S_ISDIR(checked.mode) and bool(checked.mode & stat.S_ISVTX)


def problem(checked: Checked, principals: Principals) -> str | None:
    """Why root must not trust ``checked``, with the fix; None if it may."""
    path, mode = checked.path, checked.mode
    where = f"{path} ({checked.role})"
    if checked.uid not in principals.trusted:
        owner = principals.users.get(checked.uid, f"uid {checked.uid}")
        return f"{where} is owned by {owner}, not {principals.who}; fix: chown root {path}"
    if _sticky_folder_above(checked) or stat.S_ISCHR(mode):
        return None
    permissions = f"mode {stat.S_IMODE(mode):04o}"
    if mode & stat.S_IWOTH:
        return f"{where} is writable by every user ({permissions}); fix: chmod o-w {path}"
    if not mode & stat.S_IWGRP or checked.gid in principals.equivalent:
        return None
    group = principals.groups.get(checked.gid, f"gid {checked.gid}")
    if principals.primary.get(checked.uid) != checked.gid:
        return (
            f"{where} is writable by group {group} ({permissions}), neither "
            f"root-equivalent nor its owner's own; fix: chmod g-w {path}"
        )
    outsiders = principals.members.get(checked.gid, frozenset()) - principals.trusted
    if outsiders:
        names = ", ".join(sorted(principals.users.get(uid, f"uid {uid}") for uid in outsiders))
        return (
            f"{where} is writable by group {group} ({permissions}), which has {names}; "
            f"fix: chmod g-w {path}"
        )
    return None


def exempt(path: str, trust_paths: Iterable[str]) -> bool:
    """Whether ``path`` is at or under one of the ``[security] trust_paths`` folders."""
    return any(
        path == folder or path.startswith(folder.rstrip("/") + "/") for folder in trust_paths
    )


def problems(
    checked: Iterable[Checked], principals: Principals, trust_paths: Iterable[str] = ()
) -> list[str]:
    """Every problem, once per path. A path reached both as itself and as a folder
    above something is judged as itself, the stricter of the two."""
    folders = tuple(trust_paths)
    seen: set[str] = set()
    found: list[str] = []
    for item in sorted(checked, key=lambda c: c.above):
        if item.path in seen or exempt(item.path, folders):
            continue
        seen.add(item.path)
        reason = problem(item, principals)
        if reason is not None:
            found.append(reason)
    return found
