"""Running one concrete recipe until its image exists, or saying why not.

Rules:
- A recipe succeeds only if, afterwards, dockerd has the image it promised.
  A command that exits 0 without producing the tag is a failure, because the
  container create that is waiting on it would fail anyway, more obscurely.
- Every kind is bounded by ``recipe.timeout``. Past it the work is stopped
  (a command's whole process group is killed) and the heal fails with
  ``timed out after Ns``.
- Everything a recipe prints, and every progress line of a build, pull or
  load, goes to the log file (private, and written off the event loop: see
  ``statefiles``), to ``on_line`` for live status,
  and into a short tail that ``RecipeFailed`` carries, so an error message
  can show the last lines without anyone opening the log.
- A command runs without a shell, with stdin closed, in ``recipe.workdir``.
  It gets the proxy's environment minus what systemd meant for the proxy
  alone (``NOTIFY_SOCKET``, ``LISTEN_*``, ``WATCHDOG_*``), plus the recipe's
  ``env``, plus ``DOCKER_HOST`` naming the upstream socket: a ``docker
  build`` inside the recipe must reach dockerd directly, not the proxy.
  It gets the open-files limit the proxy started with, not the one the
  proxy raised for itself (``openfiles``).
- A command gets its own session and so its own process group. When it is
  stopped, or when its first process exits, the whole group is sent SIGTERM,
  then SIGKILL after ``KILL_GRACE`` seconds. Leftovers would otherwise keep
  the output pipe open and the heal waiting.

Theory of operation: ``run_recipe`` opens the log, then runs the kind's body
inside ``asyncio.timeout``. Output flows through one ``_Transcript`` (log
file, tail, callback). For a command, a pump task reads the merged
stdout/stderr pipe; the run is over when the first process has exited *and*
the pipe is closed, the latter being the sign that nothing in the group
still holds it. Cancellation (the timeout, or the proxy shutting down)
reaches ``_stop_group`` through ``finally``, so no path leaves processes
behind. Engine errors, unreadable contexts and archives become
``RecipeFailed`` with the transcript's tail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress

from ...recipes.recipe import ConcreteRecipe
from ...recipes.reference import split
from ..sources import openfiles
from ..sources.buildcontext import ContextError, stream_context
from ..sources.engine import Engine, EngineError, iter_lines, stream_chunks
from ..sources.registryauth import auth_for
from .statefiles import LogFile

TAIL_LINES = 20
KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL, and the longest wait after SIGKILL."""

_PRIVATE_TO_PROXY = ("NOTIFY_SOCKET",)
_PRIVATE_PREFIXES = ("LISTEN_", "WATCHDOG_")


