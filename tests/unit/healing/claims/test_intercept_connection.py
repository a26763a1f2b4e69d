"""intercept through a real ``Connection``: a fake daemon and a fake healer, in process."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, cast

from inproc import Rig, read_answer, rig, run, wait_until

from proxy.healing.claims.intercept import Interceptor
from proxy.healing.core.dockerfileparse import ParseProcess
from proxy.healing.core.healer import Healer
from proxy.healing.core.planner import Planner
from proxy.healing.stale.decision import Stale
from proxy.healing.stale.tracker import StaleTracker
from proxy.recipes.config import parse_config
from proxy.recipes.graph import HealPlan
from proxy.recipes.recipe import Recipe
from proxy.wire.flow import STREAM_LIMIT
from proxy.wire.http1 import RequestHead
from proxy.wire.policy import Policy

CONFIG = parse_config({"images": [{"match": "app:{tag}", "command": ["true"]}]}, base_dir=Path("/"))
CREATED = b'{"Id":"c1","Warnings":[]}'
MISSING = b'{"message":"No such image: app:1"}'
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class FakeHealer:
    """One shielded heal per image, as ``Healer`` runs them; ``release`` ends it."""

    def __init__(self) -> None:
        self.state_dir = Path("/nonexistent")  # a build test gives it a folder
        self.release = asyncio.Event()
        self.waiters = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.ensured: list[tuple[str, str, bool]] = []
        self.parser = ParseProcess()  # started only by a build, which closes it
        self.rebuilt: list[str] = []
        self.recipes: tuple[Recipe, ...] = CONFIG.recipes

    async def _heal(self, image: str) -> None:
        self.started.append(image)
        await self.release.wait()
        self.finished.append(image)

    async def heal(self, image: str, *, trigger: str) -> None:
        task = self.inflight.get(image)
        if task is None:
            task = self.inflight[image] = asyncio.get_running_loop().create_task(self._heal(image))
        self.waiters += 1
        try:
            await asyncio.shield(task)
        finally:
            self.waiters -= 1

    async def ensure(self, image: str, *, trigger: str, force: bool = False) -> str:
        self.ensured.append((image, trigger, force))
        await self.heal(image, trigger=trigger)
        return "healed"

    async def rebuild(self, image: str, *, trigger: str) -> bool:
        self.rebuilt.append(image)
        return True

    async def plan(self, image: str) -> HealPlan:
        """The real plan of ``recipes`` (none here builds, so no Dockerfile is read)."""
        return await Planner(self.parser).plan(image, self.recipes)

    def snapshot(self) -> dict[str, Any]:
        return {"waiters": self.waiters}


class Daemon:
    """Answers a create like dockerd: 100 first when asked, then 404 until healed."""

    def __init__(self) -> None:
        self.healed = False

    async def __call__(self, head: RequestHead, body: bytes) -> bytes:
        interim = CONTINUE if b"expect: 100-continue" in head.raw.lower() else b""
        if self.healed:
            status, payload = b"201 Created", CREATED
        else:
            status, payload = b"404 Not Found", MISSING
        return (
            interim
            + b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n" % status
            + (b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        )


def create(version: bytes = b"1.1", expect: bool = False) -> tuple[bytes, bytes]:
    body = json.dumps({"Image": "app:1", "Cmd": ["true"]}).encode()
    head = b"POST /v1.41/containers/create HTTP/%s\r\nHost: d\r\n" % version
    if expect:
        head += b"Expect: 100-continue\r\n"
    head += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head, body


def setup() -> tuple[Daemon, FakeHealer, Interceptor]:
    healer = FakeHealer()
    interceptor = Interceptor(lambda: CONFIG, cast(Healer, healer))
    return Daemon(), healer, interceptor


async def heal_in_background(r: Rig, daemon: Daemon, healer: FakeHealer) -> None:
    await wait_until(lambda: healer.started, "the heal to start")
    daemon.healed = True
    healer.release.set()


def test_create_with_expect_gets_one_100_heals_and_replays() -> None:
    async def main() -> None:
        daemon, healer, interceptor = setup()
        async with rig(daemon, interceptor) as r:
            reader, writer = await r.client()
            head, body = create(expect=True)
            writer.write(head)
            # The proxy answers 100 itself: the client need not wait out its timeout.
            assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), 2) == CONTINUE
            writer.write(body)
            healing = asyncio.create_task(heal_in_background(r, daemon, healer))
            answer = await read_answer(reader, "POST")
            await healing
            assert answer.startswith(b"HTTP/1.1 201 Created\r\n") and answer.endswith(CREATED)
            assert healer.finished == ["app:1"]
            assert [req[1] for req in r.daemon.requests] == [body, body]  # create, replay
            assert r.recorder.exchanges == [("POST", "/v1.41/containers/create", 201)]
            writer.close()
            await r.settled()

    run(main())


def test_no_100_for_http_1_0() -> None:
    async def main() -> None:
        daemon, _, interceptor = setup()
        daemon.healed = True
        async with rig(daemon, interceptor) as r:
            reader, writer = await r.client()
            head, body = create(version=b"1.0", expect=True)
            writer.write(head + body)
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 201 Created\r\n")
            await r.settled()

    run(main())


def test_client_gone_while_waiting_for_a_heal_is_noticed_at_once() -> None:
    async def main() -> None:
        daemon, healer, interceptor = setup()
        async with rig(daemon, interceptor) as r:
            _, writer = await r.client()
            head, body = create()
            writer.write(head + body)
            await wait_until(lambda: healer.waiters == 1, "the create to wait for its heal")
            writer.close()
            await r.settled()  # at once, not when the heal ends
            assert healer.waiters == 0 and healer.started == ["app:1"] and not healer.finished
            daemon.healed = True
            healer.release.set()
            await wait_until(lambda: healer.finished, "the heal to go on and finish")
            await asyncio.sleep(0.05)
            assert len(r.daemon.requests) == 1  # not replayed

    run(main())


def test_status_honours_connection_close_and_counts_tasks() -> None:
    async def main() -> None:
        _, _, interceptor = setup()
        async with rig(interceptor=interceptor) as r:
            reader, writer = await r.client()
            writer.write(b"GET /_heal/status HTTP/1.1\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"\r\nConnection: close" in head
            assert json.loads(body)["debug"]["tasks"] >= 1
            await r.settled()

    run(main())


def test_a_heal_asked_on_the_socket_runs_in_the_healer_and_never_reaches_the_daemon() -> None:
    async def ask(r: Rig, query: str) -> tuple[bytes, Any]:
        reader, writer = await r.client()
        writer.write(b"POST /_heal/heal?%s HTTP/1.1\r\nConnection: close\r\n\r\n" % query.encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], json.loads(body)

    async def main() -> None:
        _, healer, interceptor = setup()
        healer.release.set()
        async with rig(interceptor=interceptor) as r:
            assert await ask(r, "image=app:1&force=1") == (
                b"HTTP/1.1 200 OK",
                {"image": "docker.io/library/app:1", "outcome": "healed"},
            )
            assert await ask(r, "image=other:1") == (
                b"HTTP/1.1 400 Bad Request",
                {"message": "docker-heal-proxy: no recipe matches other:1"},
            )
            line, answer = await ask(r, "image=UPPER:1")
            assert line == b"HTTP/1.1 400 Bad Request"
            assert answer["message"].startswith("docker-heal-proxy: cannot heal 'UPPER:1': ")
            await r.settled()
            assert r.daemon.requests == []
        assert healer.ensured == [("docker.io/library/app:1", "cli", True)]

    run(main())


def build_request(context_size: int) -> bytes:
    """A classic-builder ``POST /build``: a tar with ``FROM app:1`` first, then filler."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((b"Dockerfile", b"FROM app:1\n"), (b"filler", b"f" * context_size)):
            info = tarfile.TarInfo(name.decode())
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = out.getvalue()
    head = b"POST /v1.41/build?t=built HTTP/1.1\r\nHost: d\r\n"
    head += b"Content-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body


