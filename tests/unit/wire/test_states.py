"""states: the tables are closed, and the diagrams in the docstring are the tables.

The diagrams are what a reader checks a change against, so a row added to a
table and not to its diagram (or the other way round) fails here.
"""

from __future__ import annotations

import re

import pytest

from proxy.wire import states
from proxy.wire.states import LIFE, MACHINES, REQUEST, RESPONSE, SPLICE, Table

_STATE_LINE = re.compile(r"^    ([A-Z_]+)\s")
_ROW = re.compile(r"\b([a-z_]+) -> ([A-Z_]+)\b")


def diagram(title: str) -> list[tuple[str, str, str]]:
    """The rows drawn under ``title::`` in the module docstring, in order."""
    assert states.__doc__ is not None
    return diagram_of(states.__doc__, title)


def diagram_of(doc: str, title: str) -> list[tuple[str, str, str]]:
    """The rows drawn under ``title::`` in a module docstring, in order."""
    _, found, rest = doc.partition(title + "::\n\n")
    assert found, f"no diagram titled {title!r}"
    rows: list[tuple[str, str, str]] = []
    state = None
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        if m := _STATE_LINE.match(line):
            assert m[1] != state and all(m[1] != s for s, _, _ in rows), f"{m[1]} drawn twice"
            state = m[1]
        if state is not None:
            rows += [(state, event, target) for event, target in _ROW.findall(line)]
    return rows


DIAGRAMS = {
    "request": ("Request side (what the client sends)", REQUEST),
    "response": ("Response side (what the client is owed)", RESPONSE),
    "splice": ("Splice (the half-closes of a raw byte stream)", SPLICE),
    "life": ("Life (the client socket; closing twice is closing once)", LIFE),
}


def test_every_machine_has_a_diagram() -> None:
    assert DIAGRAMS.keys() == MACHINES.keys()
    assert all(MACHINES[name] is table for name, (_, table) in DIAGRAMS.items())


@pytest.mark.parametrize(("title", "table"), DIAGRAMS.values(), ids=DIAGRAMS.keys())
def test_each_diagram_is_its_table(title: str, table: Table) -> None:
    drawn = diagram(title)
    rows = [(state, event, target) for state, row in table.items() for event, target in row.items()]
    assert len(drawn) == len(set(drawn)), "a row drawn twice"
    assert sorted(drawn) == sorted(rows)


def test_every_row_leads_to_a_state_of_its_own_table() -> None:
    for table in MACHINES.values():
        for row in table.values():
            assert set(row.values()) <= set(table)


class _Hub:
    def __init__(self, strict: bool) -> None:
        self.strict = strict


class _Entry:
    """Entry points of no argument and of one, as the event loop calls them."""

    def __init__(self, strict: bool) -> None:
        self.hub = _Hub(strict)

    @states.guarded
    def eof(self) -> bool:
        raise states.InvalidTransition("no 'eof' in state X")

    @states.guarded
    def data(self, data: bytes) -> int:
        if not data:
            raise states.InvalidTransition("no 'data' in state X")
        return len(data)


def test_the_guard_swallows_an_invalid_transition_unless_strict() -> None:
    loose = _Entry(strict=False)
    assert loose.eof() is None  # a false answer: the transport closes itself
    assert loose.data(b"") is None
    assert loose.data(b"abc") == 3
    strict = _Entry(strict=True)
    with pytest.raises(states.InvalidTransition, match="'eof'"):
        strict.eof()
    with pytest.raises(states.InvalidTransition, match="'data'"):
        strict.data(b"")


def test_the_guard_refuses_an_entry_point_it_would_call_wrongly() -> None:
    """It passes zero or one argument by position: anything else is refused where
    it is written, not with a TypeError the first time the loop calls it."""

    def two(self: object, data: bytes, up: object) -> None: ...

    def default(self: object, data: bytes = b"") -> None: ...

    def keyword(self: object, *, data: bytes) -> None: ...

    def rest(self: object, *data: bytes) -> None: ...

    for entry in (two, default, keyword, rest):
        with pytest.raises(TypeError, match=entry.__name__):
            states.guarded(entry)
