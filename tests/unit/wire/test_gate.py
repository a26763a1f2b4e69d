"""gate: a listener's policy and audit log on the data path, in process against a fake daemon.

The policy here is a stand-in that refuses what its ``refuse`` set names (by
path), so these tests pin the wiring (what is judged when, what a refusal
looks like on the wire, what the audit log hears) and not any route table.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame
from inproc import Rig, ok, read_answer, rig, wait_until
from scenarios import PING, Claims, close_client, post, scenario, scenario_test

from proxy.wire.access import AccessRecord, Mode, Verdict
from proxy.wire.bodychecks import CreateRules
from proxy.wire.connection import H2_PREFACE
from proxy.wire.gate import refusal
from proxy.wire.http1 import RequestHead
from proxy.wire.local import Exchange, Handler
from proxy.wire.peer import ClientRule
from proxy.wire.policy import Policy

DENIED = 'docker-heal-proxy: listener "ci": policy "fake" does not allow POST /deny'


@dataclass(eq=False)
class FakePolicy:
    mode: Mode = "enforce"
    refuse: frozenset[str] = frozenset({"/deny"})
    name: str = "fake"
    judged: list[str] = field(default_factory=list)
    types: list[Sequence[bytes] | None] = field(default_factory=list)
    create: CreateRules = field(default_factory=CreateRules)

    def judge(
        self, method: str, target: str, content_types: Sequence[bytes] | None = None
    ) -> Verdict:
        self.judged.append(f"{method} {target}")
        self.types.append(content_types)
        path = target.partition("?")[0]
        denied = path in self.refuse
        return Verdict(
            self.name,
            self.mode,
            f"{method} {path}",
            None if denied else f"{method} {path}",
            denied,
            f'docker-heal-proxy: policy "{self.name}" does not allow {method} {path}'
            if denied
            else "",
        )


@dataclass
class FakeAuditor:
    full: bool = False
    records: list[AccessRecord] = field(default_factory=list)

    def admits(self) -> bool:
        return not self.full

    def record(self, record: AccessRecord) -> None:
        self.records.append(record)


def claimed_by(seen: list[str]) -> Claims:
    async def local(exchange: Exchange) -> None:
        seen.append(exchange.head.path)
        exchange.reply(200, b"{}")

    return Claims({"heal": local})


@scenario
async def a_refused_head_never_reaches_the_daemon_and_the_connection_goes_on() -> None:
    policy = FakePolicy()
    async with rig(name="ci", policy=policy) as r:
        reader, writer = await r.client()
        writer.write(post("/deny", b'{"Image":"x"}') + PING)
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"message": DENIED}
        assert await read_answer(reader) == ok()  # the body was drained, not taken for a head
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING
        assert r.recorder.denials == [("ci", "fake", "POST /deny")]
        assert r.recorder.exchanges == [("POST", "/deny", 403), ("GET", "/_ping", 200)]
        assert policy.judged == ["POST /deny", "GET /_ping"]
        assert policy.types == [[], None]  # a POST's Content-Type values: none sent


@scenario
async def a_repeated_head_is_judged_once_per_policy_whatever_the_connection() -> None:
    policy = FakePolicy()
    async with rig(name="ci", policy=policy) as r:
        for _ in range(2):
            reader, writer = await r.client()
            writer.write(PING * 2)
            for _ in range(2):
                assert await read_answer(reader) == ok()
            await close_client(r, writer)
        assert policy.judged == ["GET /_ping"]


@scenario
async def a_refused_body_awaited_with_100_continue_is_never_invited() -> None:
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        writer.write(post("/deny", b"", b"Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", b"Content-Length: 5"
        ))  # fmt: skip
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert await reader.read() == b""  # closed: the body is never read
        await close_client(r, writer)
        assert bytes(r.daemon.received) == b""


@scenario
async def a_refusal_comes_before_the_interceptor_and_an_allowed_claim_still_works() -> None:
    seen: list[str] = []
    policy = FakePolicy(refuse=frozenset({"/local/heal"}))
    async with rig(interceptor=claimed_by(seen), name="ci", policy=policy) as r:
        reader, writer = await r.client()
        writer.write(post("/local/heal", b"{}"))
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 403 ")
        assert seen == []  # a heal through a refused route never starts
        policy.refuse = frozenset()
        writer.write(post("/local/heal", b"{ }"))  # other head bytes: judged afresh
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        assert seen == ["/local/heal"]
        await close_client(r, writer)


@scenario
async def audit_mode_forwards_and_the_record_says_what_enforce_would_do() -> None:
    auditor = FakeAuditor()
    async with rig(name="ci", policy=FakePolicy(mode="audit"), auditor=auditor) as r:
        reader, writer = await r.client()
        writer.write(post("/deny?q=secret", b"{}") + PING)
        assert await read_answer(reader) == ok()
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert r.recorder.denials == []
        assert r.recorder.exchanges == [("POST", "/deny", 200), ("GET", "/_ping", 200)]
    first, second = auditor.records
    assert (first.listener, first.method, first.status) == ("ci", "POST", 200)
    assert first.path == "/deny?q=secret"  # the target as sent: the audit log cuts the query
    assert first.verdict is not None and first.verdict.denied and first.verdict.forward
    assert first.peer is not None and first.peer.uid == os.getuid()
    assert first.peer.pid == os.getpid()
    assert second.verdict is not None and not second.verdict.denied


@scenario
async def warn_mode_forwards() -> None:
    async with rig(name="ci", policy=FakePolicy(mode="warn")) as r:
        reader, writer = await r.client()
        writer.write(post("/deny", b"{}"))
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert r.recorder.denials == []


@scenario
async def a_full_audit_log_told_to_refuse_turns_requests_away() -> None:
    auditor = FakeAuditor(full=True)
    async with rig(name="ci", auditor=auditor) as r:
        reader, writer = await r.client()
        writer.write(PING)
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"audit log is full" in answer
        await close_client(r, writer)
        assert bytes(r.daemon.received) == b""
    assert [(a.status, a.verdict) for a in auditor.records] == [(503, None)]


@scenario
async def an_exchange_cut_short_is_recorded_without_a_status() -> None:
    auditor = FakeAuditor()

    async def never(head: object, body: bytes) -> bytes | None:
        await asyncio.Event().wait()
        return None

    async with rig(never, name="ci", auditor=auditor) as r:
        _, writer = await r.client()
        writer.write(PING)
        await wait_until(lambda: r.daemon.received, "the request upstream")
        writer.close()
        await r.settled()
    assert [(a.method, a.status) for a in auditor.records] == [("GET", 0)]


@scenario
async def the_http2_preface_is_refused_where_a_policy_applies() -> None:
    auditor = FakeAuditor()
    async with rig(name="ci", policy=FakePolicy(), auditor=auditor) as r:
        reader, writer = await r.client()
        writer.write(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = await reader.read()
        settings, rest = Frame.parse_frame_header(memoryview(data[:9]))
        assert isinstance(settings, SettingsFrame) and rest == 0
        goaway, length = Frame.parse_frame_header(memoryview(data[9:18]))
        assert isinstance(goaway, GoAwayFrame)
        goaway.parse_body(memoryview(data[18 : 18 + length]))
        assert goaway.error_code == 0xD
        assert b'policy "fake" does not allow HTTP/2' in goaway.additional_data
        await close_client(r, writer)
        assert bytes(r.daemon.received) == b""
        assert r.recorder.denials == [("ci", "fake", "PRI *")]
        assert r.recorder.h2 == 0
    ((method, path, verdict),) = [(a.method, a.path, a.verdict) for a in auditor.records]
    assert (method, path) == ("PRI", "*") and verdict is not None and verdict.denied


@scenario
async def an_http2_connection_spliced_on_an_audited_listener_gets_its_line() -> None:
    """Without a policy (``full``) the preface is spliced whole, and what goes
    on inside is no request the proxy reads: like a hijack, the connection
    itself gets a line, or every change made over HTTP/2 would go unrecorded."""
    auditor = FakeAuditor()
    # The daemon down: the fake one reads HTTP/1.1 only, and the line is made at the splice.
    async with rig(daemon_up=False, name="ci", auditor=auditor) as r:
        reader, writer = await r.client()
        writer.write(H2_PREFACE)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close_client(r, writer)
    ((method, path, verdict, hijacked),) = [
        (a.method, a.path, a.verdict, a.hijacked) for a in auditor.records
    ]
    assert (method, path, verdict, hijacked) == ("PRI", "*", None, True)


@scenario
async def a_client_rule_gives_its_caller_another_policy_or_none() -> None:
    me = frozenset({os.getuid()})
    policy = FakePolicy()
    for rule_policy in (None, FakePolicy(refuse=frozenset())):
        clients = (ClientRule(me, frozenset(), rule_policy),)
        async with rig(name="ci", policy=policy, clients=clients) as r:
            reader, writer = await r.client()
            writer.write(post("/deny", b"{}"))
            assert await read_answer(reader) == ok()
            (conn,) = r.hub.connections
            assert (conn.gate is None) == (rule_policy is None)  # full: nothing to check
            await close_client(r, writer)
    others = (ClientRule(frozenset({os.getuid() + 1}), frozenset(), None),)
    async with rig(name="ci", policy=policy, clients=others) as r:
        reader, writer = await r.client()
        writer.write(post("/deny", b"{}"))
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 403 ")
        await close_client(r, writer)


JSON = b"Content-Type: application/json\r\n"
CREATE = "/containers/create"
PRIVILEGED = b'{"Image":"a","HostConfig":{"Privileged":true}}'
PRIVILEGED_REFUSED = 'docker-heal-proxy: listener "ci": policy "fake" refuses privileged containers'


async def goes_through(
    r: Rig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    """The daemon answers ``request``, and it is all the daemon got."""
    writer.write(request)
    assert await read_answer(reader) == ok()
    await close_client(r, writer)
    assert bytes(r.daemon.received) == request


def message(answer: bytes) -> str:
    text: str = json.loads(answer.partition(b"\r\n\r\n")[2])["message"]
    return text


@scenario
async def a_create_body_the_policy_refuses_never_reaches_the_daemon() -> None:
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        writer.write(post(CREATE, PRIVILEGED, JSON) + PING)
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 403 ") and message(answer) == PRIVILEGED_REFUSED
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING
        assert r.recorder.denials == [("ci", "fake", "POST /containers/create")]


@scenario
async def a_create_body_the_policy_takes_goes_on_whole() -> None:
    body = b'{"Image":"a","HostConfig":{"Binds":["data:/w"]}}'
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        await goes_through(r, reader, writer, post(CREATE, body, JSON))


@scenario
async def a_chunked_create_is_judged_on_its_dechunked_body() -> None:
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PRIVILEGED), PRIVILEGED)
    head = b"POST /containers/create HTTP/1.1\r\nHost: d\r\n%sTransfer-Encoding: chunked\r\n\r\n"
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        writer.write(head % JSON + chunked + PING)
        assert message(await read_answer(reader)) == PRIVILEGED_REFUSED
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def a_body_over_the_limit_gets_413_and_is_never_forwarded() -> None:
    """Today's claimed bodies past 1 MiB are forwarded unread: never a judged one."""
    big = b'{"Image":"a","Labels":{"x":"' + b"y" * (2 << 20) + b'"}}'
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        writer.write(post(CREATE, big, JSON) + PING)
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert "reads at most 1048576 bytes" in message(answer)
        assert await read_answer(reader) == ok()  # the rest was read and dropped
        await close_client(r, writer)
        assert bytes(r.daemon.received) == PING


