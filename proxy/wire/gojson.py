"""JSON from clients, read as dockerd's Go decoder reads it, to the depth Go allows.

The proxy looks into a few client bodies (a create's ``Image``, a build's
``buildargs``) and must come to the same reading as dockerd, or stand aside
and let dockerd answer. Python's ``json`` recurses once per level and raises
``RecursionError`` near 1,000, where Go's ``encoding/json`` reads 10,000; a
create nested 5,000 deep, which dockerd takes, used to end in a traceback.

Rules:
- Nesting: up to ``MAX_DEPTH`` (Go's 10,000) arrays and objects inside one
  another; one more is ``TooDeep``, a ``ValueError`` like any other syntax
  error, so callers that forward what they cannot read do so here too.
- Grammar: RFC 8259 as Go takes it: one value, whitespace (space, tab, LF,
  CR) around it; no ``NaN``/``Infinity``, no trailing commas, no control
  characters in strings. Bytes are UTF-8; an invalid sequence becomes
  U+FFFD, as Go's decoder does in strings, and so does a ``\\u`` escape of
  a lone surrogate (Python's ``json`` keeps it, and ``os`` would write
  ``\\udcff`` as the byte 0xff: another path than the one dockerd mounts).
- Objects are ``Members``: their (key, value) pairs in order, duplicates
  kept. Go matches a struct field's key case-insensitively and the last
  match wins, so the caller, who knows the field, applies that rule.
- Pure: text in, values out.

Theory of operation: ``json.loads`` (in C, a hundred times faster) reads
every body it can, with ``NaN`` and ``Infinity`` refused, which makes its
grammar Go's. Only when it runs out of stack does ``_read`` take over, the
same grammar without recursion: one regular expression takes the next token
(after whitespace), a string goes to ``json``'s own C string scanner, the
containers being read are an explicit stack, and ``_ACCEPTS`` is the table
of which tokens each state takes, so the depth is a list's length rather
than the interpreter's stack. Both give the same values for the same text
(a property test holds them to it). A text with a surrogate escape in it, and
only such a text, is walked once more (an explicit stack) to replace the
lone ones.
"""

from __future__ import annotations

import enum
import json
import json.decoder
import re
from collections.abc import Callable
from typing import Any, cast

MAX_DEPTH = 10_000
"""Go's ``encoding/json`` limit (``maxNestingDepth``)."""


class TooDeep(ValueError):
    """Arrays and objects nested deeper than ``MAX_DEPTH``."""


