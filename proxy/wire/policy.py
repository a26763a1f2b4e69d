"""Which requests a listener lets through: named lists of the routes allowed.

Rules:
- A request is judged on the route dockerd would take it to (``routes.locate``),
  never on the text of its path, or a crafted path goes around the rule. A path
  the proxy cannot place surely is ``other``, and ``other`` is never allowed.
- An ``allow`` entry is ``METHOD /template`` (``*`` for any method), naming a
  route of ``routes.ROUTES``; an entry naming none is a configuration error,
  not a rule that never matches. The first entry that fits names the rule;
  no entry fitting means denied.
- API versions below 1.24 are refused under any policy, in any mode (the
  verdict says ``enforce``): before 1.24, ``POST /containers/{id}/start``
  takes a HostConfig, so "start" could make a container privileged. ``full``
  is no policy at all: it is never judged.
- ``POST /build`` with ``networkmode=host`` (or ``container:...``) or a
  ``cgroupparent`` is refused unless the policy says ``build_host_network`` or
  ``build_cgroup_parent``. dockerd reads those parameters from a form body
  ahead of the query, so a build whose body may be a form (or whose
  ``Content-Type`` the caller did not pass) is refused too under such a policy.
- Shipped profiles are read as a configuration's tables are, and cannot be
  redefined: a policy of one's own ``extends`` one under another name.
- Pure: a policy is a value and judging is a lookup.

Theory of operation:
``policies_from_config`` reads each ``[policies.NAME]`` table, resolving
``extends`` depth first (the parent's entries first, the child's after;
``mode`` and the build options the child's when it sets them), and checks
every entry against the route table. Each ``Policy`` then expands its
entries once into a map from every route string ``routes.locate`` can
return to the first entry fitting it, so that ``judge`` is one (cached)
``locate``, one dict lookup and, for a build only, a look at its query.
The refusal a client reads is ``Verdict.reason``; the wiring puts
``docker-heal-proxy: listener "NAME": `` in front of it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import unquote_plus

from .access import Mode, Verdict
from .bodychecks import CreateRules, create_rules
from .routes import METHODS, ROUTES, locate, template

FULL = "full"
"""The policy name that means no policy: everything goes through, unjudged."""
OLDEST_VERSION = (1, 24)
BUILD = "POST /build"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEYS = frozenset(
    {"allow", "extends", "mode", "build_host_network", "build_cgroup_parent", "create"}
)
_MODES: tuple[str, ...] = get_args(Mode)

ROUTE_NAMES = frozenset(
    f"{m} {template(row)}"
    for row in ROUTES
    for m in ([*METHODS, "*"] if row.startswith("* ") else [row.partition(" ")[0]])
)
"""Every ``METHOD /template`` that ``routes.locate`` can answer with a route."""


def _fits(entry: str, route: str) -> bool:
    method, _, path = entry.partition(" ")
    route_method, _, route_path = route.partition(" ")
    return path == route_path and method in ("*", route_method)


@functools.lru_cache(maxsize=256)
def _older(version: str) -> bool:
    """``version`` < 1.24 as dockerd compares (missing or non-numeric parts are 0)."""
    parts = tuple(int(p) if p else 0 for p in version.split("."))
    return parts + (0,) * (len(OLDEST_VERSION) - len(parts)) < OLDEST_VERSION


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of allowed routes, and what to do with the rest."""

    name: str
    mode: Mode = "enforce"
    allow: tuple[str, ...] = ()
    build_host_network: bool = False
    """``POST /build?networkmode=host`` (or ``container:ID``): the build's ``RUN``
    steps share the host's (or that container's) network namespace."""
    build_cgroup_parent: bool = False
    """``POST /build?cgroupparent=...``: the build's containers go in a cgroup of its choosing."""
    create: CreateRules = field(default_factory=CreateRules)
    """What a create, an exec or a volume create may ask for (``[policies.NAME.create]``,
    judged on the body by ``bodychecks``); the defaults refuse all host reach."""
    _allowed: dict[str, Verdict] = field(init=False, repr=False, compare=False)
    """The verdict on each route an entry allows, made once: judging is a lookup."""

    def __post_init__(self) -> None:
        allowed: dict[str, Verdict] = {}
        for entry in self.allow:
            fitting = [route for route in ROUTE_NAMES if _fits(entry, route)]
            if not fitting:
                raise ValueError(f'"{entry}" is no route of dockerd or the proxy')
            for route in fitting:
                allowed.setdefault(route, Verdict(self.name, self.mode, route, entry, False))
        object.__setattr__(self, "_allowed", allowed)

    def judge(
        self, method: str, target: str, content_types: Sequence[bytes] | None = None
    ) -> Verdict:
        """The verdict on a request line; ``target`` as sent, query included.

        ``content_types`` are the request's ``Content-Type`` values, None when
        unknown; only a build needs them (see the module's Rules).
        """
        located = locate(method, target)
        verdict = self._allowed.get(located.route)
        if located.version is not None and _older(located.version):
            what = f"API version {located.version} (1.24 is the oldest)"
            return self._refuse(located.route, verdict.rule if verdict else None, what, "enforce")
        if verdict is None:
            why = " (not a route it can be sure of)" if located.route.endswith(" other") else ""
            return self._refuse(located.route, None, f"{located.route}{why}")
        if located.route == BUILD:
            option = self._forbidden_build_option(target.partition("?")[2], content_types)
            if option:
                return self._refuse(located.route, verdict.rule, f"{BUILD} with {option}")
        return verdict

    def _refuse(self, route: str, rule: str | None, what: str, mode: Mode | None = None) -> Verdict:
        reason = f'policy "{self.name}" does not allow {what}'
        return Verdict(self.name, mode or self.mode, route, rule, True, reason)

    def _forbidden_build_option(self, query: str, content_types: Sequence[bytes] | None) -> str:
        """The first build option this policy forbids that the request may set, or ""."""
        if self.build_host_network and self.build_cgroup_parent:
            return ""
        if content_types is None:
            return "a body of a type it was not told (networkmode may be in it)"
        if any(b"form" in value.lower() for value in content_types):
            return "a form body (networkmode may be in it)"
        # Go before 1.17 also split a query at ";" (dockerd 20.10 was built with both).
        for pair in re.split("[&;]", query):
            key, _, value = (unquote_plus(part) for part in pair.partition("="))
            mode = value.lower()
            if (
                key == "networkmode"
                and not self.build_host_network
                and (mode == "host" or mode.startswith("container:"))
            ):
                return f"networkmode={value}"
            if key == "cgroupparent" and value and not self.build_cgroup_parent:
                return "cgroupparent"
        return ""