def test_build_client_gone_while_paused_during_its_heal_is_not_forwarded() -> None:
    async def main() -> None:
        daemon, healer, interceptor = setup()
        healer.state_dir = Path(tempfile.mkdtemp(prefix="ic-", dir="/tmp"))
        async with rig(daemon, interceptor) as r:
            _, writer = await r.client()
            writer.write(build_request(3 * STREAM_LIMIT))
            await wait_until(lambda: healer.waiters == 1, "the build to wait for its heal")
            (conn,) = r.hub.connections
            # Far enough behind that the client is no longer read: its EOF cannot show.
            await wait_until(lambda: "stream" in conn.reading.reasons, "reading to pause")
            writer.transport.abort()
            daemon.healed = True
            healer.release.set()
            await wait_until(lambda: healer.finished, "the heal to finish")
            await r.settled()
            assert r.daemon.received == b""  # no build replayed to nobody
        await healer.parser.aclose()
        shutil.rmtree(healer.state_dir)

    run(main())


def test_a_heal_starts_only_if_the_callers_policy_allows_what_it_does() -> None:
    """A pull heal needs POST /images/create: a policy allowing the create alone
    gets 403 naming that route, and nothing is healed; allowing it too heals."""
    pulled = parse_config({"images": [{"match": "app:{tag}", "pull": True}]}, base_dir=Path("/"))
    creates = Policy("creates", allow=("POST /containers/create",))
    pulls = Policy("pulls", allow=("POST /containers/create", "POST /images/create"))

    async def main(policy: Policy) -> tuple[bytes, FakeHealer]:
        healer = FakeHealer()
        healer.recipes = pulled.recipes
        daemon = Daemon()
        async with rig(
            daemon, Interceptor(lambda: pulled, cast(Healer, healer)), policy=policy
        ) as r:
            reader, writer = await r.client()
            head, body = create()
            writer.write(head + body)
            if policy is pulls:
                healing = asyncio.create_task(heal_in_background(r, daemon, healer))
                answer = await read_answer(reader, "POST")
                await healing
            else:
                answer = await read_answer(reader, "POST")
            writer.close()
            await r.settled()
        return answer, healer

    answer, healer = run(main(creates))
    assert answer.startswith(b"HTTP/1.1 403 ") and healer.started == []
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"] == (
        'docker-heal-proxy: listener "default": policy "creates" does not allow '
        "POST /images/create, which a pull heal of app:1 needs"
    )
    answer, healer = run(main(pulls))
    assert answer.startswith(b"HTTP/1.1 201 ") and healer.finished == ["app:1"]


