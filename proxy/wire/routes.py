"""Which Engine API endpoint a request is for, without the version prefix.

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
- Templates are the Engine API's own path templates (``/containers/{id}/json``),
  so a dashboard reads like the API reference. A path that fits none is
  ``other``: a label value must never be a raw path, or an id per series would
  grow the metrics without bound.
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
then maps that endpoint to a template: an exact table lookup first, then the
templated patterns in order, else ``other``. ``pulled_reference`` reads a
pull's parameters from a form body and the query, in the order Go's
``Request.Form`` holds them.
"""

from __future__ import annotations

import functools
import re
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

# The Engine API's paths, templated. Order matters only where two could match.
TEMPLATES = [
    "/_ping",
    "/version",
    "/info",
    "/events",
    "/system/df",
    "/auth",
    "/session",
    "/grpc",
    "/build",
    "/build/prune",
    "/build/cancel",
    "/commit",
    "/containers/json",
    "/containers/create",
    "/containers/prune",
    "/containers/{id}/json",
    "/containers/{id}/top",
    "/containers/{id}/logs",
    "/containers/{id}/changes",
    "/containers/{id}/export",
    "/containers/{id}/stats",
    "/containers/{id}/resize",
    "/containers/{id}/start",
    "/containers/{id}/stop",
    "/containers/{id}/restart",
    "/containers/{id}/kill",
    "/containers/{id}/update",
    "/containers/{id}/rename",
    "/containers/{id}/pause",
    "/containers/{id}/unpause",
    "/containers/{id}/attach",
    "/containers/{id}/attach/ws",
    "/containers/{id}/wait",
    "/containers/{id}/archive",
    "/containers/{id}/exec",
    "/containers/{id}",
    "/exec/{id}/start",
    "/exec/{id}/resize",
    "/exec/{id}/json",
    "/images/json",
    "/images/create",
    "/images/load",
    "/images/get",
    "/images/search",
    "/images/prune",
    "/images/{name}/json",
    "/images/{name}/history",
    "/images/{name}/push",
    "/images/{name}/tag",
    "/images/{name}/get",
    "/images/{name}",
    "/distribution/{name}/json",
    "/networks",
    "/networks/create",
    "/networks/prune",
    "/networks/{id}/connect",
    "/networks/{id}/disconnect",
    "/networks/{id}",
    "/volumes",
    "/volumes/create",
    "/volumes/prune",
    "/volumes/{name}",
    "/plugins",
    "/plugins/privileges",
    "/plugins/pull",
    "/plugins/create",
    "/plugins/{name}/json",
    "/plugins/{name}/enable",
    "/plugins/{name}/disable",
    "/plugins/{name}/upgrade",
    "/plugins/{name}/push",
    "/plugins/{name}/set",
    "/plugins/{name}",
    "/swarm",
    "/swarm/init",
    "/swarm/join",
    "/swarm/leave",
    "/swarm/update",
    "/swarm/unlockkey",
    "/swarm/unlock",
    "/nodes",
    "/nodes/{id}",
    "/nodes/{id}/update",
    "/services",
    "/services/create",
    "/services/{id}",
    "/services/{id}/update",
    "/services/{id}/logs",
    "/tasks",
    "/tasks/{id}",
    "/tasks/{id}/logs",
    "/secrets",
    "/secrets/create",
    "/secrets/{id}",
    "/secrets/{id}/update",
    "/configs",
    "/configs/create",
    "/configs/{id}",
    "/configs/{id}/update",
    "/_heal/status",
]


def _regex(template: str) -> re.Pattern[str]:
    # Image and plugin names contain slashes; ids never do.
    parts = re.split(r"(\{id\}|\{name\})", template)
    body = "".join(
        "[^/]+" if p == "{id}" else ".+" if p == "{name}" else re.escape(p) for p in parts
    )
    return re.compile(f"^{body}$")


_FIXED = {t for t in TEMPLATES if "{" not in t}
_PATTERNS = [(t, _regex(t)) for t in TEMPLATES if "{" in t]


def api_path(path: str) -> str | None:
    """The Engine API path dockerd routes a target's path to, version prefix removed.

    ``/v1.41/containers/create``, ``/v1.41.0/containers/%63reate`` and
    ``http://d/v1.41/containers/create`` are all ``/containers/create``.
    ``None`` when dockerd routes the path nowhere: it refuses a bad escape or
    a relative target with a 400, and redirects an unclean path.
    """
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
    version = _VERSION.match(path)
    return path if version is None else path[version.end() :]


@functools.lru_cache(maxsize=4096)
def route(path: str) -> str:
    """The bounded template for a request path (query string excluded)."""
    endpoint = api_path(path)
    if endpoint is None:
        return "other"
    if endpoint in _FIXED:
        return endpoint
    for template, pattern in _PATTERNS:
        if pattern.match(endpoint):
            return template
    return "other"


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
