""".dockerignore rules: which paths of a build context stay out of the tar.

Rules:
- Decisions match the docker CLI's, which reads the file with moby's
  ``ignorefile`` reader and decides with ``patternmatcher``:

  * a line whose first character is ``#`` is a comment; other lines are
    trimmed, and blank ones skipped;
  * a leading ``!`` makes the line an exception, which re-includes what
    earlier lines excluded;
  * a pattern is cleaned like Go's ``filepath.Clean`` and loses one leading
    ``/``, so ``/a//b/../c/`` means ``a/c``;
  * ``*`` is any run of characters but ``/``, ``?`` one such character,
    ``[...]`` a class as in a regular expression, ``\\`` escapes the next
    character, and ``**`` any number of whole directories (even none);
  * a pattern that matches a directory matches everything under it;
  * the last line that matches a path, or one of its parent directories,
    decides: excluded unless that line is an exception.

- Some paths are always kept whatever the lines say. The docker CLI always
  sends the Dockerfile and ``.dockerignore`` so the builder can read them;
  ``IgnoreRules.keeping`` records such paths by name, not as patterns, so a
  Dockerfile called ``[x]`` is not mistaken for a character class.
- A malformed pattern is an error (``IgnoreSyntaxError``), as it is for
  ``docker build``; silently sending a different context would be worse.
- Nothing here touches the file system: paths are slash-separated strings
  relative to the context root.

Theory of operation:

Each line compiles into a ``_Pattern`` holding a predicate over a cleaned
path. Like patternmatcher, a pattern with no wildcards is compared as a
string, ``prefix/**`` as a string prefix and ``**suffix`` as a string suffix;
everything else becomes an anchored regular expression. These shortcuts are
not only speed: they define what ``**.log`` matches (any path ending in
``.log``), so they are kept.

``excludes`` walks the patterns in order, testing each against the path and
its ancestors. ``prunes`` answers the question a directory walk asks: may it
skip a whole directory without looking inside? Only when the directory is
excluded and no exception, nor a kept path, could match something below it.
An exception "could match" when the literal text before its first wildcard
is compatible with ``dir/``; that over-approximates, which costs a walk into
the directory, never a wrongly dropped file. (The classic docker CLI looks
only for exceptions spelled with the directory as a literal prefix, so it
loses ``!**/keep`` under an excluded directory; this module sends it.)
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_REGEX_SPECIALS = frozenset(".+()|{}$")
"""Characters that are literal in a pattern but special in a regex."""

_WILDCARDS = frozenset("*?[\\")
"""Characters at which a pattern stops being literal text."""


class IgnoreSyntaxError(ValueError):
    """A .dockerignore line that docker would refuse as well."""


def clean(path: str) -> str:
    """Clean like Go's ``filepath.Clean``, which ``posixpath.normpath`` is
    not quite: it keeps a leading ``//``."""
    return posixpath.normpath(re.sub("/{2,}", "/", path)) if path else "."


@dataclass(frozen=True)
class _Pattern:
    text: str
    """The cleaned pattern, without its ``!``."""
    exception: bool
    matches: Callable[[str], bool]

    def matches_or_parent(self, path: str) -> bool:
        if self.matches(path):
            return True
        parts = path.split("/")
        return any(self.matches("/".join(parts[:n])) for n in range(1, len(parts)))

    def could_match_under(self, directory: str) -> bool:
        literal = self.text
        for index, char in enumerate(self.text):
            if char in _WILDCARDS:
                literal = self.text[:index]
                break
        below = directory + "/"
        return literal.startswith(below) or below.startswith(literal)


def _compile(text: str) -> Callable[[str], bool]:
    """Turn one cleaned pattern into a predicate, or raise ``IgnoreSyntaxError``."""
    regex: list[str] = []
    kind = "exact"
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("**", index):
            starts_pattern = index == 0
            index += 2
            if text.startswith("/", index):
                index += 1
            if index < len(text):
                regex.append("(.*/)?")
                kind = "regex"
            elif kind == "exact":
                kind = "prefix"
            else:
                regex.append(".*")
                kind = "regex"
            if starts_pattern:
                kind = "suffix"
            continue
        index += 1
        if char == "*":
            regex.append("[^/]*")
            kind = "regex"
        elif char == "?":
            regex.append("[^/]")
            kind = "regex"
        elif char == "\\":
            if index == len(text):
                raise IgnoreSyntaxError(f"bad .dockerignore pattern {text!r}: trailing backslash")
            regex.append("\\" + text[index])
            index += 1
            kind = "regex"
        elif char in "[]":
            regex.append(char)
            kind = "regex"
        elif char in _REGEX_SPECIALS:
            regex.append("\\" + char)
        else:
            regex.append(char)
    try:
        compiled = re.compile("".join(regex))
    except re.error as exc:
        raise IgnoreSyntaxError(f"bad .dockerignore pattern {text!r}: {exc}") from None
    if kind == "exact":
        return lambda path: path == text
    if kind == "prefix":
        head = text[:-2]
        return lambda path: path.startswith(head)
    if kind == "suffix":
        tail = text[2:]
        return lambda path: path.endswith(tail) or (tail[:1] == "/" and path == tail[1:])
    return lambda path: compiled.fullmatch(path) is not None


def _parse_line(line: str) -> _Pattern | None:
    if line.startswith("#"):
        return None
    line = line.strip()
    if not line:
        return None
    exception = line.startswith("!")
    if exception:
        line = line[1:].strip()
        if not line:
            raise IgnoreSyntaxError('illegal exclusion pattern: "!"')
    text = clean(line)
    if len(text) > 1 and text.startswith("/"):
        text = text[1:]
    return _Pattern(text, exception, _compile(text))


@dataclass(frozen=True)
class IgnoreRules:
    """The parsed lines of one .dockerignore plus the paths always kept."""

    patterns: tuple[_Pattern, ...] = ()
    kept: frozenset[str] = frozenset()

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        # Go's line scanner splits on "\n" only; strip() then drops any "\r".
        lines = text.removeprefix("\ufeff").split("\n")
        return cls(tuple(p for p in map(_parse_line, lines) if p is not None))

    def keeping(self, paths: Iterable[str]) -> IgnoreRules:
        """These rules, except that ``paths`` are never excluded."""
        return IgnoreRules(self.patterns, self.kept | {clean(p) for p in paths})

    def excludes(self, rel_path: str) -> bool:
        path = clean(rel_path)
        if path == "." or path in self.kept:
            return False
        excluded = False
        for pattern in self.patterns:
            # A pattern that agrees with the current verdict cannot change it.
            if pattern.exception == excluded and pattern.matches_or_parent(path):
                excluded = not pattern.exception
        return excluded

    def prunes(self, rel_dir: str) -> bool:
        """Whether a walk may skip ``rel_dir`` and everything below it."""
        directory = clean(rel_dir)
        if not self.excludes(directory):
            return False
        below = directory + "/"
        if any(kept.startswith(below) for kept in self.kept):
            return False
        return not any(p.exception and p.could_match_under(directory) for p in self.patterns)