SHIPPED: dict[str, dict[str, Any]] = {
    "readonly": {
        "allow": [
            "* /_ping",
            "GET /version",
            "GET /info",
            "GET /events",
            "GET /containers/json",
            "GET /containers/{id}/json",
            "GET /images/json",
            "GET /images/{name}/json",
            "GET /networks",
            "GET /networks/",
            "GET /networks/{id}",
            "GET /volumes",
            "GET /volumes/{name}",
        ]
    },
    "runner": {
        "allow": [
            "* /_ping",
            "GET /version",
            "GET /info",
            "GET /events",
            "GET /images/json",
            "GET /images/{name}/json",
            "POST /containers/create",
            "GET /containers/{id}/json",
            "POST /containers/{id}/start",
            "POST /containers/{id}/attach",
            "POST /containers/{id}/wait",
            "POST /containers/{id}/resize",
            "GET /containers/{id}/logs",
            "POST /containers/{id}/kill",
            "POST /containers/{id}/stop",
            "DELETE /containers/{id}",
            "POST /containers/{id}/exec",
            "POST /exec/{id}/start",
            "GET /exec/{id}/json",
            "POST /exec/{id}/resize",
        ]
    },
    # willfarrell/docker-autoheal: curl lists unhealthy containers and restarts them.
    "autoheal": {
        "allow": [
            "* /_ping",
            "GET /containers/json",
            "POST /containers/{id}/restart",
        ]
    },
    # containrrr/watchtower: list and inspect, pull, then stop (kill), remove,
    # re-create under the old name, reconnect the networks and start; remove the
    # old image; lifecycle hooks run as execs.
    "watchtower": {
        "allow": [
            "* /_ping",
            "GET /version",
            "GET /containers/json",
            "GET /containers/{id}/json",
            "GET /images/{name}/json",
            "POST /images/create",
            "POST /containers/{id}/kill",
            "DELETE /containers/{id}",
            "POST /containers/create",
            "POST /networks/{id}/disconnect",
            "POST /networks/{id}/connect",
            "POST /containers/{id}/start",
            "POST /containers/{id}/rename",
            "DELETE /images/{name}",
            "POST /containers/{id}/exec",
            "POST /exec/{id}/start",
            "GET /exec/{id}/json",
        ]
    },
    # Nothing allowed, everything let through and recorded: an allow list to harvest.
    "discovery": {"mode": "audit", "allow": []},
}
"""The profiles shipped, as ``[policies.NAME]`` tables."""


