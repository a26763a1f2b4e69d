"""The data path's states and their transition tables, in the spirit of h11's ``_state.py``.

Rules:
- A connection is four machines: the request side (what the client sends),
  the response side (what the client is owed), the splice (the half-closes
  of a raw byte stream) and the life of the client socket. Each is a table
  from a state and an event to the next state, and nothing else says how a
  state may change: ``connection`` moves a machine only by looking its event
  up here.
- An event with no row is a bug in the proxy, never a peer's fault: a peer's
  bytes are judged by ``http1`` before they become events. The connection
  raises ``InvalidTransition`` for one, logs it and aborts that one
  connection (under ``Hub(strict=True)``, in the tests, the error propagates).
- ``guarded`` is the one place an ``InvalidTransition`` is caught: around
  each entry point the event loop calls, where the connection it names has
  already been logged and aborted.
- States are the string constants below, compared by identity (``is``):
  readable in a log line, as cheap as a flag on the plain path.
- Pure: no I/O, no asyncio. A test can walk the tables without a socket.

Theory of operation:
The diagrams are the tables below, row by row: a state, then each event it
has a row for and the state that event leads to. ``connection`` says which
callback fires which event; how a request and its answer overlap, and what a
plain, a local and a spliced exchange are, is told there.

Request side (what the client sends)::

    IDLE          head -> SEND_BODY   claim -> COLLECT_BODY   complete -> DONE
                  splice -> SPLICED (HTTP/2 preface)          eof -> CLOSED
    SEND_BODY     body_end -> DONE   drop -> DISCARD_BODY   splice -> SPLICED
                  eof -> CLOSED (passed on as a half-close)
    COLLECT_BODY  body_end -> DONE   overflow -> SEND_BODY   drop -> DISCARD_BODY
                  stream -> STREAM_BODY (the handler reads it as it comes)
                  eof -> CLOSED (the claimed request can never complete: abort)
    STREAM_BODY   body_end -> DONE   forward -> SEND_BODY (the handler sent the
                  request upstream)   drop -> DISCARD_BODY   eof -> CLOSED (the
                  handler's read fails, or the started request is aborted)
    DISCARD_BODY  body_end -> DONE   eof -> CLOSED
    DONE          next -> IDLE   splice -> SPLICED   eof -> CLOSED
    CLOSED        splice -> SPLICED (the splice starts half-closed)

Response side (what the client is owed)::

    IDLE          send -> AWAIT_HEAD   claim -> LOCAL   splice -> SPLICED
    LOCAL         send -> AWAIT_HEAD (forward)   roundtrip -> CAPTURE_HEAD
                  answer -> DONE (the handler returned)
    AWAIT_HEAD    interim -> AWAIT_HEAD   head -> BODY   complete -> DONE
                  splice -> SPLICED   fail -> DONE (the proxy's own 502)
    BODY          body_end -> DONE
    CAPTURE_HEAD  interim -> CAPTURE_HEAD   head -> CAPTURE_BODY
                  complete -> LOCAL   fail -> LOCAL
    CAPTURE_BODY  body_end -> LOCAL   overflow -> BODY   fail -> LOCAL
    DONE          next -> IDLE

Splice (the half-closes of a raw byte stream)::

    OPEN          client_eof -> CLIENT_SHUT   daemon_eof -> DAEMON_SHUT
    CLIENT_SHUT   daemon_eof -> SHUT
    DAEMON_SHUT   client_eof -> SHUT

Life (the client socket; closing twice is closing once)::

    OPEN          close -> CLOSING   lost -> CLOSED
    CLOSING       lost -> CLOSED
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

IDLE = "IDLE"
SEND_BODY = "SEND_BODY"
COLLECT_BODY = "COLLECT_BODY"
STREAM_BODY = "STREAM_BODY"
DISCARD_BODY = "DISCARD_BODY"
DONE = "DONE"
SPLICED = "SPLICED"
CLOSED = "CLOSED"
LOCAL = "LOCAL"
AWAIT_HEAD = "AWAIT_HEAD"
BODY = "BODY"
CAPTURE_HEAD = "CAPTURE_HEAD"
CAPTURE_BODY = "CAPTURE_BODY"
OPEN = "OPEN"
CLIENT_SHUT = "CLIENT_SHUT"
DAEMON_SHUT = "DAEMON_SHUT"
SHUT = "SHUT"
CLOSING = "CLOSING"

Table = dict[str, dict[str, str]]

REQUEST: Table = {
    IDLE: {"head": SEND_BODY, "claim": COLLECT_BODY, "complete": DONE,
           "splice": SPLICED, "eof": CLOSED},
    SEND_BODY: {"body_end": DONE, "drop": DISCARD_BODY, "splice": SPLICED, "eof": CLOSED},
    COLLECT_BODY: {"body_end": DONE, "overflow": SEND_BODY, "drop": DISCARD_BODY,
                   "stream": STREAM_BODY, "eof": CLOSED},
    STREAM_BODY: {"body_end": DONE, "forward": SEND_BODY, "drop": DISCARD_BODY, "eof": CLOSED},
    DISCARD_BODY: {"body_end": DONE, "eof": CLOSED},
    DONE: {"next": IDLE, "splice": SPLICED, "eof": CLOSED},
    SPLICED: {},
    CLOSED: {"splice": SPLICED},
}  # fmt: skip

RESPONSE: Table = {
    IDLE: {"send": AWAIT_HEAD, "claim": LOCAL, "splice": SPLICED},
    LOCAL: {"send": AWAIT_HEAD, "roundtrip": CAPTURE_HEAD, "answer": DONE},
    AWAIT_HEAD: {"interim": AWAIT_HEAD, "head": BODY, "complete": DONE,
                 "splice": SPLICED, "fail": DONE},
    BODY: {"body_end": DONE},
    CAPTURE_HEAD: {"interim": CAPTURE_HEAD, "head": CAPTURE_BODY, "complete": LOCAL, "fail": LOCAL},
    CAPTURE_BODY: {"body_end": LOCAL, "overflow": BODY, "fail": LOCAL},
    DONE: {"next": IDLE},
    SPLICED: {},
}  # fmt: skip

SPLICE: Table = {
    OPEN: {"client_eof": CLIENT_SHUT, "daemon_eof": DAEMON_SHUT},
    CLIENT_SHUT: {"daemon_eof": SHUT},
    DAEMON_SHUT: {"client_eof": SHUT},
    SHUT: {},
}

LIFE: Table = {
    OPEN: {"close": CLOSING, "lost": CLOSED},
    CLOSING: {"lost": CLOSED},
    CLOSED: {},
}

MACHINES: dict[str, Table] = {
    "request": REQUEST,
    "response": RESPONSE,
    "splice": SPLICE,
    "life": LIFE,
}


class InvalidTransition(Exception):
    """An event the current state has no row for: a bug in the proxy."""


P = ParamSpec("P")
R = TypeVar("R")


def guarded(entry: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R | None]:
    """An entry point from the event loop, on an object with a ``hub``.

    The bug an ``InvalidTransition`` reports was logged and its connection
    aborted where it was raised; what is left is to keep the loop from
    logging it again as a protocol failure. Under ``Hub(strict=True)`` it
    propagates, so a test sees it. ``None`` stands for the answer an entry
    point gives after an abort (no ``eof_received`` keeps a socket open).

    Entry points take no argument or one. The wrapper passes them on by
    position, not as ``*args``: a call through ``*args`` costs the plain
    path (two entry points per exchange) about a tenth of its time.
    """
    code = entry.__code__
    plain = not (code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS))
    if code.co_argcount not in (1, 2) or code.co_kwonlyargcount or entry.__defaults__ or not plain:
        raise TypeError(f"{entry.__name__}: an entry point takes no argument or one, by position")
    if code.co_argcount == 1:

        def guard0(self: Any) -> R | None:
            try:
                return entry(self)  # type: ignore[call-arg]
            except InvalidTransition:
                _unless_strict(self)
                return None

        return cast(Callable[Concatenate[Any, P], R | None], guard0)

    def guard1(self: Any, arg: Any) -> R | None:
        try:
            return entry(self, arg)  # type: ignore[call-arg]
        except InvalidTransition:
            _unless_strict(self)
            return None

    return cast(Callable[Concatenate[Any, P], R | None], guard1)


def _unless_strict(owner: Any) -> None:
    """Inside the ``except`` of a guard: re-raise the error under a strict hub."""
    if owner.hub.strict:
        raise  # the InvalidTransition being handled
