"""One connection's access check: its policy judges each head, its audit log hears each exchange.

Rules:
- A connection has a ``Gate`` only when its listener has a policy for its
  peer or an audit log (``Hub.gated``); without one, the data path's only
  cost is one ``is None`` per request head.
- Every request head is judged before any byte of it reaches the daemon and
  before the heal interceptor may claim it: a hijack, a streamed upload and a
  heal are all judged by their head, and a heal through a route the policy
  refuses never starts.
- A refusal in ``enforce`` is answered by the proxy as a claimed exchange
  (``local``): 403 with a Docker-shaped message naming the listener, the
  policy and the route, which the docker CLI prints; the request's body is
  read and dropped, or, for a client that waits for ``100 Continue``, the
  connection closes after the answer, so the client never blocks writing a
  body nobody reads. ``warn`` logs and forwards; ``audit`` forwards, and the
  audit log says ``would_deny``.
- An audit log that is full and told to refuse (``Auditor.admits`` False)
  turns requests away with a 503 rather than let one go unrecorded.
- HTTP/2 with prior knowledge cannot be judged request by request here (it
  is spliced whole), so a connection that opens with its preface is refused
  wherever a policy applies: a SETTINGS and a GOAWAY saying why, then close.
  Where none does (``full``), an audit log still gets a line for it, as for
  a hijack: nothing said over it is recorded otherwise.
- Denials are counted by route template, never by raw path.
- The body of a create, an exec or a volume create (``bodychecks.LIMITS``)
  that the policy lets through is judged too, before any of it goes on
  (``BodyCheck``): read whole up to the route's limit (413 past it, the rest
  dropped, never forwarded unread), ``application/json`` only (400
  otherwise), read as dockerd reads it (400 for a body it cannot be sure of:
  malformed, too deep, keys that are one to Go). A refusal is 403 naming the
  field in ``enforce``; ``warn`` and ``audit`` forward the body and the
  record says ``would_deny`` with the field and value. Then the heal
  interceptor's handler, if it claims the request, gets the body as read.
- A verdict depends on the head's bytes alone (method, target, and a
  POST's ``Content-Type``), so it is remembered by them, per policy, as
  ``http1`` remembers heads: a keep-alive client repeating a request pays a
  dict lookup, not a judgement. The memo is bounded as that one is.

Theory of operation:
``Connection.connection_made`` asks ``Gate.at_accept``, which reads the peer
(only if the hub uses it), picks the policy by client rule, and gives None
when there is nothing to check. ``admit`` runs for each head; when the hub
has an auditor the gate also stands in as the connection's exchange observer,
so the record of an exchange is made where the metrics count it (the answer's
head, or the proxy's own answer), or at the connection's loss for one that
never got an answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from hyperframe.frame import GoAwayFrame, SettingsFrame

from . import bodychecks
from .access import AccessRecord, Peer, Verdict
from .http1 import KNOWN_HEADS, KNOWN_SIZE, RequestHead, dechunk, field_values
from .peer import SocketLike, read_peer

if TYPE_CHECKING:
    from .hub import Hub, Interceptor, Judge
    from .local import Exchange, Handler

log = logging.getLogger(__name__)

PREFIX = "docker-heal-proxy: "
H2_HTTP_1_1_REQUIRED = 0xD
"""RFC 9113's error code for "use HTTP/1.1 instead"."""
H2_ROUTE = "PRI *"
"""What an HTTP/2 preface counts as in ``policy_denials_total``: its request line."""


def refusal(listener: str, verdict: Verdict) -> str:
    """The message a client reads: the policy's reason, with the listener named first."""
    reason = verdict.reason.removeprefix(PREFIX) or (
        f'policy "{verdict.policy}" does not allow {verdict.route}'
    )
    return f'{PREFIX}listener "{listener}": {reason}'


def _answer(status: int, message: str) -> Handler:
    async def answer(exchange: Exchange) -> None:
        exchange.fail(status, message)

    return answer


