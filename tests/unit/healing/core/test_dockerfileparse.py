"""The parse process: work off the loop, under a deadline, a dead or late worker replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import pwd
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import proc_ids

import proxy
from proxy.healing.core.dockerfileparse import (
    CPU_SECONDS,
    MAX_ANSWER,
    MAX_PARSED,
    MEMORY,
    STDERR_LINE,
    STDERR_LINES,
    ParseFailed,
    ParseProcess,
    dockerfile_images,
)


def test_images_come_from_the_worker_process() -> None:
    async def main() -> tuple[list[str], int]:
        parser = ParseProcess()
        try:
            images = await dockerfile_images(
                parser, "ARG B=base\nFROM $B:1 AS a\nFROM \udcff\n", {"B": "other"}, "a"
            )
            return images, await parser.run(os.getpid)
        finally:
            await parser.aclose()

    images, pid = asyncio.run(main())
    assert images == ["other:1"]
    assert pid != os.getpid()


def test_the_loop_runs_while_the_worker_works_and_a_late_worker_is_replaced() -> None:
    async def main() -> tuple[int, int, int]:
        parser = ParseProcess(timeout=1.0)
        try:
            first = await parser.run(os.getpid)
            work = asyncio.ensure_future(parser.run(time.sleep, 30))
            ticks = 0
            while not work.done():
                await asyncio.sleep(0.01)
                ticks += 1
            with pytest.raises(ParseFailed, match="took over 1s"):
                await work
            return first, await parser.run(os.getpid), ticks
        finally:
            await parser.aclose()

    first, second, ticks = asyncio.run(main())
    assert ticks > 1  # the loop went on while the worker slept
    assert first != second


def test_a_dead_worker_fails_the_call_and_is_replaced() -> None:
    async def main() -> int:
        parser = ParseProcess()
        try:
            with pytest.raises(ParseFailed, match="exit code 3"):
                await parser.run(os._exit, 3)
            return await parser.run(int, "7")
        finally:
            await parser.aclose()

    assert asyncio.run(main()) == 7


def test_a_cancelled_call_cannot_answer_the_next_one() -> None:
    async def main() -> object:
        parser = ParseProcess()
        try:
            await parser.run(os.getpid)
            work = asyncio.ensure_future(parser.run(str, "late"))
            await asyncio.sleep(0)
            work.cancel()
            with pytest.raises(asyncio.CancelledError):
                await work
            return await parser.run(str, "mine")
        finally:
            await parser.aclose()

    assert asyncio.run(main()) == "mine"


def test_an_error_in_the_work_is_a_failure_with_its_reason() -> None:
    async def main() -> None:
        parser = ParseProcess()
        try:
            with pytest.raises(ParseFailed, match="ValueError"):
                await parser.run(int, "x")
        finally:
            await parser.aclose()

    asyncio.run(main())


def test_text_over_the_cap_is_not_parsed() -> None:
    async def main() -> None:
        parser = ParseProcess()
        with pytest.raises(ParseFailed, match="over 256 KiB"):
            await dockerfile_images(parser, "FROM a\n" + "#" * MAX_PARSED, {}, None)
        assert parser._worker is None  # nothing was started for it

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root changes user")
def test_as_root_the_worker_runs_as_the_parse_user_with_no_groups() -> None:
    async def main() -> tuple[list[str], list[int], list[int], list[int]]:
        parser = ParseProcess()
        try:
            images = await dockerfile_images(parser, "FROM base:1\n", {}, None)
            pid = await parser.run(os.getpid)  # read while it lives
            groups = await parser.run(os.getgroups)
            return images, proc_ids(pid, "Uid"), proc_ids(pid, "Gid"), groups
        finally:
            await parser.aclose()

    images, uids, gids, groups = asyncio.run(main())
    nobody = pwd.getpwnam("nobody")
    assert images == ["base:1"]
    assert uids == [nobody.pw_uid] * 4 and nobody.pw_uid != 0
    assert gids == [nobody.pw_gid] * 4
    assert groups == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root changes user")
@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("no-such-user-here", "parse_user 'no-such-user-here' is not a user on this machine"),
        # The config's load refuses it; an account given uid 0 since is refused here.
        ("root", "parse_user 'root' has uid 0: the parser would stay root"),
    ],
)
def test_a_parse_user_the_worker_cannot_become_fails_the_start_with_a_reason(
    caplog: pytest.LogCaptureFixture, user: str, reason: str
) -> None:
    async def main() -> None:
        parser = ParseProcess(user=user)
        try:
            with pytest.raises(ParseFailed, match="did not start"):
                await parser.run(os.getpid)
        finally:
            await parser.aclose()

    with caplog.at_level("WARNING", logger="proxy.healing.core.dockerfileparse.worker"):
        asyncio.run(main())
    assert f"parse worker: {f'docker-heal-proxy: {reason}'!r}" in caplog.messages


def test_the_worker_parses_under_its_memory_and_cpu_bounds() -> None:
    """Go's runtime needs most of a GiB of address space: a normal Dockerfile
    and the longest one handed over must still parse under the bound."""
    normal = (
        "ARG BASE=base\nFROM $BASE:1 AS build\nRUN make\nFROM scratch\nCOPY --from=build /a /a\n"
    )
    longest = "FROM base:2\n" + "RUN true\n" * ((MAX_PARSED - 12) // 9)

    async def main() -> tuple[list[str], list[str], list[tuple[int, int]]]:
        parser = ParseProcess(timeout=60)
        try:
            return (
                await dockerfile_images(parser, normal, {}, None),
                await dockerfile_images(parser, longest, {}, None),
                [
                    await parser.run(resource.getrlimit, which)
                    for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_CORE)
                ],
            )
        finally:
            await parser.aclose()

    normal_images, longest_images, (memory, cpu, core) = asyncio.run(main())
    assert (normal_images, longest_images) == (["base:1"], ["base:2"])
    assert memory == [MEMORY, MEMORY] and MEMORY >= 1 << 30
    assert 0 < cpu[0] <= CPU_SECONDS + 60  # what the calls so far used, and one call's more
    assert core == [0, 0]  # a crash, which its input may cause, leaves no copy of that input


def test_a_memory_bomb_is_stopped_by_the_bound_and_the_worker_goes_on() -> None:
    """Each ARG doubles the last: 2**40 KB unbounded. Under ``RLIMIT_AS`` it ends
    in MemoryError within a second, and the next call is answered."""
    bomb = "ARG A0=" + "x" * 1000 + "\n"
    bomb += "".join(f"ARG A{i + 1}=${{A{i}}}${{A{i}}}\n" for i in range(40)) + "FROM $A40\n"

    async def main() -> list[str]:
        parser = ParseProcess(timeout=60)
        try:
            with pytest.raises(ParseFailed, match="MemoryError"):
                await dockerfile_images(parser, bomb, {}, None)
            return await dockerfile_images(parser, "FROM after:1\n", {}, None)
        finally:
            await parser.aclose()

    assert asyncio.run(main()) == ["after:1"]


async def _answers_fd(parser: ParseProcess) -> int:
    """The worker's descriptor of the pipe the parent reads its answers from,
    so that a test can have it write a frame as a worker taken over would."""
    links = {}
    for fd in await parser.run(os.listdir, "/proc/self/fd"):
        with contextlib.suppress(ParseFailed):  # the listing's own descriptor
            links[fd] = await parser.run(os.readlink, f"/proc/self/fd/{fd}")
    assert parser._worker is not None
    ours = parser._worker.process._transport.get_pipe_transport(1)  # type: ignore[attr-defined]
    pipe = f"pipe:[{os.fstat(ours.get_extra_info('pipe').fileno()).st_ino}]"
    (answers,) = [int(fd) for fd, to in links.items() if to == pipe and fd != "1"]
    return answers


def _planted(frame: bytes, failure: str) -> tuple[int, int, int]:
    """A worker writes ``frame`` as its answer: the call fails with ``failure``,
    and the next calls go to a fresh worker (pids before and after, and 5)."""

    async def main() -> tuple[int, int, int]:
        parser = ParseProcess()
        try:
            first = await parser.run(os.getpid)
            answers = await _answers_fd(parser)
            with pytest.raises(ParseFailed, match=failure):
                await parser.run(os.write, answers, frame)
            return first, await parser.run(os.getpid), await parser.run(int, "5")
        finally:
            await parser.aclose()

    return asyncio.run(main())


def test_an_answer_is_json_and_a_worker_that_sends_other_is_dropped() -> None:
    """A worker its input took over could send a pickle: it is never loaded,
    and that worker is replaced."""
    planted = pickle.dumps([True, "a pickle"])
    first, second, five = _planted(struct.pack(">I", len(planted)) + planted, "not JSON")
    assert first != second and five == 5


@pytest.mark.skipif(os.geteuid() != 0, reason="only root changes user")
def test_the_worker_works_when_only_root_can_read_the_proxy(tmp_path: Path) -> None:
    """A virtualenv under /root, say: the worker must have loaded all it needs
    before it becomes nobody."""
    hidden = tmp_path / "root-only"  # under pytest's 0700 folder: nobody cannot enter
    shutil.copytree(Path(proxy.__file__).parent, hidden / "proxy")
    code = (
        "import asyncio, os, proxy\n"
        "from proxy.healing.core.dockerfileparse import ParseProcess, dockerfile_images\n"
        "async def main():\n"
        "    parser = ParseProcess()\n"
        "    try:\n"
        "        images = await dockerfile_images(parser, 'FROM base:1\\n', {}, None)\n"
        "        readable = await parser.run(os.access, proxy.__file__, os.R_OK)\n"
        "        return images, readable, await parser.run(os.geteuid)\n"
        "    finally:\n"
        "        await parser.aclose()\n"
        "print(proxy.__file__, *asyncio.run(main()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=hidden,
        env={**os.environ, "PYTHONPATH": str(hidden)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    nobody = pwd.getpwnam("nobody").pw_uid
    assert done.stdout == f"{hidden / 'proxy' / '__init__.py'} ['base:1'] False {nobody}\n"


def test_the_worker_imports_nothing_from_the_folder_it_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` puts the working folder first on ``sys.path``: a ``serve``
    started by hand in ``/tmp`` or a user's checkout would have its root worker
    run whatever module that user planted there (before it becomes nobody)."""
    marker = tmp_path / "ran"
    (tmp_path / "resource.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n"
    )
    monkeypatch.chdir(tmp_path)

    async def main() -> list[str]:
        parser = ParseProcess()
        try:
            return await dockerfile_images(parser, "FROM base:1\n", {}, None)
        finally:
            await parser.aclose()

    assert asyncio.run(main()) == ["base:1"]
    assert not marker.exists()


