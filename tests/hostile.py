"""Hostile request targets for the policy tests: a route's plain target, then bent.

Rules:
- Shared by the policy's property test and the differential test against
  dockerd, so both judge the same targets.
- A bend is what a client sends to slip a refused route past a policy that
  reads paths as text: dot segments, an encoded slash between segments or
  inside an id, ``%00``, ``;``, a changed case, a doubled prefix or slash, a
  trailing slash, a character sent escaped, ``?`` or ``#`` tricks, an
  absolute-form target.

Theory of operation:
``plain(row, ids)`` writes a route's template with the ids given for its
variables. ``targets(plains)`` draws one of the plain targets and applies one
to three bends, each at a position Hypothesis picks; the target it gives is
any string a client could send on a request line.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from proxy.wire.routes import DOCKERD_ROUTES, template

VARIABLE = re.compile(r"\{(\w+)\}")

ROWS = [row for row in DOCKERD_ROUTES if not row.startswith(("* ", "OPTIONS "))]
"""dockerd's routes a client names by method (the proxy's own are matched raw)."""


def plain(row: str, ids: dict[str, str], version: str = "/v1.41") -> tuple[str, str]:
    """``(method, target)`` of a route with ``ids[kind]`` for each variable.

    The kind of a variable is its template's first segment (``containers``,
    ``images``...) or, for a checkpoint, ``checkpoints``.
    """
    method, _, _ = row.partition(" ")
    path = template(row)
    kind = path.split("/")[1]
    filled = VARIABLE.sub(lambda m: ids["checkpoints" if m[1] == "checkpoint" else kind], path)
    return method, version + filled


def pattern(row: str) -> re.Pattern[str]:
    """A row's path as gorilla/mux matches it (``[^/]+`` where a variable names no pattern)."""
    parts = re.split(r"\{(\w+)(?::([^}]*))?\}", row.partition(" ")[2])  # text, name, pattern...
    texts, names, patterns = parts[::3], parts[1::3], parts[2::3]
    variables = [f"(?P<{n}>{p or '[^/]+'})" for n, p in zip(names, patterns, strict=True)]
    return re.compile(
        "".join(re.escape(t) + v for t, v in zip(texts, [*variables, ""], strict=True))
    )


def _escape(c: str) -> str:
    return f"%{ord(c):02X}"


def _bend(target: str, kind: str, at: int) -> str:
    path, mark, query = target.partition("?")
    slashes = [i for i, c in enumerate(path) if c == "/"]
    cut = slashes[at % len(slashes)]
    inside = 1 + at % max(len(path) - 1, 1)  # never before the first slash
    if kind == "dot":
        path = path[:cut] + "/." + path[cut:]
    elif kind == "dotdot":
        path = path[:cut] + "/x/.." + path[cut:]
    elif kind == "encoded-dotdot":
        path = path[:cut] + "/x/%2e%2E" + path[cut:]
    elif kind == "encoded-slash" and cut > 0:
        path = path[:cut] + "%2F" + path[cut + 1 :]
    elif kind == "slash-inside":
        path = path[:inside] + "%2F" + path[inside:]
    elif kind == "nul":
        path = path[:inside] + "%00" + path[inside:]
    elif kind == "newline":
        path = path[:inside] + "%0A" + path[inside:]
    elif kind == "semicolon":
        path = path[:inside] + ";" + path[inside:]
    elif kind == "case":
        path = path[:inside] + path[inside].swapcase() + path[inside + 1 :]
    elif kind == "escaped":
        path = path[:inside] + _escape(path[inside]) + path[inside + 1 :]
    elif kind == "double-slash":
        path = path[:cut] + "/" + path[cut:]
    elif kind == "trailing-slash":
        path += "/"
    elif kind == "double-prefix":
        path = "/v1.41" + path
    elif kind == "old-prefix":
        path = "/v1.23" + path
    elif kind == "encoded-question":
        path = path + "%3F" + (query or "x=1")
    elif kind == "fragment":
        path = path[:inside] + "#" + path[inside:]
    elif kind == "query-path":
        query = "x=/../../containers/json&" + query
        mark = "?"
    elif kind == "absolute":
        path = "http://d" + path
    return path + mark + query


BENDS = [
    "dot",
    "dotdot",
    "encoded-dotdot",
    "encoded-slash",
    "slash-inside",
    "nul",
    "newline",
    "semicolon",
    "case",
    "escaped",
    "double-slash",
    "trailing-slash",
    "double-prefix",
    "old-prefix",
    "encoded-question",
    "fragment",
    "query-path",
    "absolute",
]


@st.composite
def targets(draw: st.DrawFn, plains: list[tuple[str, str]]) -> tuple[str, str, str]:
    """``(method, plain target, bent target)``: one of ``plains``, bent one to three times."""
    method, target = draw(st.sampled_from(plains))
    bent = target
    for kind in draw(st.lists(st.sampled_from(BENDS), min_size=1, max_size=3)):
        bent = _bend(bent, kind, draw(st.integers(0, 200)))
    return method, target, bent