CREATES = Policy("creates", allow=("POST /containers/create",))


async def through(
    policy: Policy, interceptor: Interceptor, request: bytes, daemon: Daemon | None = None
) -> tuple[bytes, bytes]:
    """The answer to one request on a listener with ``policy``, and what the daemon got."""
    async with rig(daemon or Daemon(), interceptor, policy=policy) as r:
        reader, writer = await r.client()
        writer.write(request)
        answer = await read_answer(reader, "POST")
        writer.close()
        await r.settled()
        return answer, bytes(r.daemon.received)


def refusal_of(answer: bytes) -> str:
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    return str(json.loads(answer.partition(b"\r\n\r\n")[2])["message"])


def test_a_heal_needs_what_every_step_of_its_plan_does() -> None:
    """A command heal needs no route, but its base's load heal needs
    POST /images/load: a caller allowed only the create starts neither."""
    chain = parse_config(
        {
            "images": [
                {"match": "app:{tag}", "command": ["true"], "depends_on": ["base:1"]},
                {"match": "base:1", "load": "base.tar"},
            ]
        },
        base_dir=Path("/"),
    )
    healer = FakeHealer()
    healer.recipes = chain.recipes
    interceptor = Interceptor(lambda: chain, cast(Healer, healer))
    answer, _ = run(through(CREATES, interceptor, b"".join(create())))
    assert healer.started == []
    assert refusal_of(answer) == (
        'docker-heal-proxy: listener "default": policy "creates" does not allow '
        "POST /images/load, which a load heal of docker.io/library/base:1 (for app:1) needs"
    )


class StaleTags:
    """A stale tracker that finds every tag stale."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def tag(self, reference: str) -> str:
        return reference

    def decide(self, tag: str) -> Stale:
        return Stale("its inputs changed")

    def failed(self, tag: str, reason: str) -> None:
        self.failures.append(reason)


def test_a_stale_rebuild_needs_what_the_rebuild_does() -> None:
    """A caller allowed the create but not POST /build starts no rebuild of a
    stale build-recipe image: the create goes on with the image as it is."""
    entry = {"match": "app:{tag}", "build": {"context": "."}, "inputs": ["src"]}
    built = parse_config({"images": [{**entry, "rebuild_when": "stale"}]}, base_dir=Path("/"))
    healer = FakeHealer()
    healer.recipes = built.recipes
    daemon = Daemon()
    daemon.healed = True  # the image is there, only stale
    stale = cast(StaleTracker, StaleTags())
    interceptor = Interceptor(lambda: built, cast(Healer, healer), stale=stale)
    answer, _ = run(through(CREATES, interceptor, b"".join(create()), daemon))
    assert healer.rebuilt == []
    assert answer.startswith(b"HTTP/1.1 201 "), answer


def test_a_builds_base_is_healed_only_if_the_callers_policy_allows_its_kind() -> None:
    """A policy allowing ``POST /build`` alone builds FROM app:1, but a pull
    recipe makes app:1, and a pull heal needs POST /images/create: 403, no heal."""
    pulled = parse_config({"images": [{"match": "app:{tag}", "pull": True}]}, base_dir=Path("/"))
    healer = FakeHealer()
    healer.recipes = pulled.recipes
    healer.state_dir = Path(tempfile.mkdtemp(prefix="ic-", dir="/tmp"))
    interceptor = Interceptor(lambda: pulled, cast(Healer, healer))
    builds = Policy("builds", allow=("POST /build",))

    async def main() -> tuple[bytes, bytes]:
        try:
            return await through(builds, interceptor, build_request(1000))
        finally:
            await healer.parser.aclose()
            shutil.rmtree(healer.state_dir)

    answer, upstream = run(main())
    assert upstream == b"" and healer.started == []
    assert refusal_of(answer) == (
        'docker-heal-proxy: listener "default": policy "builds" does not allow '
        "POST /images/create, which a pull heal of docker.io/library/app:1 needs"
    )
