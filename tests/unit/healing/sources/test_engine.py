"""The Engine client: progress lines and what they mean, and short calls bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.healing.sources.engine import (
    Engine,
    EngineError,
    iter_lines,
    progress_error,
    progress_lines,
)


def lines_of(chunks: list[bytes], limit: int = 1 << 20) -> list[str]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[str]:
        return [line async for line in iter_lines(source(), limit)]

    return asyncio.run(collect())


def test_lines_are_rejoined_across_chunks() -> None:
    assert lines_of([b'{"a":', b"1}\r\n{", b'"b":2}\n', b"tail"]) == ['{"a":1}', '{"b":2}', "tail"]


def test_a_line_without_end_is_cut_at_the_limit() -> None:
    assert lines_of([b"x" * 10 + b"\nyy"], limit=4) == ["xxxx", "xxxx", "xx", "yy"]


def test_bad_utf8_is_replaced_not_fatal() -> None:
    assert lines_of([b"caf\xc3", b"\xa9 \xff\n"]) == ["café \ufffd"]


@pytest.mark.parametrize(
    ("message", "lines"),
    [
        ({"stream": "Step 1/2 : FROM x\n ---> abc\n\n"}, ["Step 1/2 : FROM x", " ---> abc"]),
        ({"status": "Downloading", "id": "abc", "progress": "[=> ]"}, ["abc: Downloading [=> ]"]),
        ({"status": "Pulling from library/x"}, ["Pulling from library/x"]),
        ({"aux": {"ID": "sha256:..."}}, []),
        ({"error": "boom", "errorDetail": {"message": "boom!"}}, ["boom!"]),
    ],
)
def test_progress_lines(message: dict[str, object], lines: list[str]) -> None:
    assert progress_lines(message) == lines


def test_progress_error() -> None:
    assert progress_error({"stream": "fine"}) is None
    assert progress_error({"error": "short"}) == "short"
    assert progress_error({"errorDetail": {"message": "detail"}}) == "detail"


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda e: e.tag("127.0.0.1:1/a:1", "127.0.0.1:1/b:1"), "a tag of 127.0.0.1:1/a:1 as"),
        (Engine.list_images, "the image list"),
        (Engine.root_dir, "/info"),
    ],
)
def test_short_calls_give_up_on_a_silent_daemon(
    silent: str, call: Callable[[Engine], Awaitable[Any]], what: str
) -> None:
    """Each short call is bounded by call_timeout, and says which call it was."""

    async def run() -> str:
        engine = Engine(silent, call_timeout=0.3)
        try:
            with pytest.raises(EngineError) as failed:
                await asyncio.wait_for(call(engine), 20)
            return str(failed.value)
        finally:
            await engine.close()

    message = asyncio.run(run())
    assert message.startswith(f"the Docker daemon at {silent} did not answer {what}")
    assert message.endswith("within 0.3s")
