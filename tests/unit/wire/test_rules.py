"""rules: each cross-side rule, row by row, without a loop or a socket.

A row is the states and flags a rule is given and the action it must
return. Every branch of every rule has a row, so a rule changed to return a
different action for any case fails here; ``test_every_combination_has_an_action``
walks all the states the machines have, so no input falls through to
something that is not an action.
"""

from __future__ import annotations

import itertools

import pytest

from proxy.wire import rules, states
from proxy.wire.rules import (
    ABORT,
    ANSWER,
    ANSWER_CLOSE,
    ANSWER_DROP,
    CLOSE,
    CLOSE_AFTER,
    FAIL,
    FAIL_CAPTURE,
    FAIL_DROP,
    FAIL_READ,
    FINISH,
    FORWARD_REST,
    NEXT,
    NEXT_CLOSE,
    NOTHING,
    PASS_EOF,
    REJECT,
    SAY_EOF,
)
from proxy.wire.states import (
    AWAIT_HEAD,
    BODY,
    CAPTURE_BODY,
    CAPTURE_HEAD,
    CLOSED,
    COLLECT_BODY,
    DISCARD_BODY,
    DONE,
    IDLE,
    LOCAL,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    SPLICED,
    STREAM_BODY,
)

ACTIONS = {
    value
    for name, value in vars(rules).items()
    if name.isupper() and isinstance(value, str) and name not in vars(states)
}

CLIENT_EOF = [
    # where the client stopped, what it is owed -> action
    (IDLE, IDLE, CLOSE),
    (IDLE, DONE, CLOSE),
    (COLLECT_BODY, LOCAL, ABORT),
    (COLLECT_BODY, AWAIT_HEAD, ABORT),  # a roundtrip's or an overflow's request can't end
    (STREAM_BODY, AWAIT_HEAD, ABORT),  # the handler started it upstream
    (STREAM_BODY, BODY, ABORT),
    (STREAM_BODY, LOCAL, FAIL_READ),  # the handler's next read says so
    (SEND_BODY, DONE, FINISH),  # answered early: the exchange ends
    (DONE, DONE, FINISH),
    (DISCARD_BODY, DONE, FINISH),
    (SEND_BODY, AWAIT_HEAD, PASS_EOF),
    (SEND_BODY, BODY, PASS_EOF),
    (DONE, AWAIT_HEAD, PASS_EOF),  # a stream the client half-closes
    (DONE, BODY, PASS_EOF),
    (DISCARD_BODY, BODY, PASS_EOF),
    (DONE, LOCAL, NOTHING),  # a heal's replay must still reach the daemon
    (DONE, CAPTURE_HEAD, NOTHING),
    (DISCARD_BODY, LOCAL, NOTHING),
]


@pytest.mark.parametrize(("req", "resp", "action"), CLIENT_EOF)
def test_client_eof(req: str, resp: str, action: str) -> None:
    assert rules.client_eof(req, resp) is action


DAEMON_GONE = [
    # req, resp, part of a head arrived -> body dropped, action
    (SEND_BODY, DONE, False, True, SAY_EOF),  # answered early: say so, drain the rest
    (STREAM_BODY, DONE, False, True, SAY_EOF),
    (DONE, DONE, False, False, NOTHING),
    (STREAM_BODY, LOCAL, False, False, NOTHING),  # the handler still reads its body
    (IDLE, IDLE, False, False, NOTHING),  # an idle connection: the next request reconnects
    (DONE, LOCAL, False, False, NOTHING),
    (SEND_BODY, AWAIT_HEAD, False, True, FAIL),
    (DONE, AWAIT_HEAD, False, False, FAIL),
    (DONE, CAPTURE_HEAD, False, False, FAIL),  # the round trip fails
    (DONE, CAPTURE_BODY, False, False, FAIL),
    (DONE, AWAIT_HEAD, True, False, CLOSE),  # part of an answer is out
    (SEND_BODY, BODY, False, True, CLOSE),
    (DONE, BODY, False, False, CLOSE),
]


@pytest.mark.parametrize(("req", "resp", "partial", "drop", "action"), DAEMON_GONE)
def test_daemon_gone(req: str, resp: str, partial: bool, drop: bool, action: str) -> None:
    assert rules.daemon_gone(req, resp, partial) == (drop, action)


FAIL_ANSWER = [
    (DONE, CAPTURE_HEAD, FAIL_CAPTURE),
    (STREAM_BODY, CAPTURE_BODY, FAIL_CAPTURE),
    (SEND_BODY, AWAIT_HEAD, FAIL_DROP),
    (STREAM_BODY, AWAIT_HEAD, FAIL_DROP),
    (DONE, AWAIT_HEAD, FAIL),
    (COLLECT_BODY, AWAIT_HEAD, FAIL),
    (DONE, BODY, NOTHING),
    (DONE, DONE, NOTHING),
    (SPLICED, SPLICED, NOTHING),
    (DONE, LOCAL, NOTHING),
]


@pytest.mark.parametrize(("req", "resp", "action"), FAIL_ANSWER)
def test_fail_answer(req: str, resp: str, action: str) -> None:
    assert rules.fail_answer(req, resp) is action


