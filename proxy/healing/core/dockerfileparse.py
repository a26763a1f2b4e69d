"""Dockerfile parsing in a process of its own, under a deadline.

Rules:
- No Dockerfile is parsed in the proxy's process, and the ``dockerfile``
  package is never even imported there: only the worker imports it
  (``_images``), so the proxy never maps the parser's native library. The ``dockerfile``
  package's Go parser holds the GIL for the whole parse (a thread does not
  help), its time grows far faster than the text (a 1 MiB heredoc takes
  minutes), and some text crashes the interpreter outright. A parse on the
  loop would stall every connection the proxy carries.
- Each queue's work runs in one worker process, one call at a time: a fresh interpreter
  (``python -P -m`` this module), so nothing of the loop, its threads or its
  sockets is copied, and the proxy's own main script is never run again
  (``multiprocessing``'s spawn would import it). ``-P`` keeps the working
  folder off ``sys.path``: the worker imports as root, and a ``serve`` started
  by hand in ``/tmp`` or a user's checkout would otherwise run any module
  someone planted there. It is started when the
  first call needs it and says when it is ready: its start-up is not
  counted in a call's deadline, only in ``START_TIMEOUT``, since a loaded
  host can take seconds to start Python.
- A call has ``timeout`` seconds (``PARSE_TIMEOUT``). Past it, when the
  worker dies, or when the caller is cancelled mid-call, the worker is
  killed and the call ends in ``ParseFailed``: the caller goes on without
  the images, with a log line. A killed worker's answer can never reach the
  next call; the next call starts a fresh worker.
- The worker is handed text and reads nothing from disk: the caller reads
  each file, so the worker needs no access to the recipes' folders.
- Text over ``MAX_PARSED`` is not handed to the parser at all: at the
  parser's rate it could not finish in time anyway.
- Each ``ParseProcess`` is one queue: one call at a time, in order. The
  healer keeps one for its recipes' plans and one for client build bodies,
  so that a stream of client builds cannot hold up a create's heal.
- The worker ignores SIGINT (a Ctrl-C in the proxy's terminal is the
  proxy's to handle), and leaves when its stdin closes, the proxy's death
  included. It gets none of the proxy's environment but Python's settings
  and the locale (a unit's ``Environment=`` may hold what recipes need, a
  proxy password say). It runs in a session of its own, without the proxy's
  controlling terminal: one taken over by its input could otherwise type
  into root's shell (``TIOCSTI`` on its stderr) when ``serve`` runs in one.
  Its stdout carries only answers: anything else it prints goes to stderr.
- The worker's stderr is a pipe the proxy reads, never the proxy's own
  stderr (its log): a worker taken over by its input could otherwise write
  lines that look like the proxy's. Each line is logged under the worker's
  own logger (``dockerfileparse.worker``) with its queue's name, quoted and
  escaped (``%r``: no newline or escape sequence of its own), cut at
  ``STDERR_LINE`` bytes, and at most ``STDERR_LINES`` lines in a worker's
  life; past that, one line says the rest is dropped, and the pipe is still
  drained so that the worker never blocks on it. A worker that is killed
  has its last words (a crash's) read to the pipe's end, for ``EXIT_WAIT``
  at most.
- The worker is trusted with nothing. It parses text any client of the
  socket can send, with a parser whose own documentation says some input
  crashes the interpreter. Started by root, it drops to an unprivileged
  user (``[security] parse_user``, ``nobody`` by default) once the parser
  is imported (the proxy's virtualenv may be where only root can read),
  before it says it is ready. It runs under ``RLIMIT_AS`` (``MEMORY``: Go's
  runtime needs most of a GiB of address space to start) and, per call,
  ``RLIMIT_CPU`` (``CPU_SECONDS`` more than it has used), with no core
  dumps: a crash is something its input may cause, and a core would be a
  copy of that input (a client's Dockerfile) left on disk. Its answers are
  JSON, never pickle: a worker taken over by its input could otherwise make
  the proxy run code as root. Nor may an answer cost the proxy more than a
  failed call: one announced longer than ``MAX_ANSWER`` is not read, and one
  nested too deep for ``json.loads`` is not JSON. Requests still go as
  pickles: the worker trusts its parent, not the other way round.

Theory of operation: ``ParseProcess.run`` writes one frame, a 4-byte length
and a pickle of ``(function, args)``, to the worker's stdin; the worker
(``_serve``) calls it and writes back a frame of JSON, ``[true, result]`` or
``[false, reason]``. The parent reads it as an asyncio stream, so waiting
costs neither a thread nor the loop, and checks its shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import pickle
import pwd
import resource
import signal
import struct
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

log = logging.getLogger(__name__)

PARSE_TIMEOUT = 2.0
"""Seconds a call may take in the worker before it is killed."""

START_TIMEOUT = 30.0
"""Seconds the worker may take to start and import the parser."""

MAX_PARSED = 256 << 10
"""The longest Dockerfile text handed to the parser."""

MAX_ANSWER = 16 << 20
"""The longest answer the parent reads from the worker, which says how long
its answer is: the names parsed from at most ``MAX_PARSED`` of text and one
request's build args are far shorter."""

