"""The proxy's listeners: which sockets it serves, with which policy, for which callers.

Rules:
- The top-level ``listen`` is the listener ``default``, with policy ``full``,
  so a config without ``[[listeners]]`` means what it meant before.
- A ``[[listeners]]`` entry has a ``name`` (what refusals, metrics and the
  audit log call it, and the ``FileDescriptorName=`` of its systemd socket
  unit), a ``listen`` URL, a ``policy`` (``full`` or a policy's name), and
  optionally ``socket_mode`` (default ``"0660"``), ``socket_group`` (default
  none: the proxy's own group, never ``docker`` by default, since a member of
  ``docker`` has the daemon's own socket already) and ``[[listeners.clients]]``.
- A ``[[listeners.clients]]`` entry names ``uids`` and/or ``gids`` (numbers,
  as the kernel reports them) and the ``policy`` those callers get; entries
  are tried in order, and a caller none names gets the listener's policy.
- Names and socket paths are unique, none is the daemon's socket, and every
  policy named exists: each mistake is one line naming the entry and key.
  No entry takes a name an activated socket of the default listener has
  (``DEFAULT_NAMES``): that socket would be served ``full``.
- ``check`` warns of what a config cannot enforce: a restricted uid or gid
  that is in ``docker`` (or the daemon socket's group) reaches the daemon
  without the proxy; ``socket_mode`` and ``socket_group`` are the unit's
  under socket activation; a policy allowing BuildKit allows host networking.
- Pure: the caller says which groups exist, who is in them, and which
  policies there are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..recipes.config import parse_socket_mode, unix_socket_path
from ..wire.peer import ClientRule
from ..wire.policy import Policy

DEFAULT = "default"
DEFAULT_NAMES = frozenset({DEFAULT, "docker-heal-proxy.socket", "unknown"})
"""Activated sockets the default listener takes: the shipped unit's, or unnamed ones.
No other listener may be named so, or its socket would be served ``full``."""
FULL = "full"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A ``FileDescriptorName=`` (no ``:``), short enough for a metric label."""
_KEYS = ("name", "listen", "socket_mode", "socket_group", "policy", "clients")
_CLIENT_KEYS = ("uids", "gids", "policy")
BUILDKIT = ("/session", "/grpc")
"""BuildKit's routes: a build's options (``--network host`` among them) travel inside them."""


class ListenersError(ValueError):
    """One line naming the ``[[listeners]]`` entry and key that is wrong."""


@dataclass(frozen=True)
class ListenerSettings:
    name: str
    listen: str
    """The socket's path."""
    socket_mode: int
    socket_group: str | None
    policy: str
    """``full`` or the name of a policy."""
    clients: tuple[ClientRule[str], ...] = ()


def _fail(where: str, message: str) -> ListenersError:
    return ListenersError(f"{where}: {message}")


