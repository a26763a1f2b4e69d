"""Which Engine API route a request is for, as dockerd's router would take it.

Rules:
- Everything that reads meaning into a request path lives here: the version
  prefix, the handful of endpoints the proxy intercepts, and the bounded
  route templates that label metrics.
- A path means what it means to dockerd's router, so that every request the
  daemon routes to an endpoint the proxy intercepts is claimed. dockerd's
  router (gorilla/mux under Go's net/http) matches the percent-decoded path
  of the target (an absolute-form target counts by its path), answers a path
  that is not clean (``//``, ``.`` or ``..`` segments) with a redirect
  instead of routing it, and takes any ``/v{version:[0-9.]+}`` prefix, so
  ``/v1.41.0/``, ``/v1.41./`` and ``/v./`` route as ``/v1.41/`` does (the
  version check comes after routing, and compares numerically).
- One table, ``ROUTES``, holds every route: dockerd's, copied in meaning from
  moby's ``api/server/router/*`` (20.10 and 26) in the order mux tries them,
  and the proxy's own two. A route is a method and a template: dockerd's mux
  takes the first registered route whose path pattern and method both fit,
  and answers 404 when none does (also for a path some other method takes).
- Templates are the Engine API's own path templates (``/containers/{id}/json``),
  so a dashboard reads like the API reference. A path that fits none is
  ``other``: a label value must never be a raw path, or an id per series would
  grow the metrics without bound.
- Where dockerd would route a path the proxy cannot be sure of (a slash or
  nothing where an id goes, a decoded control character), ``locate`` says
  ``other``: a policy refuses what it cannot place, never the reverse.
- Pure and cached: the data path asks for every request.

Theory of operation:
``api_path`` takes a target's path the way dockerd's router sees it, in
steps. An absolute-form target (``http://d/v1.41/...``) loses its scheme,
then its authority, leaving the path; a target that is neither absolute nor
absolute-form routes nowhere. Percent escapes are decoded next, and a ``%``
not followed by two hex digits routes nowhere, as Go refuses the URL. The
decoded path must be clean: an empty, ``.`` or ``..`` segment makes Go's mux
redirect rather than route. Last, a leading ``/v`` and digits-and-dots
segment is the version prefix and is dropped, whatever the digits. ``route``
then maps that endpoint to a template whatever the method (for metrics): an
exact lookup first, then the templated patterns, those ending in text ahead
of those ending in a variable, else ``other``. ``locate`` does as mux does
(for policies): among the table's rows for the endpoint's first segment, in
the table's order, the first whose method and full pattern fit (``.`` and
``$`` as Go's regexp reads them: ``fullmatch``, and control characters are
refused before), then checks the ids it captured. ``pulled_reference`` reads a
pull's parameters from a form body and the query, in the order Go's
``Request.Form`` holds them.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple
from urllib.parse import parse_qs

STATUS_PATH = "/_heal/status"
"""The proxy's state (``GET``), answered by the proxy itself, on its own socket only."""
HEAL_PATH = "/_heal/heal"
"""``POST ?image=IMAGE[&force=1]``: a heal run by the proxy for ``docker-heal-proxy
heal``, so that a shell's heal shares the service's locks and metrics."""

