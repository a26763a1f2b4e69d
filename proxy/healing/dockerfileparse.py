"""Dockerfile parsing in a process of its own, under a deadline.

Rules:
- No Dockerfile is parsed in the proxy's process. The ``dockerfile``
  package's Go parser holds the GIL for the whole parse (a thread does not
  help), its time grows far faster than the text (a 1 MiB heredoc takes
  minutes), and some text crashes the interpreter outright. A parse on the
  loop would stall every connection the proxy carries.
- Work runs in one worker process, one call at a time. The worker is
  started with ``spawn`` (nothing of the loop, its threads or its sockets is
  copied) when the first call needs it, and it says when it is ready: its
  start-up is not counted in a call's deadline, only in ``START_TIMEOUT``,
  since a loaded host can take seconds to start Python.
- A call has ``timeout`` seconds (``PARSE_TIMEOUT``). Past it, when the
  worker dies, or when the caller is cancelled mid-call, the worker is
  killed and the call ends in ``ParseFailed``: the caller goes on without
  the images, with a log line. A killed worker's answer can never reach the
  next call; the next call starts a fresh worker.
- Text over ``MAX_PARSED`` is not handed to the parser at all: at the
  parser's rate it could not finish in time anyway.
- The worker ignores SIGINT (a Ctrl-C in the proxy's terminal is the
  proxy's to handle), and leaves when its pipe closes, the proxy's death
  included.

Theory of operation: ``ParseProcess.run`` sends ``(function, args)`` over a
pipe; the worker (``_serve``) calls it and sends back ``(True, result)`` or
``(False, reason)``. The parent waits for the pipe to be readable through
the loop's reader callbacks, so waiting costs no thread.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ..recipes.dockerfile import from_images

log = logging.getLogger(__name__)

PARSE_TIMEOUT = 2.0
"""Seconds a call may take in the worker before it is killed."""

START_TIMEOUT = 30.0
"""Seconds the worker may take to start and import the parser."""

MAX_PARSED = 256 << 10
"""The longest Dockerfile text handed to the parser."""

T = TypeVar("T")

_READY = "ready"


class ParseFailed(Exception):
    """The work did not finish: too long, too slow, or the worker died."""


def _serve(conn: Connection) -> None:
    """The worker's loop: one call at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(_READY)
    while True:
        try:
            work, args = conn.recv()
        except EOFError:
            return
        try:
            answer: tuple[bool, Any] = (True, work(*args))
        except Exception as exc:  # the reason goes back to the caller
            answer = (False, f"{type(exc).__name__}: {exc}")
        conn.send(answer)


class _Worker:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child,), name="dockerfile-parse", daemon=True
        )
        self.process.start()
        child.close()

    async def receive(self, timeout: float) -> Any:
        """The next message, without blocking the loop; EOFError if the worker died."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        fd = self.conn.fileno()
        loop.add_reader(fd, ready)
        try:
            await asyncio.wait_for(readable, timeout)
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class ParseProcess:
    """The worker process and the calls made to it."""

    def __init__(self, timeout: float = PARSE_TIMEOUT) -> None:
        self.timeout = timeout
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in the worker; ParseFailed when it does not finish.

        ``work`` and ``args`` must pickle: ``work`` is a module-level function.
        """
        async with self._lock:
            worker = await self._ready()
            try:
                worker.conn.send((work, args))
                ok, value = await worker.receive(self.timeout)
            except TimeoutError:
                self._kill()
                raise ParseFailed(f"it took over {self.timeout:g}s") from None
            except (EOFError, OSError):
                code = worker.process.exitcode
                self._kill()
                raise ParseFailed(f"the parser process died (exit code {code})") from None
            except BaseException:  # cancelled: its answer must not reach the next call
                self._kill()
                raise
            if not ok:
                raise ParseFailed(value)
            result: T = value
            return result

    async def _ready(self) -> _Worker:
        worker = self._worker
        if worker is not None and worker.process.is_alive():
            return worker
        self._kill()
        worker = self._worker = _Worker()
        try:
            if await worker.receive(START_TIMEOUT) != _READY:
                raise EOFError
        except (TimeoutError, EOFError, OSError):
            self._kill()
            raise ParseFailed("the parser process did not start") from None
        except BaseException:
            self._kill()
            raise
        return worker

    def _kill(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        """Stop the worker (shutdown)."""
        self._kill()


async def dockerfile_images(
    parser: ParseProcess, text: str, build_args: Mapping[str, str], target: str | None
) -> list[str]:
    """``from_images`` in the worker; ParseFailed when the text is too long or slow."""
    if len(text) > MAX_PARSED:
        raise ParseFailed(f"the Dockerfile is over {MAX_PARSED >> 10} KiB")
    return await parser.run(from_images, text, dict(build_args), target)