def _string(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if value is None:
        raise _fail(f"{where}.{key}", "missing")
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{key}", f"expected a string, not {value!r}")
    return value


def _ids(value: object, where: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        raise _fail(where, f"expected a list of numeric ids, not {value!r}")
    return frozenset(value)


def _known(table: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in keys:
            raise _fail(where, f"unknown key {key!r}")


def _policy(table: Mapping[str, Any], where: str, policies: Collection[str]) -> str:
    name = _string(table, "policy", where)
    if name != FULL and name not in policies:
        known = ", ".join(sorted({FULL, *policies}))
        raise _fail(f"{where}.policy", f"no policy {name!r} (known: {known})")
    return name


def _client(entry: object, where: str, policies: Collection[str]) -> ClientRule[str]:
    if not isinstance(entry, Mapping):
        raise _fail(where, "expected a table")
    _known(entry, _CLIENT_KEYS, where)
    uids = _ids(entry.get("uids", []), f"{where}.uids")
    gids = _ids(entry.get("gids", []), f"{where}.gids")
    if not uids and not gids:
        raise _fail(where, "names no caller: give uids, gids or both")
    return ClientRule(uids, gids, _policy(entry, where, policies))


def _entry(
    entry: Mapping[str, Any],
    where: str,
    policies: Collection[str],
    group_exists: Callable[[str], bool],
) -> ListenerSettings:
    _known(entry, _KEYS, where)
    name = _string(entry, "name", where)
    if not _NAME.fullmatch(name) or name in DEFAULT_NAMES:
        raise _fail(
            f"{where}.name",
            f"{name!r} must be 1-64 letters, digits, '.', '_' or '-', and not "
            f"{', '.join(sorted(DEFAULT_NAMES))} (the default listener's socket names)",
        )
    where = f"listeners.{name}"
    url = _string(entry, "listen", where)
    try:
        path = unix_socket_path(url)
    except ValueError as exc:
        raise _fail(f"{where}.listen", str(exc)) from None
    try:
        mode = parse_socket_mode(entry.get("socket_mode", "0660"))
    except ValueError as exc:
        raise _fail(f"{where}.socket_mode", str(exc)) from None
    group = entry.get("socket_group")
    if group is not None and (not isinstance(group, str) or not group_exists(group)):
        raise _fail(f"{where}.socket_group", f"{group!r} is not a group on this machine")
    clients = entry.get("clients", [])
    if not isinstance(clients, list):
        raise _fail(f"{where}.clients", "expected [[listeners.clients]] entries")
    return ListenerSettings(
        name=name,
        listen=path,
        socket_mode=mode,
        socket_group=group,
        policy=_policy(entry, where, policies),
        clients=tuple(_client(c, f"{where}.clients[{i}]", policies) for i, c in enumerate(clients)),
    )


def listeners(
    default: ListenerSettings,
    entries: tuple[Mapping[str, Any], ...],
    upstream: str,
    policies: Collection[str],
    group_exists: Callable[[str], bool],
) -> tuple[ListenerSettings, ...]:
    """``default`` first, then each ``[[listeners]]`` entry, checked against the others."""
    found = [default]
    for index, entry in enumerate(entries):
        listener = _entry(entry, f"listeners[{index}]", policies, group_exists)
        where = f"listeners.{listener.name}"
        for other in found:
            if other.name == listener.name:
                raise _fail(f"{where}.name", "is the name of another listener too")
            if other.listen == listener.listen:
                raise _fail(f"{where}.listen", f"{listener.listen} is {other.name}'s socket too")
        if listener.listen == upstream:
            raise _fail(f"{where}.listen", f"{upstream} is the daemon's socket (upstream)")
        found.append(listener)
    return tuple(found)


def warnings(
    found: tuple[ListenerSettings, ...],
    entries: tuple[Mapping[str, Any], ...],
    policies: Mapping[str, Policy],
    root_groups: Mapping[int, str],
    groups_of: Callable[[int], frozenset[int] | None],
) -> list[str]:
    """What ``check`` warns of: a policy that binds nobody, settings systemd overrides, BuildKit.

    ``root_groups`` are the groups that reach the daemon's socket directly
    (``docker``, the socket's own group) by gid; ``groups_of`` gives a uid's
    groups, or None for a uid no user has.
    """
    lines: list[str] = []
    used: set[str] = set()
    for listener in found:
        where = f"listeners.{listener.name}"
        used.add(listener.policy)
        group = listener.socket_group
        if listener.policy != FULL and group in root_groups.values():
            lines.append(
                f"warning: {where}: members of socket_group {group} reach the daemon's "
                f"socket directly; policy {listener.policy} binds none of them"
            )
        for index, rule in enumerate(listener.clients):
            used.add(rule.policy)
            if rule.policy == FULL:
                continue
            at = f"{where}.clients[{index}]"
            for uid in sorted(rule.uids):
                held = (groups_of(uid) or frozenset()) & root_groups.keys()
                if held:
                    name = root_groups[min(held)]
                    lines.append(
                        f"warning: {at}: uid {uid} is in group {name}, which reaches the "
                        f"daemon's socket directly; policy {rule.policy} does not bind it"
                    )
            for gid in sorted(rule.gids & root_groups.keys()):
                lines.append(
                    f"warning: {at}: gid {gid} is group {root_groups[gid]}, whose members "
                    f"reach the daemon's socket directly; policy {rule.policy} binds none of them"
                )
    for entry in entries:
        if "socket_mode" in entry or "socket_group" in entry:
            named = entry.get("name")
            lines.append(
                f"warning: listeners.{named}: socket_mode and socket_group apply only when the "
                f"proxy binds the socket; one systemd passes (FileDescriptorName={named}) "
                "keeps its unit's SocketMode= and SocketGroup="
            )
    for name in sorted(used - {FULL}):
        policy = policies[name]
        if any(not policy.judge("POST", path, []).denied for path in BUILDKIT):
            lines.append(
                f"warning: policy {name} allows BuildKit (/session, /grpc): a build through "
                "it can run steps in the host's network (--network host travels inside /grpc)"
            )
    return lines