def test_the_worker_has_a_session_of_its_own() -> None:
    """A worker its input took over, nobody though it is, must not share the
    proxy's controlling terminal: TIOCSTI on it (its stderr, when ``serve`` runs
    in root's shell) would type commands into that shell."""

    async def main() -> int:
        parser = ParseProcess()
        try:
            return await parser.run(os.getsid, 0)
        finally:
            await parser.aclose()

    worker_session = asyncio.run(main())
    assert worker_session not in (os.getsid(0), os.getpid())


def test_an_answer_nested_too_deep_for_the_json_reader_is_a_failure() -> None:
    """``json.loads`` recurses: a worker taken over could answer with nesting
    that raises RecursionError in the proxy, which no caller expects."""
    deep = b"[" * 100_000 + b"]" * 100_000
    first, second, five = _planted(struct.pack(">I", len(deep)) + deep, "not JSON")
    assert first != second and five == 5


def test_an_answer_announced_longer_than_any_honest_one_is_not_read() -> None:
    """The length comes from the worker: the parent must not buffer gigabytes
    on its word until the deadline."""
    head = struct.pack(">I", MAX_ANSWER + 1)
    first, second, five = _planted(head, "too long")
    assert first != second and five == 5


def test_the_worker_gets_none_of_the_proxys_environment_but_pythons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A unit's ``Environment=`` may hold what recipes need (a proxy's password
    in ``HTTPS_PROXY``); the worker, trusted with nothing, needs none of it."""
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy:3128")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")

    async def main() -> list[str | None]:
        parser = ParseProcess()
        try:
            return [
                await parser.run(os.getenv, "HTTPS_PROXY"),
                await parser.run(os.getenv, "PYTHONDONTWRITEBYTECODE"),
            ]
        finally:
            await parser.aclose()

    assert asyncio.run(main()) == [None, "1"]


def worker_writes_to_stderr(*writes: bytes) -> None:
    """Each of ``writes`` written to the worker's fd 2 by the worker itself."""

    async def main() -> None:
        parser = ParseProcess(name="build")
        try:
            for data in writes:
                await parser.run(os.write, 2, data)
        finally:
            await parser.aclose()  # reads its stderr to the end

    asyncio.run(main())


