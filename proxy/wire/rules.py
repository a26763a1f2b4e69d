"""The rules that span both sides of a connection, as pure functions beside the tables.

Rules:
- Each rule reads the two machines' states (``states``) and the few flags it
  needs, and returns an action: a string constant below, compared by
  identity like a state. It changes nothing; ``connection`` looks the
  action up and carries it out, firing the tables' events as it does.
- A rule is the whole of a decision that needs both sides: where the
  client stopped sending and what it is still owed, whether the daemon's
  going costs an answer, when an exchange is over. What one side decides
  alone (framing a body, parsing a head) stays with that side.
- Pure: no I/O, no asyncio. Each rule is tested row by row without a loop
  (``tests/unit/wire/test_rules.py``), as the tables are.

Theory of operation:
A request and its answer overlap, so an event on one side can mean several
things depending on the other: a client's EOF mid-body is passed on to the
daemon while the daemon's answer is owed, ends a local exchange's read with
an error, or aborts a claimed request that can never complete. Before this
module those were compound conditions inside ``Connection``, testable only
with a running loop and a fake daemon; here each is a short function whose
arguments are all it depends on. The actions name what happens, in the
order ``connection`` does it (``ANSWER_DROP``: the handler's answer stands,
then the unread body is dropped, then the exchange may finish).
"""

from __future__ import annotations

from .states import (
    AWAIT_HEAD,
    BODY,
    CAPTURE_BODY,
    CAPTURE_HEAD,
    CLOSED,
    COLLECT_BODY,
    DONE,
    IDLE,
    LOCAL,
    SEND_BODY,
    SPLICED,
    STREAM_BODY,
)

NOTHING = "NOTHING"
CLOSE = "CLOSE"
"""Close the client connection (and with it the daemon's)."""
ABORT = "ABORT"
"""Reset both connections: whatever was under way can only end broken."""
CLOSE_AFTER = "CLOSE_AFTER"
"""Close once the exchange in progress is over."""
FINISH = "FINISH"
"""Look whether the exchange is over (``finish``)."""
PASS_EOF = "PASS_EOF"
"""Pass the client's half-close on to the daemon."""
FAIL_READ = "FAIL_READ"
"""A local exchange's next read fails; the connection closes after its answer."""
SAY_EOF = "SAY_EOF"
"""Half-close towards the client: its answer is complete, the rest of its body is drained."""
FAIL = "FAIL"
"""The client gets the proxy's own error answer instead of the daemon's."""
FAIL_DROP = "FAIL_DROP"
"""As ``FAIL``, after dropping the rest of the request body."""
FAIL_CAPTURE = "FAIL_CAPTURE"
"""A local exchange's round trip fails; the handler decides what the client gets."""
REJECT = "REJECT"
"""Answer 400 and close: nothing of an answer has gone out yet."""
ANSWER = "ANSWER"
"""The handler's own answer is the exchange's; then ``FINISH``."""
ANSWER_DROP = "ANSWER_DROP"
"""As ``ANSWER``, dropping the body the handler did not read; then ``FINISH``."""
ANSWER_CLOSE = "ANSWER_CLOSE"
"""As ``ANSWER_DROP``, then close: the client still waits for leave to send it."""
FORWARD_REST = "FORWARD_REST"
"""The handler started the request upstream: the rest of its body follows; then ``FINISH``."""
NEXT = "NEXT"
"""Both sides back to IDLE; then whatever the client sent meanwhile is read."""
NEXT_CLOSE = "NEXT_CLOSE"
"""As ``NEXT``, then close: the exchange asked for it."""


def client_eof(req: str, resp: str) -> str:
    """The client will send nothing more; ``req`` is where it stopped.

    Between requests (or in a head that will never end) that closes. A
    claimed body that will never be whole aborts: nothing of it went
    upstream, or what the handler started upstream can only end broken.
    A handler streaming a body it still answers itself learns it at its
    next read. Otherwise the half-close is passed on, as a direct client's
    would reach dockerd: it ends a stream this client will never close
    fully in a way the proxy could see. Not during a local exchange: a
    heal's replay must still reach the daemon.
    """
    if req is IDLE:
        return CLOSE
    if req is COLLECT_BODY or (req is STREAM_BODY and resp is not LOCAL):
        return ABORT
    if req is STREAM_BODY:
        return FAIL_READ
    if resp is DONE:
        return FINISH
    if req is SEND_BODY or resp is AWAIT_HEAD or resp is BODY:
        return PASS_EOF
    return NOTHING


