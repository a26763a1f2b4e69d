"""The images a Dockerfile needs before it can build: FROM, COPY --from, RUN --mount from.

Everything the proxy reads out of a Dockerfile lives here. A prune that
deleted an image often deleted its base too; knowing the bases lets a heal
rebuild them first instead of failing, or silently pulling something else
from a registry.

Rules:

- Tokenising is docker's own: the ``dockerfile`` package wraps the Go parser
  the builders use, so parser directives, the escape character,
  continuations, comments and heredocs read exactly as ``docker build``
  reads them. A file that parser refuses names no images; the build itself
  will say why.
- Instruction keywords are case-insensitive.
- ``FROM [--flag=value ...] image [AS name]``: ``scratch`` is no image at
  all; a name given to an earlier stage (compared without case) means that
  stage, not an image.
- ``COPY --from=x`` and ``RUN --mount=...,from=x,...`` name an image when
  ``x`` is neither a stage name nor a number (a number is a stage index).
- FROM sees only the ARGs declared before the first FROM. A build arg
  overrides the default of a declared ARG and is ignored otherwise, and an
  undeclared variable expands to nothing. ``$VAR`` and ``${VAR}`` expand to the
  value, ``${VAR:-word}`` to ``word`` when the value is empty or unset,
  ``${VAR:+word}`` to ``word`` when it is not. An ARG default may use the ARGs
  declared above it. ``--from`` values expand in the same scope.
- With a ``target``, stages after the target stage are not built, so their
  images are not needed.
- ``open_args``: the build args are not known (a BuildKit build, whose args
  travel apart from its Dockerfile). An image whose reference uses an ARG
  declared with no default could be anything, so it is left out, with a
  debug line; every other image is named as above.
- Images come back as written once expanded, in file order, each once:
  normalising and deciding which ones matter is the caller's business.

Theory of operation: ``dockerfile.parse_string`` gives one command per
instruction with its flags and words split. One pass over them: before the
first FROM, ARG commands build the variable scope; every FROM expands its
image in that scope and records its stage name, so later references can
recognise it; COPY and RUN flags are searched for image references. Nested
``${A:-${B}}`` is not understood; it does not occur in the lines this is for.
"""

from __future__ import annotations

import csv
import logging
import re
import shlex
from collections.abc import Iterator, Mapping

import dockerfile

log = logging.getLogger(__name__)

_VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?:(:[-+])([^}]*))?\}|([A-Za-z_]\w*))", re.ASCII)


def from_images(
    text: str, build_args: Mapping[str, str], target: str | None = None, open_args: bool = False
) -> list[str]:
    """The images the build needs, variables expanded, stages and scratch left out."""
    # A lone surrogate (text decoded with surrogateescape) makes the Go
    # binding read a NULL buffer: the interpreter dies. Replaced, it is a
    # character like any other to the builder's tokeniser.
    text = text.encode("utf-8", "replace").decode("utf-8")
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return []
    scope: dict[str, str] = {}
    unset: set[str] = set()
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False

    def note(reference: str) -> None:
        if open_args:
            needed = {m[1] or m[4] for m in _VARIABLE_RE.finditer(reference)} & unset
            if needed:
                log.debug("%s left unhealed: it needs the build arg %s", reference, min(needed))
                return
        image = _expand(reference, scope)
        if image and image.lower() not in (*stages, "scratch") and not image.isdigit():
            images.append(image)

    for command in commands:
        keyword = (command.cmd or "").upper()  # None for a stray continuation
        if keyword == "FROM":
            if target is not None and target.lower() in stages:
                break  # the target stage is complete: later stages are not built
            seen_from = True
            words = command.value
            if words:
                note(words[0])
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
        elif keyword == "ARG" and not seen_from:
            _declare(command.value, scope, build_args, unset)
        elif keyword in ("COPY", "RUN"):
            for reference in _flag_images(command.flags):
                note(reference)
    return list(dict.fromkeys(images))


def _flag_images(flags: tuple[str, ...]) -> Iterator[str]:
    """The ``from`` of ``--from=x`` and of ``--mount=type=...,from=x``."""
    for flag in flags:
        name, _, value = flag.partition("=")
        if name == "--from":
            yield value
        elif name == "--mount":
            for field in next(csv.reader([value]), []):
                key, _, mounted = field.partition("=")
                if key.strip().lower() == "from":
                    yield mounted


def _declare(
    words: tuple[str, ...], scope: dict[str, str], build_args: Mapping[str, str], unset: set[str]
) -> None:
    """Add ``ARG NAME[=default] ...`` to the scope FROM lines expand in; ``unset``: no value."""
    for word in words:
        try:
            unquoted = shlex.split(word)
        except ValueError:  # unbalanced quotes: the builder refuses the file anyway
            continue
        name, has_default, default = " ".join(unquoted).partition("=")
        unset.discard(name)
        if name in build_args:
            scope[name] = build_args[name]
        elif has_default:
            scope[name] = _expand(default, scope)
        else:
            unset.add(name)


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