@scenario
async def an_exec_body_is_judged_by_the_real_route_table_and_its_own_limit() -> None:
    policy = Policy("p", allow=("POST /containers/{id}/exec",))
    async with rig(name="ci", policy=policy) as r:
        reader, writer = await r.client()
        path = "/v1.45/containers/c1/exec"
        writer.write(post(path, b'{"Cmd":["' + b"x" * (64 << 10) + b'"]}', JSON))
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 413 ")
        writer.write(post(path, b'{"Cmd":["sh"],"Privileged":true}', JSON))
        answer = await read_answer(reader)
        assert (
            message(answer)
            == 'docker-heal-proxy: listener "ci": policy "p" refuses privileged exec'
        )
        await goes_through(r, reader, writer, post(path, b'{"Cmd":["sh"],"User":"root"}', JSON))


@scenario
async def bodies_that_are_not_json_or_cannot_be_read_as_dockerd_reads_them_get_400() -> None:
    cases = [
        post(CREATE, b"Image=a", b"Content-Type: application/x-www-form-urlencoded\r\n"),
        post(CREATE, b'{"Image":"a"}'),
        post(CREATE, b'{"Image":"a","HostConfig":{"privileged":false,"Privileged":true}}', JSON),
        post(CREATE, b'{"Image":"a"', JSON),
    ]
    async with rig(name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        for request in cases:
            writer.write(request)
            answer = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert message(answer).startswith('docker-heal-proxy: listener "ci": policy "fake" ')
        await close_client(r, writer)
        assert bytes(r.daemon.received) == b""


@scenario
async def audit_mode_forwards_a_refused_body_and_the_record_names_the_field() -> None:
    auditor = FakeAuditor()
    async with rig(name="ci", policy=FakePolicy(mode="audit"), auditor=auditor) as r:
        reader, writer = await r.client()
        request = post(CREATE, PRIVILEGED, JSON)
        writer.write(request)
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert bytes(r.daemon.received) == request
        (record,) = auditor.records
        assert record.verdict is not None and record.verdict.denied
        assert (record.verdict.field, record.verdict.value) == ("HostConfig.Privileged", "true")
        assert r.recorder.denials == []


@scenario
async def the_heal_interceptor_gets_the_body_the_policy_judged() -> None:
    seen: list[bytes] = []

    class CreateClaims:
        def claim(self, head: RequestHead) -> Handler | None:
            async def create(exchange: Exchange) -> None:
                body = await exchange.body()
                assert body is not None
                seen.append(body)
                exchange.forward(exchange.head.raw + body)

            return create if head.path == CREATE else None

    body = b'{"Image":"a"}'
    async with rig(interceptor=CreateClaims(), name="ci", policy=FakePolicy()) as r:
        reader, writer = await r.client()
        writer.write(post(CREATE, body, JSON))
        assert await read_answer(reader) == ok()
        await close_client(r, writer)
        assert seen == [body]
        assert bytes(r.daemon.received) == post(CREATE, body, JSON)


@scenario
async def a_judged_body_past_the_collect_limit_before_its_first_read_is_held_not_sent() -> None:
    """A claimed body that outgrows ``BODY_LIMIT`` before its handler reads goes to the
    daemon unread; a judged one must not. The limit is lowered so that the bytes that
    come with the head already pass it, before the check's first read."""
    padded = PRIVILEGED[:-1] + b',"Labels":{"x":"' + b"y" * 4000 + b'"}}'
    saved = Exchange.BODY_LIMIT
    Exchange.BODY_LIMIT = 100
    try:
        async with rig(name="ci", policy=FakePolicy()) as r:
            reader, writer = await r.client()
            writer.write(post(CREATE, padded, JSON))
            assert message(await read_answer(reader)) == PRIVILEGED_REFUSED
            await close_client(r, writer)
            assert bytes(r.daemon.received) == b""
    finally:
        Exchange.BODY_LIMIT = saved


test_scenario = scenario_test(__name__)


def test_a_listener_without_policy_or_audit_log_makes_no_gate() -> None:
    async def check() -> None:
        async with rig() as r:
            assert not r.hub.gated and not r.hub.reads_peer
            reader, writer = await r.client()
            writer.write(PING)
            assert await read_answer(reader) == ok()
            (conn,) = r.hub.connections
            assert conn.gate is None and conn.observer is r.recorder
            await close_client(r, writer)

    from inproc import run

    run(check())


def test_a_refusal_names_the_listener_before_the_policy() -> None:
    verdict = FakePolicy().judge("POST", "/deny")
    assert refusal("ci", verdict) == DENIED
    bare = Verdict("p", "enforce", "GET other", None, True)
    assert (
        refusal("x", bare) == 'docker-heal-proxy: listener "x": policy "p" does not allow GET other'
    )
