"""terminaltext: no control character but the tab survives, and plain text is unchanged."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from proxy.service.terminaltext import harmless, harmless_lines


@given(st.text())
def test_no_control_character_but_the_tab_is_left(text: str) -> None:
    shown = harmless(text)
    assert all(unicodedata.category(char) != "Cc" or char == "\t" for char in shown)


@given(st.text(st.characters(blacklist_categories=("Cc",))))
def test_text_without_control_characters_is_unchanged(text: str) -> None:
    assert harmless(text) == text


def test_escape_sequences_are_shown_as_less_shows_them() -> None:
    assert harmless("\x1b]0;pwned\x07\x1b[2J\rok\x7f\x9b31m\tend") == (
        "^[]0;pwned^G^[[2J^Mok^?<U+009B>31m\tend"
    )


def test_a_newline_inside_a_line_does_not_start_another() -> None:
    assert harmless_lines(["one\nFAKE", "two"]) == "one^JFAKE\ntwo\n"
