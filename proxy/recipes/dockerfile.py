"""The base images a Dockerfile builds FROM.

Everything the proxy reads out of a Dockerfile lives here. A prune that
deleted an image often deleted its base too; knowing the bases lets a heal
rebuild them first instead of failing, or silently pulling something else
from a registry.

Rules (as BuildKit reads a Dockerfile):

- Parser directives at the very top may set the escape character with
  ``# escape=`` (backslash or backtick); it defaults to backslash.
- A line ending in the escape character, trailing blanks aside, continues on
  the next. Blank lines and comment lines (first non-blank character ``#``)
  are dropped, also inside a continuation.
- Instruction keywords are case-insensitive.
- ``FROM [--flag=value ...] image [AS name]``: flags are ignored; ``scratch``
  is no image at all; a name given to an earlier stage (compared without
  case) means that stage, not an image.
- FROM sees only the ARGs declared before the first FROM. A build arg
  overrides the default of a declared ARG and is ignored otherwise, and an
  undeclared variable expands to nothing. ``$VAR`` and ``${VAR}`` expand to the
  value, ``${VAR:-word}`` to ``word`` when the value is empty or unset,
  ``${VAR:+word}`` to ``word`` when it is not. An ARG default may use the ARGs
  declared above it.
- Images come back as written once expanded, one per FROM, in file order:
  normalising and deciding which ones matter is the caller's business.

Theory of operation: one pass over logical lines (continuations joined,
comments dropped). Before the first FROM, ARG lines build the variable scope;
every FROM line expands its image in that scope, then records its stage name
so later FROM lines can recognise it. Nested ``${A:-${B}}`` and heredoc bodies
are not understood; neither occurs in the FROM lines this is meant for.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping

_DIRECTIVE_RE = re.compile(r"#\s*(\w+)\s*=\s*(\S*)\s*")
_VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?:(:[-+])([^}]*))?\}|([A-Za-z_]\w*))", re.ASCII)


def from_images(text: str, build_args: Mapping[str, str]) -> list[str]:
    """The images named by FROM lines, variables expanded, stages and scratch left out."""
    scope: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for line in _logical_lines(text):
        keyword, _, rest = line.replace("\t", " ").partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not seen_from:
            _declare(rest, scope, build_args)
        elif keyword == "FROM":
            seen_from = True
            words = [word for word in rest.split() if not word.startswith("--")]
            image = _expand(words[0], scope) if words else ""
            if image and image.lower() != "scratch" and image.lower() not in stages:
                images.append(image)
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
    return images


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions, continuations joined the way BuildKit joins them: no added space."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:
        directive = _DIRECTIVE_RE.fullmatch(line.strip())
        if directive is None:
            break
        if directive[1].lower() == "escape" and directive[2] in ("\\", "`"):
            escape = directive[2]
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith(escape):
            pending.append(line.rstrip()[:-1])
            continue
        yield "".join([*pending, line]).strip()
        pending = []
    if "".join(pending).strip():
        yield "".join(pending).strip()


def _declare(rest: str, scope: dict[str, str], build_args: Mapping[str, str]) -> None:
    """Add ``ARG NAME[=default] ...`` to the scope FROM lines expand in."""
    try:
        words = shlex.split(rest)
    except ValueError:  # unbalanced quotes: BuildKit would refuse the file anyway
        return
    for word in words:
        name, has_default, default = word.partition("=")
        if name in build_args:
            scope[name] = build_args[name]
        elif has_default:
            scope[name] = _expand(default, scope)


def _expand(word: str, scope: Mapping[str, str]) -> str:
    def value(variable: re.Match[str]) -> str:
        name, operator, alternative, bare = variable.groups()
        current = scope.get(name or bare, "")
        if operator == ":-":
            return current or _expand(alternative, scope)
        if operator == ":+":
            return _expand(alternative, scope) if current else ""
        return current

    return _VARIABLE_RE.sub(value, word)
