"""The parse process: work off the loop, under a deadline, a dead or late worker replaced."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from proxy.healing.core.dockerfileparse import (
    MAX_PARSED,
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
