"""What ``trust`` judges: the paths root would run for a config, and who is trusted.

Rules:
- For the config file: the file and every folder above it.
- For each ``command`` recipe: ``command[0]`` as exec finds it (a bare name
  in the ``PATH`` the command gets, the recipe's ``env`` first; a path
  relative to the workdir), the script handed to ``bash`` or ``sh`` (the
  first operand; there is none after ``-c`` or ``-s``), the makefiles ``make``
  reads (``-f FILE``, else the default names in the workdir or ``-C DIR``),
  each if it exists; the workdir itself; and every folder above each.
- For a bare ``command[0]``, also each ``PATH`` folder exec tries before the
  one it is found in (all of them when it is found in none), as itself: a
  program of that name dropped there is the one that runs. A relative one is
  in the workdir, where exec looks after its ``chdir``.
- A path is checked as written (each folder on the way, links followed as
  exec follows them) and as its real path, so neither a link nor what it
  points to can be swapped by someone else.
- A template (``/srv/{group}/build.sh``) is checked up to its first
  component with a placeholder, as a folder: what a capture fills in below
  it lives there.
- A file that does not exist yet has the folders above it checked: whoever
  can write them could put it there after the check, for the next heal to
  run. The first of them that is there is checked as itself, without the
  sticky pass of a folder above: the sticky bit keeps others from renaming
  an entry that is there, not from making one that is not. A path this user
  cannot look at is not checked: a heal of it fails with its own reason.
- Trusted when run as root: root and the members of the groups that may
  write the daemon's socket or the proxy's own (``socket_group``). As
  another user: root and that user.

Theory of operation: ``gather`` turns a config into ``trust.Checked`` facts
with ``os.stat``; ``principals`` reads the user and group databases;
``untrusted`` hands both to ``trust.problems``, where the rule is.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Iterable, Iterator, Mapping

from ..recipes.config import Config
from ..recipes.patterns import placeholders_in, substitute
from ..recipes.recipe import Recipe
from .settings import Settings
from .trust import Checked, Principals, problems

_SHELLS = frozenset({"bash", "sh"})
_SHELL_OPTIONS_WITH_VALUE = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
_MAKEFILES = ("GNUmakefile", "makefile", "Makefile")
_UP_TO_PLACEHOLDER = ", up to its first placeholder"


def _literal(template: str) -> tuple[str, bool]:
    """The template's text up to its first component with a placeholder, and
    whether that was all of it."""
    fixed: list[str] = []
    for part in template.split("/"):
        if placeholders_in(part):
            return "/".join(fixed) or "/", False
        fixed.append(substitute(part, {}))
    return "/".join(fixed), True


def _chain(path: str, role: str) -> Iterator[Checked]:
    """``path`` and every folder above it, as written and as resolved."""
    for variant in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        missing = False
        where = variant
        while True:
            try:
                st = os.stat(where)
            except FileNotFoundError:
                missing = True
            except OSError:
                missing = False  # not ours to look at: a heal of it fails on its own
            else:
                if where == variant:
                    yield Checked(where, role, st.st_uid, st.st_gid, st.st_mode)
                elif missing:  # the first folder that is there: names can be made in it
                    made = f"where {role}, not there yet, would be made"
                    yield Checked(where, made, st.st_uid, st.st_gid, st.st_mode)
                else:
                    above = f"a folder above {role}"
                    yield Checked(where, above, st.st_uid, st.st_gid, st.st_mode, True)
                missing = False
            if where == "/":
                break
            where = os.path.dirname(where)


def shell_script(args: list[str]) -> int | None:
    """The index of the script file in a ``bash``/``sh`` argv, if it names one."""
    index = 1
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return index + 1 if index + 1 < len(args) else None
        if arg in _SHELL_OPTIONS_WITH_VALUE:
            index += 2
            continue
        if arg[:1] in ("-", "+") and arg != "-":
            cluster = "" if arg.startswith("--") else arg[1:]
            if "c" in cluster or "s" in cluster:
                return None  # a command string or stdin: no file
            index += 2 if cluster.endswith(("o", "O")) else 1  # -euo pipefail
            continue
        return None if arg == "-" else index
    return None


def makefiles(args: list[str]) -> tuple[list[str], str]:
    """The makefiles a ``make`` argv names (none: the defaults), and its ``-C`` folder."""
    named: list[str] = []
    directory = "."
    index = 1
    while index < len(args):
        arg, value = args[index], args[index + 1] if index + 1 < len(args) else ""
        if arg in ("-f", "--file", "--makefile"):
            named.append(value)
            index += 1
        elif arg in ("-C", "--directory"):
            directory = os.path.join(directory, value)
            index += 1
        elif arg.startswith(("--file=", "--makefile=")):
            named.append(arg.partition("=")[2])
        elif arg.startswith("--directory="):
            directory = os.path.join(directory, arg.partition("=")[2])
        elif arg.startswith("-f") and len(arg) > 2:
            named.append(arg[2:])
        elif arg.startswith("-C") and len(arg) > 2:
            directory = os.path.join(directory, arg[2:])
        index += 1
    return named or list(_MAKEFILES), directory


def _program(name: str, workdir: str | None, search: str) -> tuple[str | None, list[str]]:
    """Where exec finds ``command[0]`` (a path against the workdir, a name on
    PATH), and the PATH folders it tries first: all of them when it finds none."""
    if "/" in name:
        if workdir is None and not os.path.isabs(name):
            return None, []
        return os.path.join(workdir or "/", name), []
    tried: list[str] = []
    for entry in search.split(os.pathsep):
        if not os.path.isabs(entry or "."):
            if workdir is None:
                continue  # in a workdir filled in at the heal: checked up to it
            entry = os.path.join(workdir, entry)  # exec looks there after the chdir
        candidate = os.path.join(entry, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate, tried
        tried.append(os.path.normpath(entry))
    return None, tried


def _recipe(recipe: Recipe, env: Mapping[str, str]) -> Iterator[Checked]:
    where = f"images[{recipe.index}]"
    workdir, whole = _literal(recipe.workdir)
    yield from _chain(workdir, f"{where}.workdir" + ("" if whole else _UP_TO_PLACEHOLDER))
    base = workdir if whole else None
    fixed, known = _literal(recipe.command[0])
    if not known and os.path.isabs(fixed):
        yield from _chain(fixed, f"{where}.command[0]{_UP_TO_PLACEHOLDER}")
    # A templated argument is unknown until a heal; "" never names a file.
    texts = [text if complete else "" for text, complete in map(_literal, recipe.command)]
    files: list[tuple[str, str]] = []  # (path as written, role)
    search = recipe.env.get("PATH", env.get("PATH", os.defpath))
    program, tried = _program(texts[0], base, search) if texts[0] else (None, [])
    if program is not None:
        files.append((program, f"{where}.command[0]"))
    searched = f"searched before {program}" if program else "it is searched in"
    for folder in dict.fromkeys(tried):
        yield from _chain(folder, f"{where}.command[0], a folder on PATH {searched}")
    name = os.path.basename(texts[0])
    if name in _SHELLS and (script := shell_script(texts)) is not None:
        files.append((texts[script], f"{where}.command[{script}], the script {name} runs"))
    elif name == "make":
        named, directory = makefiles(texts)
        files += [(os.path.join(directory, file), f"{where}.command, a makefile") for file in named]
    for path, role in files:
        if not path:
            continue
        if base is None and not os.path.isabs(path):
            continue
        full = os.path.normpath(os.path.join(base or "/", path))
        if os.path.isfile(full) or not os.path.lexists(full):
            yield from _chain(full, role)  # a file not there yet: its folders


def gather(config: Config, env: Mapping[str, str]) -> list[Checked]:
    """Every path root would trust to run ``config``, with its stat facts."""
    found: list[Checked] = []
    if config.path is not None:
        found += _chain(str(config.path), "the config file")
    for recipe in config.recipes:
        if recipe.kind == "command":
            found += _recipe(recipe, env)
    return found


def _members(gid: int, accounts: list[pwd.struct_passwd]) -> frozenset[int]:
    """Who is in group ``gid``: listed in it, or having it as their primary group."""
    try:
        listed = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        listed = set()
    return frozenset(a.pw_uid for a in accounts if a.pw_gid == gid or a.pw_name in listed)


def _root_equivalent(settings: Settings) -> dict[int, str]:
    """Groups whose members can write the daemon's socket or the proxy's: gid -> name."""
    gids: dict[int, str] = {}
    try:
        daemon = os.stat(settings.upstream)
    except OSError:
        pass
    else:
        if daemon.st_mode & stat.S_IWGRP:
            gids[daemon.st_gid] = _group_name(daemon.st_gid)
    if settings.socket_group is not None and settings.socket_mode & stat.S_IWGRP:
        with contextlib.suppress(KeyError):
            gids[grp.getgrnam(settings.socket_group).gr_gid] = settings.socket_group
    gids.pop(0, None)  # root's group: its members are not root by being in it
    return gids


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def principals(settings: Settings, euid: int, gids: Iterable[int]) -> Principals:
    """Who is trusted when running as ``euid``, with the members of ``gids``."""
    accounts = pwd.getpwall()
    users = {account.pw_uid: account.pw_name for account in accounts}
    if euid == 0:
        equivalent = _root_equivalent(settings)
        trusted = frozenset({0}).union(*(_members(gid, accounts) for gid in equivalent))
        named = " or ".join(f"a member of group {name}" for name in equivalent.values())
        who = f"root or {named}" if named else "root"
    else:
        equivalent = {}
        trusted = frozenset({0, euid})
        who = f"root or {users.get(euid, f'uid {euid}')}"
    wanted = set(gids)
    return Principals(
        trusted=trusted,
        members={gid: _members(gid, accounts) for gid in wanted},
        who=who,
        users=users,
        groups={gid: _group_name(gid) for gid in wanted},
        equivalent=frozenset(equivalent),
        primary={account.pw_uid: account.pw_gid for account in accounts},
    )


def untrusted(config: Config, settings: Settings, env: Mapping[str, str], euid: int) -> list[str]:
    """What ``trust`` refuses of the paths root would run for ``config``."""
    checked = gather(config, env)
    trust_paths = [os.path.normpath(folder) for folder in config.security.trust_paths]
    return problems(checked, principals(settings, euid, {c.gid for c in checked}), trust_paths)