class Gate:
    """One connection's policy, peer and audit record in progress."""

    __slots__ = ("head", "hub", "judged", "peer", "policy", "started", "verdict")

    def __init__(self, hub: Hub, peer: Peer | None, policy: Judge | None) -> None:
        self.hub = hub
        self.peer = peer
        self.policy = policy
        self.judged: dict[bytes, Verdict] = (
            {} if policy is None else hub.verdicts.setdefault(policy, {})
        )
        """The policy's verdicts by head bytes, shared with the listener's other connections."""
        self.head: RequestHead | None = None
        """The request whose record is still to be made (audited hubs only)."""
        self.verdict: Verdict | None = None
        self.started = 0.0

    @classmethod
    def at_accept(cls, hub: Hub, sock: SocketLike | None) -> Gate | None:
        peer = read_peer(sock) if hub.reads_peer else None
        policy = hub.policy_for(peer)
        if policy is None and hub.auditor is None:
            return None  # e.g. root on a listener whose rules give it ``full``
        return cls(hub, peer, policy)

    def admit(self, head: RequestHead, interceptor: Interceptor | None) -> Handler | None:
        """The handler that answers ``head`` in the proxy's name, or None to forward it."""
        hub = self.hub
        verdict = None
        refused: Handler | None = None
        policy = self.policy
        if policy is not None:
            verdict = self.judged.get(head.raw)
            if verdict is None:
                verdict = self._judge(policy, head)
            if verdict.denied:
                if verdict.mode == "enforce":
                    observer = hub.observer
                    if observer is not None:
                        observer.policy_denied(hub.name, verdict.policy, verdict.route)
                    refused = _answer(403, refusal(hub.name, verdict))
                elif verdict.mode == "warn":
                    log.warning("%s (warn mode: forwarded)", refusal(hub.name, verdict))
        auditor = hub.auditor
        if auditor is not None:
            self.head, self.verdict, self.started = head, verdict, time.perf_counter()
            if refused is None and not auditor.admits():
                refused = _answer(
                    503, f"{PREFIX}the audit log is full; refusing rather than not recording"
                )
        if refused is not None:
            return refused
        then = None if interceptor is None else interceptor.claim(head)
        if policy is not None and verdict is not None and not verdict.denied:
            limit = bodychecks.LIMITS.get(verdict.route)
            if limit is not None:
                return BodyCheck(self, policy, verdict, limit, then)
        return then

    def _judge(self, policy: Judge, head: RequestHead) -> Verdict:
        method = head.method
        types = field_values(head, b"content-type") if method == "POST" else None
        verdict = policy.judge(method, head.target, types)
        raw, judged = head.raw, self.judged
        if len(raw) <= KNOWN_SIZE:
            if len(judged) >= KNOWN_HEADS:
                judged.clear()  # a working set this large is not one of repeats
            judged[raw] = verdict
        return verdict

    def refuses(self, method: str, target: str) -> str | None:
        """The refusal ``enforce`` gives ``method target``; None when allowed, or only warned of."""
        policy = self.policy
        if policy is None:
            return None
        verdict = policy.judge(method, target, [])
        if not verdict.denied or verdict.mode != "enforce":
            return None
        return refusal(self.hub.name, verdict)

    def h2_refusal(self, policy: Judge) -> bytes:
        """What a client opening with the HTTP/2 preface reads before the connection closes.

        Counted and recorded as the refusal of a request line ``PRI *``, the
        preface's own: there is no other to name it by.
        """
        hub = self.hub
        reason = f'policy "{policy.name}" does not allow HTTP/2 with prior knowledge'
        if hub.observer is not None:
            hub.observer.policy_denied(hub.name, policy.name, H2_ROUTE)
        if hub.auditor is not None:
            verdict = Verdict(policy.name, "enforce", H2_ROUTE, None, True, reason)
            record = AccessRecord(hub.name, self.peer, "PRI", "*", verdict, 0, 0.0, False)
            hub.auditor.record(record)
        message = f'{PREFIX}listener "{hub.name}": {reason}; use HTTP/1.1'
        goaway = GoAwayFrame(0, last_stream_id=0, error_code=H2_HTTP_1_1_REQUIRED)
        goaway.additional_data = message.encode()
        return bytes(SettingsFrame(0).serialize() + goaway.serialize())

    def h2_spliced(self) -> None:
        """An HTTP/2 connection spliced whole (no policy here): what goes on inside
        is no request the proxy reads, so, like a hijack, the connection gets a
        line of its own, ``PRI *`` (its one request line)."""
        auditor = self.hub.auditor
        if auditor is not None:
            auditor.record(AccessRecord(self.hub.name, self.peer, "PRI", "*", None, 0, 0.0, True))

    # -- the audit log: the connection's exchange observer when there is one --

    def exchange(self, method: str, path: str, status: int, seconds: float) -> None:
        observer = self.hub.observer
        if observer is not None:
            observer.exchange(method, path, status, seconds)
        self._record(status, seconds)

    def lost(self) -> None:
        """The connection went with an exchange no answer was counted for."""
        if self.head is not None:
            self._record(0, time.perf_counter() - self.started)

    def _record(self, status: int, seconds: float) -> None:
        head, auditor = self.head, self.hub.auditor
        if head is None or auditor is None:
            return
        self.head = None
        auditor.record(
            AccessRecord(
                listener=self.hub.name,
                peer=self.peer,
                method=head.method,
                path=head.target,
                verdict=self.verdict,
                status=status,
                seconds=seconds,
                hijacked=status == 101,
            )
        )