def policies_from_config(tables: Mapping[str, Any]) -> dict[str, Policy]:
    """The shipped profiles and the ``[policies.NAME]`` tables, by name.

    ``full`` is not among them: it is no policy. A ``ValueError`` names the
    key at fault, ``policies.NAME.KEY``, in one line.
    """
    for name in tables:
        if name == FULL or name in SHIPPED:
            raise ValueError(
                f'policies.{name}: "{name}" is shipped; name yours otherwise, '
                f'with extends = "{name}" to build on it'
            )
        if not _NAME.fullmatch(name):
            raise ValueError(f'policies."{name}": a name is letters, digits, "_", "." and "-"')
    every = {**SHIPPED, **tables}
    resolved: dict[str, Policy] = {}
    for name in every:
        _resolve(name, every, resolved, ())
    return resolved


def _resolve(
    name: str, every: Mapping[str, Any], resolved: dict[str, Policy], chain: tuple[str, ...]
) -> Policy:
    if name in resolved:
        return resolved[name]
    table = every[name]
    where = f"policies.{name}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key")
    parent = None
    if "extends" in table:
        base = table["extends"]
        if not isinstance(base, str):
            raise ValueError(f"{where}.extends: must be a policy's name")
        if base == FULL:
            raise ValueError(f'{where}.extends: "full" is no policy to build on')
        if base not in every:
            raise ValueError(f'{where}.extends: no policy "{base}"')
        if base in (*chain, name):
            raise ValueError(f'{where}.extends: "{base}" leads back to "{name}"')
        parent = _resolve(base, every, resolved, (*chain, name))
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(e, str) for e in allow):
        raise ValueError(f'{where}.allow: must be a list of "METHOD /route" strings')
    mode = table.get("mode", parent.mode if parent else "enforce")
    if mode not in _MODES:
        raise ValueError(f"{where}.mode: must be one of {', '.join(_MODES)}")
    options = {}
    for key in ("build_host_network", "build_cgroup_parent"):
        value = table.get(key, getattr(parent, key) if parent else False)
        if not isinstance(value, bool):
            raise ValueError(f"{where}.{key}: must be true or false")
        options[key] = value
    base = parent.create if parent else None
    create = create_rules(table.get("create", {}), f"{where}.create", base)
    try:
        policy = Policy(
            name, mode, (*(parent.allow if parent else ()), *allow), **options, create=create
        )
    except ValueError as e:
        raise ValueError(f"{where}.allow: {e}") from None
    resolved[name] = policy
    return policy
