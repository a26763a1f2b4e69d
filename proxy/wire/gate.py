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
- Denials are counted by route template, never by raw path.
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
from typing import TYPE_CHECKING

from hyperframe.frame import GoAwayFrame, SettingsFrame

from .access import AccessRecord, Peer, Verdict
from .http1 import KNOWN_HEADS, KNOWN_SIZE, RequestHead, field_values
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
        return None if interceptor is None else interceptor.claim(head)

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

    def h2_refusal(self) -> bytes:
        """What a client opening with the HTTP/2 preface reads before the connection closes."""
        hub = self.hub
        name = getattr(self.policy, "name", "?")
        if hub.observer is not None:
            hub.observer.policy_denied(hub.name, name, H2_ROUTE)
        message = (
            f'{PREFIX}listener "{hub.name}": policy "{name}" does not allow HTTP/2 '
            "with prior knowledge; use HTTP/1.1"
        )
        goaway = GoAwayFrame(0, last_stream_id=0, error_code=H2_HTTP_1_1_REQUIRED)
        goaway.additional_data = message.encode()
        return bytes(SettingsFrame(0).serialize() + goaway.serialize())

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