class AsWritten:
    """The resolver of a hub given none: paths as written, and no image name
    known, so that an ``images`` list refuses rather than guesses."""

    def path(self, path: str) -> str:
        return path

    def image(self, reference: str) -> str | None:
        return None


def _is_json(types: list[bytes]) -> bool:
    return len(types) == 1 and types[0].partition(b";")[0].strip().lower() == b"application/json"


class BodyCheck:
    """The handler of a request whose body the policy judges (see the rules)."""

    __slots__ = ("gate", "limit", "policy", "then", "verdict")

    def __init__(
        self, gate: Gate, policy: Judge, verdict: Verdict, limit: int, then: Handler | None
    ) -> None:
        self.gate = gate
        self.policy = policy
        self.verdict = verdict
        self.limit = limit
        self.then = then
        """The heal interceptor's handler for this request, if it claimed it."""

    async def __call__(self, exchange: Exchange) -> None:
        hub, verdict, head = self.gate.hub, self.verdict, exchange.head
        where = f'{PREFIX}listener "{hub.name}": policy "{verdict.policy}"'
        if not _is_json(field_values(head, b"content-type")):
            exchange.fail(400, f"{where} takes only an application/json body on {verdict.route}")
            return
        raw = await self._whole(exchange, where)
        if raw is None:
            return
        try:
            found = bodychecks.judge(
                verdict.policy,
                self.policy.create,
                verdict.route,
                dechunk(raw) if head.chunked else raw,
                hub.resolver or AsWritten(),
            )
        except ValueError as exc:
            found = bodychecks.Refusal("body", "", f"{where} cannot read this body: {exc}")
        if found is not None and not self._passes(exchange, found):
            return
        exchange.keep(raw)
        if self.then is not None:
            await self.then(exchange)
        else:
            exchange.forward(head.raw + raw)

    async def _whole(self, exchange: Exchange, where: str) -> bytes | None:
        """The raw body, or None when it was answered (413) or the client left mid-body."""
        raw = bytearray()
        try:
            while data := await exchange.read():
                raw += data
                if len(raw) > self.limit:
                    exchange.fail(
                        413,
                        f"{where} reads at most {self.limit} bytes of a {self.verdict.route} body",
                    )
                    return None
        except ConnectionError:
            return None
        return None if data is None else bytes(raw)

    def _passes(self, exchange: Exchange, found: bodychecks.Refusal) -> bool:
        """Whether a refused body goes on all the same (``warn``, ``audit``); the
        record says what ``enforce`` would have refused, and where."""
        gate, verdict = self.gate, self.verdict
        unread = found.field == "body"
        reason = found.reason if unread else f"{PREFIX}{found.reason}"
        denied = replace(
            verdict, denied=True, reason=reason, field=found.field, value=found.value or None
        )
        gate.verdict = denied
        if verdict.mode == "enforce":
            if unread:
                exchange.fail(400, reason)
                return False
            observer = gate.hub.observer
            if observer is not None:
                observer.policy_denied(gate.hub.name, verdict.policy, verdict.route)
            exchange.fail(403, refusal(gate.hub.name, denied))
            return False
        if verdict.mode == "warn":
            log.warning("%s (warn mode: forwarded)", refusal(gate.hub.name, denied))
        return True
