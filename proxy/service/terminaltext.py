"""Text from others, made harmless for a terminal: control characters shown, not obeyed.

Rules:
- Recipe output, failure messages and tags reach ``status`` and ``heal`` from
  builds that anyone who can reach the socket can start. Written raw, an
  escape sequence in a build's output would drive the terminal of whoever
  reads the status (move the cursor, rewrite earlier lines, retitle the
  window, and on some terminals answer back as if typed).
- So every control character is shown as text, as ``less`` and ``cat -v``
  do: C0 controls and DEL in caret notation (``^[`` for ESC, ``^?`` for
  DEL), the C1 controls (U+0080 to U+009F, which some terminals obey as
  escape sequences of their own) as ``<U+009B>``. A newline inside one
  line is a control character too: it would start a line the reader takes
  for the program's own. Tabs are kept: they move the cursor right, nothing
  more.

Theory of operation: one ``str.translate`` table, built once.
"""

from __future__ import annotations


def _shown(code: int) -> str:
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


_TABLE = {
    code: _shown(code) for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != ord("\t")
}


def harmless(line: str) -> str:
    """``line`` with every control character but the tab shown as text."""
    return line.translate(_TABLE)


def harmless_lines(lines: list[str]) -> str:
    """``lines`` made harmless each, joined into text that ends with a newline."""
    return "".join(harmless(line) + "\n" for line in lines)