def daemon_gone(req: str, resp: str, partial: bool) -> tuple[bool, str]:
    """The daemon closed or reset its connection outside a splice.

    Returns whether the rest of the request body is dropped (it must not
    reach a new daemon connection, where it would read as a request of its
    own; the connection then closes after the exchange), and what the
    client gets. ``partial``: part of an answer's head reached the proxy.
    Answered already, the client is told with EOF, as Go's server does, and
    the rest drained: a close with unread bytes would reset the socket and
    could cost it the answer. Owing nothing, nothing happens (the next
    request reconnects). Part of an answer out, only a close says it broke;
    none of it out, the client gets a 502.
    """
    drop = req is SEND_BODY or (req is STREAM_BODY and resp is not LOCAL)
    if resp is DONE:
        return drop, SAY_EOF if drop else NOTHING
    if resp is IDLE or resp is LOCAL:
        return drop, NOTHING
    if (resp is AWAIT_HEAD and partial) or resp is BODY:
        return drop, CLOSE
    return drop, FAIL


def fail_answer(req: str, resp: str) -> str:
    """The daemon will not answer: who learns it, and how.

    A round trip's failure goes to its handler. A client awaiting a head
    gets the proxy's error, and the body it is still sending is dropped.
    Owing nothing of the daemon's (a splice ends by itself), nothing.
    """
    if resp is CAPTURE_HEAD or resp is CAPTURE_BODY:
        return FAIL_CAPTURE
    if resp is not AWAIT_HEAD:
        return NOTHING
    if req is SEND_BODY or req is STREAM_BODY:
        return FAIL_DROP
    return FAIL


def bad_framing(resp: str, status: int) -> str:
    """A request body whose framing makes no sense: a 400, unless an answer is under way.

    Once an answer has started (``status`` set, or a splice) a 400 would
    corrupt it, so the connection is aborted instead.
    """
    return ABORT if status or resp is SPLICED else REJECT


def local_done(req: str, resp: str, wrote: bool, expects: bool, continued: bool, held: bool) -> str:
    """A handler returned (with the client still connected): what ends its exchange.

    Still answering it (LOCAL) and having written nothing, it found the
    client gone: abort. Its answer written, a body it did not read all of
    is dropped; when the client was never invited to send it (``expects``
    without ``continued``), it may never come, so the connection closes, as
    Go's does. A handler that started the request upstream (``send``) gets
    all of the body there, read or not (``held``: bytes it did not read),
    even when the daemon has answered already.
    """
    if resp is LOCAL:
        if not wrote:
            return ABORT
        if req is COLLECT_BODY or req is STREAM_BODY:
            return ANSWER_CLOSE if expects and not continued else ANSWER_DROP
        return ANSWER
    if req is STREAM_BODY or held:
        return FORWARD_REST
    return FINISH


def finish(req: str, resp: str, handler_runs: bool, open_: bool, close_after: bool) -> str:
    """Whether the exchange is over: both sides done and no handler running.

    A client that stopped sending mid-exchange is closed once it has its
    answer; an exchange that asked for a close (its request, its answer or
    a shutdown) gets it once it is over.
    """
    if resp is not DONE or handler_runs or not open_:
        return NOTHING
    if req is CLOSED:
        return CLOSE
    if req is not DONE:
        return NOTHING
    return NEXT_CLOSE if close_after else NEXT


def close_when_idle(spliced: bool, req: str, resp: str, used: bool) -> str:
    """Shutdown: hijacks end now, busy or brand-new connections after one exchange.

    A connection accepted but not yet read from has a client about to send
    its first request, and clients do not retry a request on a fresh
    connection that closes unanswered; it gets its answer, bounded by the
    shutdown timeout. An idle kept-alive connection is closed at once,
    which clients do expect and retry.
    """
    if spliced:
        return ABORT
    if req is not IDLE or resp is not IDLE or not used:
        return CLOSE_AFTER
    return CLOSE