MEMORY = 2 << 30
"""The worker's ``RLIMIT_AS``: Go's runtime fails to start threads under ~800 MiB."""

CPU_SECONDS = 10
"""CPU seconds one call may use before the kernel stops the worker (SIGXCPU);
beyond ``PARSE_TIMEOUT``, which the parent enforces on the wall clock."""

DEFAULT_USER = "nobody"

EXIT_WAIT = 1.0
"""Seconds a worker that died is given to be reaped, for its exit code, and
for its last words on stderr to be logged."""

STDERR_LINE = 1000
"""Bytes of one line of the worker's stderr logged; a longer one is cut in pieces."""

STDERR_LINES = 100
"""Lines of the worker's stderr logged in its life: a Go panic's first lines
say what happened, and a flood from a worker taken over must not fill the log."""

worker_log = logging.getLogger(f"{__name__}.worker")

T = TypeVar("T")

_READY = "ready"
_LENGTH = struct.Struct(">I")


class ParseFailed(Exception):
    """The work did not finish: too long, too slow, or the worker died."""


def _framed(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _answer(value: object) -> bytes:
    return _framed(json.dumps(value).encode())


def _unprivileged(user: str) -> None:
    """Become ``user`` (groups and all) when root; raises KeyError for no such user,
    PermissionError for one with uid 0 (the config's load refuses it; this is
    for an account changed since)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        raise PermissionError(f"parse_user {user!r} has uid 0: the parser would stay root")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _limited() -> None:
    """The address-space bound, and no core dumps, for the worker's whole life."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _cpu_bound() -> None:
    """``CPU_SECONDS`` more than used so far: the soft limit, raised call by call."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = spent + CPU_SECONDS
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker's loop: one call at a time until its stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers.write(_answer(_READY))
    answers.flush()
    while head := requests.read(_LENGTH.size):
        work, args = pickle.loads(requests.read(_LENGTH.unpack(head)[0]))
        _cpu_bound()
        try:
            answer = [True, work(*args)]
        except Exception as exc:  # the reason goes back to the caller
            answer = [False, f"{type(exc).__name__}: {exc}"]
        answers.write(_answer(answer))
        answers.flush()


def _worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """What of the proxy's environment the worker gets: Python's own settings
    (``PYTHONPATH`` may be how it finds this package) and the locale."""
    return {k: v for k, v in env.items() if k.startswith(("PYTHON", "LC_")) or k == "LANG"}


async def _relay_stderr(stream: asyncio.StreamReader, name: str) -> None:
    """The worker's stderr, line by line into ``worker_log``, bounded (see the rules)."""
    # Imported here: the worker imports this module too and needs no HTTP client.
    from ..sources.engine import iter_lines, stream_chunks

    logged = 0
    async for line in iter_lines(stream_chunks(stream), STDERR_LINE):
        if logged < STDERR_LINES:
            worker_log.warning("%s worker: %r", name, line)
        elif logged == STDERR_LINES:
            worker_log.warning("%s worker: more on its stderr, not logged", name)
        logged += 1


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        assert process.stderr is not None
        self.relay = asyncio.create_task(_relay_stderr(process.stderr, name))

    @classmethod
    async def start(cls, name: str, user: str) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not the working folder first on sys.path: see the rules
            "-m",
            __name__,
            name,
            user,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,  # not the proxy's log: see the rules
            start_new_session=True,  # no controlling terminal: see the rules
            env=_worker_env(os.environ),
        )
        return cls(process, name)

    async def send(self, message: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(_framed(pickle.dumps(message)))
        await self.process.stdin.drain()

    async def receive(self, timeout: float) -> Any:
        """The next message (JSON); IncompleteReadError if the worker died,
        ParseFailed if what it wrote is not JSON, or longer than ``MAX_ANSWER``."""
        assert self.process.stdout is not None
        stdout = self.process.stdout

        async def frame() -> Any:
            head = await stdout.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_ANSWER:
                raise ParseFailed(f"the parser process answered {length} bytes, too long")
            data = await stdout.readexactly(length)
            try:
                return json.loads(data)
            except (ValueError, RecursionError):  # json.loads recurses on nesting
                raise ParseFailed("the parser process answered with something not JSON") from None

        return await asyncio.wait_for(frame(), timeout)

    async def exited(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a worker that closed its answers to exit.

        A kill right away would race the exit: the kill's own check reaps the
        process before asyncio's watcher does, which then reports 255, not
        the worker's exit code.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout)

    async def kill(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # with the exit, this lets the transport close
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        # Its last words, unless something it left behind holds the pipe open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.relay), EXIT_WAIT)
        self.relay.cancel()


class ParseProcess:
    """The worker process and the calls made to it, all on one event loop."""

    def __init__(
        self, timeout: float = PARSE_TIMEOUT, name: str = "parse", user: str = DEFAULT_USER
    ) -> None:
        self.timeout = timeout
        self.name = name
        """Its queue's name, the worker's first argument: ``ps`` tells the queues apart."""
        self.user = user
        """Who the worker runs as, when the proxy is root."""
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in the worker; ParseFailed when it does not finish.

        ``work`` and ``args`` must pickle (``work`` is a module-level function),
        and what it returns must be JSON: a list comes back a list, a tuple too.
        """
        async with self._lock:
            worker = await self._ready()
            try:
                await worker.send((work, args))
                answer = await worker.receive(self.timeout)
                if not (isinstance(answer, list) and len(answer) == 2):
                    raise ParseFailed(f"the parser process answered {answer!r:.100}")
                ok, value = answer
            except TimeoutError:
                await self._kill()
                raise ParseFailed(f"it took over {self.timeout:g}s") from None
            except (asyncio.IncompleteReadError, ConnectionError):
                await worker.exited(EXIT_WAIT)
                await self._kill()
                code = worker.process.returncode
                raise ParseFailed(f"the parser process died (exit code {code})") from None
            except BaseException:  # cancelled, or a bad answer: none may reach the next call
                await self._kill()
                raise
            if ok is not True:
                raise ParseFailed(str(value)[:500])
            result: T = value
            return result

    async def _ready(self) -> _Worker:
        worker = self._worker
        if worker is not None and worker.process.returncode is None:
            return worker
        await self._kill()
        try:
            worker = self._worker = await _Worker.start(self.name, self.user)
            if await worker.receive(START_TIMEOUT) != _READY:
                raise ConnectionError
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            await self._kill()
            raise ParseFailed(f"the parser process did not start: {exc}") from None
        except BaseException:
            await self._kill()
            raise
        return worker

    async def _kill(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.shield(worker.kill())

    async def aclose(self) -> None:
        """Stop the worker (shutdown)."""
        await self._kill()


def _images(
    text: str, build_args: Mapping[str, str], target: str | None, open_args: bool
) -> list[str]:
    """``from_images``, imported here so that only the worker process loads the parser."""
    from ...recipes.dockerfile import from_images

    return from_images(text, build_args, target, open_args)


def within_limit(text: str) -> str:
    """``text``, or ParseFailed when it is longer than the parser is ever given."""
    if len(text) > MAX_PARSED:
        raise ParseFailed(f"the Dockerfile is over {MAX_PARSED >> 10} KiB")
    return text


async def dockerfile_images(
    parser: ParseProcess,
    text: str,
    build_args: Mapping[str, str],
    target: str | None,
    open_args: bool = False,
) -> list[str]:
    """The images ``text`` names, parsed in the worker; ParseFailed when too long or slow."""
    images = await parser.run(_images, within_limit(text), dict(build_args), target, open_args)
    if not (isinstance(images, list) and all(isinstance(image, str) for image in images)):
        raise ParseFailed("the parser process answered with something not a list of names")
    return images


if __name__ == "__main__":
    # Loaded before "ready": the parser's import is start-up, not a call's time.
    # And before the worker changes user: the proxy's files may be where only
    # root reads. Requests name this module's functions by its own name, not
    # as __main__, so it is imported under that name too.
    from ...recipes import dockerfile  # noqa: F401

    importlib.import_module(__spec__.name)

    try:
        _unprivileged(sys.argv[2])
    except KeyError:
        sys.exit(f"docker-heal-proxy: parse_user {sys.argv[2]!r} is not a user on this machine")
    except PermissionError as refused:
        sys.exit(f"docker-heal-proxy: {refused}")
    _limited()
    _answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not break the frames
    _serve(sys.stdin.buffer, _answers)