_VERSION = re.compile(r"/v[0-9.]+(?=/)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

PROXY_ROUTES = (f"GET {STATUS_PATH}", f"POST {HEAL_PATH}")
"""The proxy's own, answered before dockerd sees them, on their exact raw path only."""

DOCKERD_ROUTES = (
    # As api/server/router/* registers them in 20.10 and 26, in the order
    # cmd/dockerd puts the routers: checkpoint (before container, or its DELETE
    # would be masked), container, image, system, volume, build, session, swarm,
    # plugin, distribution, grpc, network.
    "GET /containers/{id:.*}/checkpoints",
    "POST /containers/{id:.*}/checkpoints",
    "DELETE /containers/{id}/checkpoints/{checkpoint}",
    "HEAD /containers/{id:.*}/archive",
    "GET /containers/json",
    "GET /containers/{id:.*}/export",
    "GET /containers/{id:.*}/changes",
    "GET /containers/{id:.*}/json",
    "GET /containers/{id:.*}/top",
    "GET /containers/{id:.*}/logs",
    "GET /containers/{id:.*}/stats",
    "GET /containers/{id:.*}/attach/ws",
    "GET /exec/{id:.*}/json",
    "GET /containers/{id:.*}/archive",
    "POST /containers/create",
    "POST /containers/{id:.*}/kill",
    "POST /containers/{id:.*}/pause",
    "POST /containers/{id:.*}/unpause",
    "POST /containers/{id:.*}/restart",
    "POST /containers/{id:.*}/start",
    "POST /containers/{id:.*}/stop",
    "POST /containers/{id:.*}/wait",
    "POST /containers/{id:.*}/resize",
    "POST /containers/{id:.*}/attach",
    "POST /containers/{id:.*}/copy",  # 20.10 only, an error since API 1.12
    "POST /containers/{id:.*}/exec",
    "POST /exec/{id:.*}/start",
    "POST /exec/{id:.*}/resize",
    "POST /containers/{id:.*}/rename",
    "POST /containers/{id:.*}/update",
    "POST /containers/prune",
    "POST /commit",
    "PUT /containers/{id:.*}/archive",
    "DELETE /containers/{id:.*}",
    "GET /images/json",
    "GET /images/search",
    "GET /images/get",
    "GET /images/{name:.*}/get",
    "GET /images/{name:.*}/history",
    "GET /images/{name:.*}/json",
    "POST /images/load",
    "POST /images/create",
    "POST /images/{name:.*}/push",
    "POST /images/{name:.*}/tag",
    "POST /images/prune",
    "DELETE /images/{name:.*}",
    "OPTIONS /{anyroute:.*}",
    "GET /_ping",
    "HEAD /_ping",
    "GET /events",
    "GET /info",
    "GET /version",
    "GET /system/df",
    "POST /auth",
    "GET /volumes",
    "GET /volumes/{name:.*}",
    "POST /volumes/create",
    "POST /volumes/prune",
    "PUT /volumes/{name:.*}",  # 26 only (cluster volumes)
    "DELETE /volumes/{name:.*}",
    "POST /build",
    "POST /build/prune",
    "POST /build/cancel",
    "POST /session",
    "POST /swarm/init",
    "POST /swarm/join",
    "POST /swarm/leave",
    "GET /swarm",
    "GET /swarm/unlockkey",
    "POST /swarm/update",
    "POST /swarm/unlock",
    "GET /services",
    "GET /services/{id}",
    "POST /services/create",
    "POST /services/{id}/update",
    "DELETE /services/{id}",
    "GET /services/{id}/logs",
    "GET /nodes",
    "GET /nodes/{id}",
    "DELETE /nodes/{id}",
    "POST /nodes/{id}/update",
    "GET /tasks",
    "GET /tasks/{id}",
    "GET /tasks/{id}/logs",
    "GET /secrets",
    "POST /secrets/create",
    "DELETE /secrets/{id}",
    "GET /secrets/{id}",
    "POST /secrets/{id}/update",
    "GET /configs",
    "POST /configs/create",
    "DELETE /configs/{id}",
    "GET /configs/{id}",
    "POST /configs/{id}/update",
    "GET /plugins",
    "GET /plugins/{name:.*}/json",
    "GET /plugins/privileges",
    "DELETE /plugins/{name:.*}",
    "POST /plugins/{name:.*}/enable",
    "POST /plugins/{name:.*}/disable",
    "POST /plugins/pull",
    "POST /plugins/{name:.*}/push",
    "POST /plugins/{name:.*}/upgrade",
    "POST /plugins/{name:.*}/set",
    "POST /plugins/create",
    "GET /distribution/{name:.*}/json",
    "POST /grpc",
    "GET /networks",
    "GET /networks/",
    "GET /networks/{id:.+}",
    "POST /networks/create",
    "POST /networks/{id:.*}/connect",
    "POST /networks/{id:.*}/disconnect",
    "POST /networks/prune",
    "DELETE /networks/{id:.*}",
    # The debug router: any method, and only without a version prefix.
    "* /debug/vars",
    "* /debug/pprof/",
    "* /debug/pprof/cmdline",
    "* /debug/pprof/profile",
    "* /debug/pprof/symbol",
    "* /debug/pprof/trace",
    "* /debug/pprof/{name}",
)
ROUTES = PROXY_ROUTES + DOCKERD_ROUTES
"""Every route a request can take, ``METHOD /template`` as gorilla/mux spells it.

A variable without a pattern takes ``[^/]+``. The names are the Engine API
reference's (``{id}``, ``{name}``), not always dockerd's own. The first row a
request fits is its route, as the first route registered is mux's.
"""

METHODS = frozenset(row.partition(" ")[0] for row in ROUTES) - {"*"}
"""The methods some route takes; any other is a route to nowhere (dockerd's 404)."""

_VARIABLE = re.compile(r"\{(\w+)(?::([^}]*))?\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def template(row: str) -> str:
    """The route's template as the API reference writes it: ``/containers/{id}/json``."""
    return _VARIABLE.sub(r"{\1}", row.partition(" ")[2])


class Located(NamedTuple):
    """Where dockerd takes a request."""

    route: str
    """``METHOD /template``, or ``METHOD other`` when it routes nowhere or the
    proxy is unsure it would route it where the template says; ``* other`` for
    a method no route takes."""
    version: str | None
    """The digits and dots of the path's ``/vX.Y/`` prefix; None without one."""


class _Row(NamedTuple):
    method: str
    template: str
    pattern: re.Pattern[str]


def _row(row: str) -> _Row:
    method, _, spelled = row.partition(" ")
    parts, last = [], 0
    for m in _VARIABLE.finditer(spelled):
        parts += [re.escape(spelled[last : m.start()]), f"(?P<{m[1]}>{m[2] or '[^/]+'})"]
        last = m.end()
    parts.append(re.escape(spelled[last:]))
    return _Row(method, template(row), re.compile("".join(parts)))


def _first_segment(path: str) -> str | None:
    return path.split("/", 2)[1] if path.startswith("/") else None


_OWN = frozenset(tuple(row.split(" ")) for row in PROXY_ROUTES)
_ROWS = [_row(row) for row in DOCKERD_ROUTES]
_ANYWHERE = [r for r in _ROWS if r.template.startswith("/{")]
"""Rows whose first segment is a variable: they belong to every segment's list."""
_BY_SEGMENT = {
    (method, segment): [
        r
        for r in _ROWS
        if r.method in (method, "*") and (r in _ANYWHERE or _first_segment(r.template) == segment)
    ]
    for method in (*METHODS, "*")
    for segment in {_first_segment(r.template) for r in _ROWS} - {"{anyroute}"} | {None}
}
"""The rows a request can fit, by its method (``*`` for any other) and its path's
first segment (None: one no template starts with), still in mux's order."""

# The templates route() labels a method-less path with: every fixed one, then
# those ending in a segment of text ahead of those ending in a variable, so
# that /plugins/{name}/enable is not read as /plugins/{name}. A variable taking
# any path (the OPTIONS catch-all) would label every path, so it is left out.
TEMPLATES = sorted(
    dict.fromkeys(r.template for r in _ROWS if r not in _ANYWHERE)
    | {template(row): None for row in PROXY_ROUTES},
    key=lambda t: ("{" in t, t.endswith("}")),
)


def _regex(template: str) -> re.Pattern[str]:
    # Image and plugin names contain slashes; ids never do.
    parts = re.split(r"(\{\w+\})", template)
    body = "".join(
        ".+" if p == "{name}" else "[^/]+" if p.startswith("{") else re.escape(p) for p in parts
    )
    return re.compile(body)


_FIXED = {t for t in TEMPLATES if "{" not in t}
_PATTERNS = [(t, _regex(t)) for t in TEMPLATES if "{" in t]


def _clean_path(path: str) -> str | None:
    """The decoded path dockerd's router matches, or None when it routes it nowhere."""
    if not path.startswith("/"):
        scheme = _SCHEME.match(path)
        if scheme is None:
            return None
        path = path[scheme.end() :]
        if path.startswith("//"):
            authority_end = path.find("/", 2)
            path = "" if authority_end < 0 else path[authority_end:]
        if not path.startswith("/"):
            return None
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            return None
        path = _ESCAPE.sub(lambda m: chr(int(m[1], 16)), path)
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments[1:-1]) or segments[-1] in (".", ".."):
        return None
    return path


def api_path(path: str) -> str | None:
    """The Engine API path dockerd routes a target's path to, version prefix removed.

    ``/v1.41/containers/create``, ``/v1.41.0/containers/%63reate`` and
    ``http://d/v1.41/containers/create`` are all ``/containers/create``.
    ``None`` when dockerd routes the path nowhere: it refuses a bad escape or
    a relative target with a 400, and redirects an unclean path.
    """
    clean = _clean_path(path)
    if clean is None:
        return None
    version = _VERSION.match(clean)
    return clean if version is None else clean[version.end() :]


@functools.lru_cache(maxsize=4096)
def route(path: str) -> str:
    """The bounded template for a request path (query string excluded), whatever the method."""
    endpoint = api_path(path)
    if endpoint is None:
        return "other"
    if endpoint in _FIXED:
        return endpoint
    for template_, pattern in _PATTERNS:
        if pattern.fullmatch(endpoint):
            return template_
    return "other"


@functools.lru_cache(maxsize=4096)
def locate(method: str, target: str) -> Located:
    """The route dockerd takes a request to, by its method and its raw target.

    Stricter than dockerd where a client would have to be up to something:
    a decoded control character anywhere, or a slash or nothing where an id
    goes (dockerd's ``{name:.*}`` takes ``a/b`` and the empty string), is
    ``other``. A refusal can only follow from that, never a wider allowance.
    """
    path = target.partition("?")[0]
    if (method, path) in _OWN:
        return Located(f"{method} {path}", None)
    nowhere = "* other" if method not in METHODS else f"{method} other"
    clean = _clean_path(path)
    if clean is None or _CONTROL.search(clean):
        return Located(nowhere, None)
    prefix = _VERSION.match(clean)
    endpoint = clean if prefix is None else clean[prefix.end() :]
    version = None if prefix is None else prefix[0][2:]
    label = nowhere.partition(" ")[0]
    rows = _BY_SEGMENT.get((label, _first_segment(endpoint))) or _BY_SEGMENT[(label, None)]
    for row in rows:
        if row.method == "*" and prefix is not None:
            continue
        match = row.pattern.fullmatch(endpoint)
        if match is None:
            continue
        variables = match.groupdict()
        if any(variables.get(v) == "" for v in ("id", "name")) or "/" in variables.get("id", ""):
            return Located(nowhere, version)
        return Located(f"{label} {row.template}", version)
    return Located(nowhere, version)


FORM = b"application/x-www-form-urlencoded"


def is_form(content_types: list[bytes]) -> bool:
    """Whether Go parses a POST body with these ``Content-Type`` values as a form.

    ``Header.Get`` takes the first value; ``mime.ParseMediaType`` compares the
    type before any parameters, trimmed and in any case.
    """
    return bool(content_types) and content_types[0].partition(b";")[0].strip().lower() == FORM


def pulled_reference(query: str, form: str = "") -> str | None:
    """The single reference a ``POST /images/create`` pulls, if it names one.

    ``docker pull foo`` sends ``fromImage=foo&tag=latest``; a tag may also be
    a digest, and ``fromImage`` may carry the tag itself. An empty tag with a
    bare name means "all tags", which no single recipe can heal. dockerd reads
    the parameters from Go's ``Request.Form``: a form body's values come ahead
    of the query's, and the first one counts. A ``fromImage`` makes it a pull
    even beside a ``fromSrc``; a semicolon or a bad escape anywhere makes Go's
    ``ParseQuery`` fail, and dockerd answers 400 instead of pulling.
    """
    if any(";" in text or _BAD_ESCAPE.search(text) for text in (query, form)):
        return None
    params = parse_qs(form, keep_blank_values=True)
    for key, values in parse_qs(query, keep_blank_values=True).items():
        params.setdefault(key, []).extend(values)
    image = (params.get("fromImage") or [""])[0]
    if not image:
        return None
    tag = (params.get("tag") or [""])[0]
    if not tag:
        last = image.rsplit("/", 1)[-1]
        return image if (":" in last or "@" in image) else None
    if ":" in tag:
        return f"{image}@{tag}"
    return f"{image}:{tag}"