class RecipeFailed(Exception):
    """Why a recipe did not produce its image, with its last output lines."""

    def __init__(self, reason: str, tail: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail


def command_env(
    base: Mapping[str, str], recipe_env: Mapping[str, str], upstream: str
) -> dict[str, str]:
    """The environment a command recipe runs with."""
    env = {
        key: value
        for key, value in base.items()
        if key not in _PRIVATE_TO_PROXY and not key.startswith(_PRIVATE_PREFIXES)
    }
    env.update(recipe_env)
    env["DOCKER_HOST"] = f"unix://{upstream}"
    return env


class _Transcript:
    """Where a recipe's output goes: the log file, the tail, the live callback."""

    def __init__(self, log: LogFile, on_line: Callable[[str], None] | None) -> None:
        self._log = log
        self._on_line = on_line
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)

    def line(self, text: str) -> None:
        self._log.write(text + "\n")
        self._tail.append(text)
        if self._on_line is not None:
            self._on_line(text)

    def note(self, text: str) -> None:
        """A line of the proxy's own, for the log only."""
        self._log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {text}\n")

    def failed(self, reason: str) -> RecipeFailed:
        return RecipeFailed(reason, list(self._tail))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def _settled(
    proc: asyncio.subprocess.Process, pump: asyncio.Task[None], within: float
) -> bool:
    """Whether the first process exited and the pipe closed within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            await proc.wait()
            await asyncio.shield(pump)
    except TimeoutError:
        return False
    return True


async def _stop_group(proc: asyncio.subprocess.Process, pump: asyncio.Task[None]) -> None:
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _signal_group(proc.pid, sig)
            if await _settled(proc, pump, KILL_GRACE):
                return
    finally:
        # Cancelled again, or a process outside the group holds the pipe.
        if not pump.done():
            _signal_group(proc.pid, signal.SIGKILL)
            pump.cancel()


async def _pump(stream: asyncio.StreamReader, transcript: _Transcript) -> None:
    async for line in iter_lines(stream_chunks(stream)):
        transcript.line(line)


async def _run_command(recipe: ConcreteRecipe, upstream: str, transcript: _Transcript) -> None:
    if not recipe.command:
        raise transcript.failed("has an empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *recipe.command,
            cwd=recipe.workdir,
            env=command_env(os.environ, recipe.env, upstream),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=openfiles.for_children(),
        )
    except OSError as exc:
        # The file name tells a missing program from a missing workdir.
        raise transcript.failed(f"could not start: {exc.filename}: {exc.strerror}") from None
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, transcript))
    try:
        status = await proc.wait()
    finally:
        await _stop_group(proc, pump)
    if status != 0:
        reason = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise transcript.failed(reason)


async def _run_build(recipe: ConcreteRecipe, engine: Engine, transcript: _Transcript) -> None:
    spec = recipe.build
    if spec is None:
        raise transcript.failed("has no build table")
    await engine.build(
        stream_context(spec.context, spec.dockerfile),
        tag=recipe.image,
        dockerfile=spec.dockerfile,
        buildargs=spec.args,
        target=spec.target,
        on_line=transcript.line,
    )


async def _run_pull(recipe: ConcreteRecipe, engine: Engine, transcript: _Transcript) -> None:
    source = recipe.pull or recipe.image
    auth = await auth_for(split(source).domain)
    await engine.pull(source, auth, transcript.line)
    if source != recipe.image:
        await engine.tag(source, recipe.image)
        transcript.line(f"tagged {source} as {recipe.image}")


async def _run_load(recipe: ConcreteRecipe, engine: Engine, transcript: _Transcript) -> None:
    if recipe.load is None:
        raise transcript.failed("has no archive to load")
    await engine.load(recipe.load, transcript.line)


async def _run_kind(
    recipe: ConcreteRecipe, upstream: str, engine: Engine, transcript: _Transcript
) -> None:
    match recipe.kind:
        case "command":
            await _run_command(recipe, upstream, transcript)
        case "build":
            await _run_build(recipe, engine, transcript)
        case "pull":
            await _run_pull(recipe, engine, transcript)
        case "load":
            await _run_load(recipe, engine, transcript)


async def _run_checked(
    recipe: ConcreteRecipe, upstream: str, engine: Engine, transcript: _Transcript
) -> None:
    try:
        async with asyncio.timeout(recipe.timeout):
            await _run_kind(recipe, upstream, engine, transcript)
        produced = await engine.image_exists(recipe.image)
    except TimeoutError:
        raise transcript.failed(f"timed out after {recipe.timeout:g}s") from None
    except (EngineError, ContextError) as exc:
        raise transcript.failed(f"failed: {exc}") from None
    except OSError as exc:
        raise transcript.failed(f"cannot read {exc.filename}: {exc.strerror}") from None
    if not produced:
        raise transcript.failed(f"finished but did not produce {recipe.image}")


async def run_recipe(
    recipe: ConcreteRecipe,
    *,
    upstream: str,
    log: LogFile,
    engine: Engine,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run ``recipe`` to produce ``recipe.image``; raise ``RecipeFailed`` if it does not.

    Its transcript goes to ``log``, which the caller opened and closes.
    """
    transcript = _Transcript(log, on_line)
    transcript.note(f"{recipe.recipe.name}: {recipe.kind} recipe for {recipe.image}")
    started = time.monotonic()
    try:
        await _run_checked(recipe, upstream, engine, transcript)
    except RecipeFailed as failure:
        transcript.note(f"failed after {time.monotonic() - started:.1f}s: {failure.reason}")
        raise
    transcript.note(f"produced {recipe.image} in {time.monotonic() - started:.1f}s")