def test_the_workers_stderr_is_logged_as_its_own_never_written_to_the_proxys(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A worker taken over by its input must not write lines into the proxy's
    log that read as the proxy's own."""
    fake = b"2026-12-07 02:00:00 ERROR proxy.service: \x1b[2Kheal of app:1 succeeded"
    with caplog.at_level("WARNING", logger="proxy.healing.core.dockerfileparse.worker"):
        worker_writes_to_stderr(fake + b"\nsecond\rline\n")
    assert "heal of app:1" not in capfd.readouterr().err
    worker = [r for r in caplog.records if r.name == "proxy.healing.core.dockerfileparse.worker"]
    assert [r.getMessage() for r in worker] == [
        "build worker: '2026-12-07 02:00:00 ERROR proxy.service: \\x1b[2Kheal of app:1 succeeded'",
        "build worker: 'second\\rline'",
    ]


def test_the_workers_stderr_is_bounded_in_line_length_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cut at ``STDERR_LINE`` bytes, at most ``STDERR_LINES`` lines, then one
    line saying the rest is dropped; the worker never blocks on the pipe."""
    flood = b"x" * (STDERR_LINE + 10) + b"\n" + b"y\n" * (4 * STDERR_LINES)
    with caplog.at_level("WARNING", logger="proxy.healing.core.dockerfileparse.worker"):
        worker_writes_to_stderr(flood, b"z" * (1 << 20))
    messages = [r.getMessage() for r in caplog.records if r.name.endswith(".worker")]
    assert messages[0] == f"build worker: '{'x' * STDERR_LINE}'"
    assert messages[1] == f"build worker: '{'x' * 10}'"
    assert messages[2:STDERR_LINES] == ["build worker: 'y'"] * (STDERR_LINES - 2)
    assert messages[STDERR_LINES:] == ["build worker: more on its stderr, not logged"]
