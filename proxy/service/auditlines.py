"""The audit log's lines: which exchanges get one, what one holds, and the
``allow`` list a log of them asks for.

Rules:
- An exchange gets a line when it can change something or carry data out:
  any method but GET and HEAD; every hijack (attach and exec put a terminal
  in a container); every read of a container's files or an image (``GET``
  of ``/containers/{id}/archive``, ``/containers/{id}/export``,
  ``/images/{name}/get``, ``/images/get``); and every refusal or would-be
  refusal of a policy. Plain reads are left out, or a polling dashboard
  would bury the lines that matter.
- A line holds the ``AccessRecord`` and nothing else, and the record holds
  no header (so no ``X-Registry-Auth``) and no body (so no ``Env``, no
  ``HostConfig``). The query is cut off the path and only its parameter
  names kept: ``POST /build?buildargs=...`` carries build arguments, which
  hold tokens as often as ``Env`` does.
- A path, and the query's names together, are cut at ``MAX_PATH``
  characters (the cut says so), so that a line always fits one journal
  datagram.
- The route comes from the verdict; on a listener without a policy (``full``)
  it is the request's method and ``routes.route`` of its path, the template
  the metrics use. Either way, ``METHOD other`` is a path no route of
  dockerd's takes.
- ``logged`` runs on the event loop for every exchange of a listener with an
  audit log, so it is a few comparisons and a cached route lookup; building
  and encoding the line is the writer thread's.
- ``allow_list`` reads lines back into the ``allow`` entries that would let
  the same traffic through: the ``discovery`` profile (everything denied, in
  audit mode) makes every request a line, so its log is a complete harvest.
  A log of another policy holds only the requests that get a line.

Theory of operation: ``entry`` turns a record into the line's fields and
``encode`` into one JSON line; ``allow_list`` parses each line of a log,
keeps those of the listener asked for, and collects their routes, leaving
out lines it cannot read and routes no entry can name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..wire.access import AccessRecord
from ..wire.routes import route

READS = frozenset(
    {"/containers/{id}/archive", "/containers/{id}/export", "/images/{name}/get", "/images/get"}
)
"""Templates whose GET carries a container's files or an image out."""
UNLOGGED_METHODS = frozenset({"GET", "HEAD"})
MAX_PATH = 8192
CUT = "...(cut)"
OTHER = "other"


def logged(record: AccessRecord) -> bool:
    """Whether ``record`` gets a line (see the rules)."""
    if record.method not in UNLOGGED_METHODS or record.hijacked:
        return True
    verdict = record.verdict
    if verdict is not None and verdict.denied:
        return True
    return record.method == "GET" and route(record.path.partition("?")[0]) in READS


def route_of(record: AccessRecord) -> str:
    """``METHOD /template``: the verdict's, or the metrics' template without a policy."""
    if record.verdict is not None:
        return record.verdict.route
    return f"{record.method} {route(record.path.partition('?')[0])}"


def decision(record: AccessRecord) -> str:
    verdict = record.verdict
    if verdict is None or not verdict.denied:
        return "allow"
    return "deny" if verdict.mode == "enforce" else "would_deny"


def entry(record: AccessRecord, when: float) -> dict[str, Any]:
    """The line's fields; ``when`` is the exchange's end, in Unix time."""
    path, _, query = record.path.partition("?")
    if len(path) > MAX_PATH:
        path = path[:MAX_PATH] + CUT
    peer, verdict = record.peer, record.verdict
    return {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "listener": record.listener,
        "uid": peer.uid if peer else None,
        "gid": peer.gid if peer else None,
        "pid": peer.pid if peer else None,
        "exe": peer.exe if peer else None,
        "method": record.method,
        "route": route_of(record),
        "path": path,
        "query": _names(query),
        "hijacked": record.hijacked,
        "decision": decision(record),
        "policy": verdict.policy if verdict else "full",
        "rule": verdict.rule if verdict else None,
        "mode": verdict.mode if verdict else None,
        "field": verdict.field if verdict else None,
        "value": verdict.value if verdict else None,
        "status": record.status,
        "duration": round(record.seconds, 6),
    }


def _names(query: str) -> list[str]:
    """The query's parameter names, once each, in order, cut as a path is; never a value."""
    names: list[str] = []
    size = 0
    for name in dict.fromkeys(part.partition("=")[0] for part in query.split("&") if part):
        size += len(name) + 1
        if size > MAX_PATH:
            return [*names, CUT]
        names.append(name)
    return names


def encode(record: AccessRecord, when: float) -> bytes:
    """One line of JSON; ASCII, so no byte of a path can break the line."""
    return json.dumps(entry(record, when), separators=(",", ":")).encode() + b"\n"


@dataclass
class Harvest:
    """What ``allow_list`` found in a log."""

    allow: list[str] = field(default_factory=list)
    """``METHOD /template`` entries, sorted by template, then method."""
    lines: int = 0
    """Lines of the listener asked for (all listeners' when none was)."""
    unreadable: int = 0
    """Lines that are not audit lines."""
    unroutable: int = 0
    """Lines whose path no route takes; no entry can allow them."""


def allow_list(lines: Iterable[str], listener: str | None = None) -> Harvest:
    harvest = Harvest()
    routes: set[str] = set()
    for text in lines:
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            found, where = line["route"], line["listener"]
        except (ValueError, TypeError, KeyError):
            harvest.unreadable += 1
            continue
        if not isinstance(found, str) or " " not in found:
            harvest.unreadable += 1
            continue
        if listener is not None and where != listener:
            continue
        harvest.lines += 1
        if found.partition(" ")[2] == OTHER:
            harvest.unroutable += 1
        else:
            routes.add(found)
    harvest.allow = sorted(routes, key=lambda r: (r.partition(" ")[2], r))
    return harvest


def allow_toml(harvest: Harvest, source: str, listener: str | None) -> str:
    """The harvest as a TOML ``allow`` array to paste into ``[policies.NAME]``."""
    whose = f'listener "{listener}"' if listener is not None else "all listeners"
    notes = [f"# {harvest.lines} lines of {source} ({whose}): {len(harvest.allow)} routes"]
    if harvest.unroutable:
        notes.append(f"# {harvest.unroutable} requests took no route of dockerd's: left out")
    if harvest.unreadable:
        notes.append(f"# {harvest.unreadable} lines are not audit lines: skipped")
    entries = [f"    {json.dumps(r)}," for r in harvest.allow]
    return "\n".join([*notes, "allow = [", *entries, "]"]) + "\n"