@pytest.mark.parametrize(
    ("resp", "status", "action"),
    [
        (AWAIT_HEAD, 0, REJECT),
        (LOCAL, 0, REJECT),
        (BODY, 200, ABORT),  # an answer is under way
        (SPLICED, 0, ABORT),
    ],
)
def test_bad_framing(resp: str, status: int, action: str) -> None:
    assert rules.bad_framing(resp, status) is action


LOCAL_DONE = [
    # req, resp, wrote, expects, continued, held -> action
    (DONE, LOCAL, False, False, False, False, ABORT),  # found the client gone
    (COLLECT_BODY, LOCAL, False, True, False, False, ABORT),
    (DONE, LOCAL, True, False, False, False, ANSWER),
    (DONE, LOCAL, True, True, False, False, ANSWER),  # the body came anyway
    (COLLECT_BODY, LOCAL, True, False, False, False, ANSWER_DROP),
    (STREAM_BODY, LOCAL, True, True, True, True, ANSWER_DROP),  # invited: drain it
    (COLLECT_BODY, LOCAL, True, True, False, False, ANSWER_CLOSE),  # never invited
    (STREAM_BODY, LOCAL, True, True, False, False, ANSWER_CLOSE),
    (STREAM_BODY, AWAIT_HEAD, False, False, False, False, FORWARD_REST),  # sent, not all read
    (STREAM_BODY, DONE, False, False, False, True, FORWARD_REST),  # answered early
    (COLLECT_BODY, BODY, False, False, False, True, FORWARD_REST),
    (DONE, AWAIT_HEAD, False, False, False, False, FINISH),  # forwarded
    (DONE, DONE, True, False, False, False, FINISH),
    (SEND_BODY, BODY, False, False, False, False, FINISH),  # the body overflowed
]


@pytest.mark.parametrize(
    ("req", "resp", "wrote", "expects", "continued", "held", "action"), LOCAL_DONE
)
def test_local_done(
    req: str, resp: str, wrote: bool, expects: bool, continued: bool, held: bool, action: str
) -> None:
    assert rules.local_done(req, resp, wrote, expects, continued, held) is action


FINISH_ROWS = [
    # req, resp, handler runs, open, close after -> action
    (DONE, DONE, False, True, False, NEXT),
    (DONE, DONE, False, True, True, NEXT_CLOSE),
    (CLOSED, DONE, False, True, False, CLOSE),  # answered a client that stopped sending
    (CLOSED, DONE, False, True, True, CLOSE),
    (DONE, DONE, True, True, False, NOTHING),  # the handler still runs
    (CLOSED, DONE, True, True, False, NOTHING),
    (DONE, DONE, False, False, False, NOTHING),  # closed already
    (DONE, BODY, False, True, False, NOTHING),  # the answer goes on
    (SEND_BODY, DONE, False, True, False, NOTHING),  # the body goes on
    (DISCARD_BODY, DONE, False, True, True, NOTHING),
    (STREAM_BODY, DONE, False, True, False, NOTHING),
]


@pytest.mark.parametrize(
    ("req", "resp", "handler_runs", "open_", "close_after", "action"), FINISH_ROWS
)
def test_finish(
    req: str, resp: str, handler_runs: bool, open_: bool, close_after: bool, action: str
) -> None:
    assert rules.finish(req, resp, handler_runs, open_, close_after) is action


@pytest.mark.parametrize(
    ("spliced", "req", "resp", "used", "action"),
    [
        (True, SPLICED, SPLICED, True, ABORT),
        (False, IDLE, IDLE, True, CLOSE),  # idle, kept alive: clients retry
        (False, IDLE, IDLE, False, CLOSE_AFTER),  # accepted, its first request on the way
        (False, SEND_BODY, AWAIT_HEAD, True, CLOSE_AFTER),
        (False, DONE, BODY, True, CLOSE_AFTER),
        (False, IDLE, LOCAL, True, CLOSE_AFTER),
    ],
)
def test_close_when_idle(spliced: bool, req: str, resp: str, used: bool, action: str) -> None:
    assert rules.close_when_idle(spliced, req, resp, used) is action


def test_every_combination_has_an_action() -> None:
    flags = (False, True)
    for req, resp in itertools.product(REQUEST, RESPONSE):
        assert rules.client_eof(req, resp) in ACTIONS
        assert rules.fail_answer(req, resp) in ACTIONS
        for partial in flags:
            assert rules.daemon_gone(req, resp, partial)[1] in ACTIONS
        for bits in itertools.product(flags, repeat=4):
            assert rules.local_done(req, resp, *bits) in ACTIONS
            assert rules.finish(req, resp, *bits[:3]) in ACTIONS
            assert rules.close_when_idle(bits[0], req, resp, bits[1]) in ACTIONS


def test_every_action_is_returned_by_some_row() -> None:
    rows = [*CLIENT_EOF, *DAEMON_GONE, *FAIL_ANSWER, *LOCAL_DONE, *FINISH_ROWS]
    named = {row[-1] for row in rows} | {REJECT, CLOSE_AFTER}
    assert named == ACTIONS