class Members(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept, as Go's decoder sees them."""


class _Token(enum.Enum):
    OPEN_OBJECT = "{"
    CLOSE_OBJECT = "}"
    OPEN_ARRAY = "["
    CLOSE_ARRAY = "]"
    COMMA = ","
    COLON = ":"
    STRING = '"'
    SCALAR = "number, true, false or null"


class _State(enum.Enum):
    VALUE = "a value"
    VALUE_OR_CLOSE = "a value or ]"
    KEY = "a key"
    KEY_OR_CLOSE = "a key or }"
    COLON = ":"
    COMMA_OR_CLOSE = ", or the end of the array or object"


_VALUES = frozenset({_Token.OPEN_OBJECT, _Token.OPEN_ARRAY, _Token.STRING, _Token.SCALAR})
_ACCEPTS: dict[_State, frozenset[_Token]] = {
    _State.VALUE: _VALUES,
    _State.VALUE_OR_CLOSE: _VALUES | {_Token.CLOSE_ARRAY},
    _State.KEY: frozenset({_Token.STRING}),
    _State.KEY_OR_CLOSE: frozenset({_Token.STRING, _Token.CLOSE_OBJECT}),
    _State.COLON: frozenset({_Token.COLON}),
    _State.COMMA_OR_CLOSE: frozenset({_Token.COMMA, _Token.CLOSE_ARRAY, _Token.CLOSE_OBJECT}),
}
"""Which tokens each state takes; any other is a syntax error."""

_TOKEN_RE = re.compile(
    r"[ \t\n\r]*(?:(?P<punct>[{}\[\],:\"])"
    r"|(?P<number>-?(?:0|[1-9][0-9]*)(?P<fraction>(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))"
    r"|(?P<literal>true|false|null))"
)
_WHITESPACE_RE = re.compile(r"[ \t\n\r]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A ``\\u`` escape of a surrogate, lone or in a pair: only then is there one to replace."""
_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERALS: dict[str, bool | None] = {"true": True, "false": False, "null": None}
_scanstring = cast(Callable[[str, int, bool], tuple[str, int]], vars(json.decoder)["scanstring"])
"""``json``'s own string reader (in C): escapes and control characters as ``json.loads``."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """The value in ``data``; raises ValueError (``TooDeep`` past ``MAX_DEPTH``)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, object_pairs_hook=Members, parse_constant=_refuse_constant)
    except RecursionError:
        value = _read(text)
    return _no_lone_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value


def _no_lone_surrogates(value: Any) -> Any:
    """``value`` with U+FFFD for each lone surrogate in its strings and keys, as Go
    decodes them (a pair is one character by now); containers are changed in place."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    stack = [value] if isinstance(value, list) else []
    while stack:
        items = stack.pop()
        for n, item in enumerate(items):
            if isinstance(items, Members):
                key, inner = item
                items[n] = (_SURROGATE.sub("\ufffd", key), _no_lone_surrogates_in(inner, stack))
            else:
                items[n] = _no_lone_surrogates_in(item, stack)
    return value


def _no_lone_surrogates_in(item: Any, stack: list[list[Any]]) -> Any:
    if isinstance(item, str):
        return _SURROGATE.sub("\ufffd", item)
    if isinstance(item, list):
        stack.append(item)
    return item


def _read(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """``loads`` without recursion; ``max_depth`` is lowered by tests only."""
    stack: list[list[Any]] = []
    """Open containers, innermost last: a plain list for an array, ``Members``."""
    keys: list[str] = []
    """The key of the member being read, per open object."""
    state = _State.VALUE
    position = 0
    while True:
        found = _TOKEN_RE.match(text, position)
        if found is None:
            at = _WHITESPACE_RE.match(text, position)
            where = at.end() if at else position
            seen = repr(text[where]) if where < len(text) else "the end"
            raise ValueError(f"expected {state.value}, found {seen} at offset {where}")
        position = found.end()
        value: Any = None
        token = _Token.SCALAR
        if punct := found["punct"]:
            token = _Token(punct)
        elif number := found["number"]:
            value = float(number) if found["fraction"] else int(number)
        else:
            value = _LITERALS[found["literal"]]
        if token not in _ACCEPTS[state]:
            raise ValueError(
                f"expected {state.value}, found {token.value} at offset {position - 1}"
            )
        if token is _Token.OPEN_OBJECT or token is _Token.OPEN_ARRAY:
            if len(stack) == max_depth:
                raise TooDeep(f"nested deeper than {max_depth} arrays and objects")
            if token is _Token.OPEN_OBJECT:
                stack.append(Members())
                keys.append("")
                state = _State.KEY_OR_CLOSE
            else:
                stack.append([])
                state = _State.VALUE_OR_CLOSE
            continue
        if token is _Token.COMMA:
            state = _State.KEY if isinstance(stack[-1], Members) else _State.VALUE
            continue
        if token is _Token.COLON:
            state = _State.VALUE
            continue
        if token is _Token.CLOSE_OBJECT or token is _Token.CLOSE_ARRAY:
            if isinstance(stack[-1], Members) != (token is _Token.CLOSE_OBJECT):
                raise ValueError(f"unexpected {token.value} at offset {position - 1}")
            value = stack.pop()
            if isinstance(value, Members):
                keys.pop()
        elif token is _Token.STRING:
            value, position = _scanstring(text, position, True)
            if state in (_State.KEY, _State.KEY_OR_CLOSE):
                keys[-1] = value
                state = _State.COLON
                continue
        # A whole value: it ends the document, or joins the container around it.
        if not stack:
            end = _WHITESPACE_RE.match(text, position)
            if end is None or end.end() != len(text):
                raise ValueError(f"data after the value at offset {position}")
            return value
        if isinstance(stack[-1], Members):
            stack[-1].append((keys[-1], value))
        else:
            stack[-1].append(value)
        state = _State.COMMA_OR_CLOSE
