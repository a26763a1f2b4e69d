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


def diagram(title: str) -> Table:
    """The rows drawn under ``title::`` in the module docstring."""
    assert states.__doc__ is not None
    _, found, rest = states.__doc__.partition(title + "::\n\n")
    assert found, f"no diagram titled {title!r}"
    rows: Table = {}
    state = None
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        if m := _STATE_LINE.match(line):
            state = m[1]
            rows[state] = {}
        if state is not None:
            rows[state].update(_ROW.findall(line))
    return rows


@pytest.mark.parametrize(
    ("title", "table"),
    [
        ("Request side (what the client sends)", REQUEST),
        ("Response side (what the client is owed)", RESPONSE),
        ("Splice (the half-closes of a raw byte stream)", SPLICE),
        ("Life (the client socket; closing twice is closing once)", LIFE),
    ],
)
def test_each_diagram_is_its_table(title: str, table: Table) -> None:
    assert diagram(title) == {state: row for state, row in table.items() if row}


def test_every_row_leads_to_a_state_of_its_own_table() -> None:
    for table in MACHINES.values():
        for row in table.values():
            assert set(row.values()) <= set(table)
