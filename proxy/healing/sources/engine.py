"""The few Engine API calls a heal makes, straight to the upstream dockerd.

Rules:
- These requests go to dockerd's own socket, never through the proxy: a heal
  must not be intercepted by the proxy it is running in.
- Streams (build, pull, push, load) have no time limit here. A build may
  rightly take an hour; the heal's own timeout (``runners``, or the recipe's
  for a cache push) is what bounds it, by cancelling the call. Each short call
  (inspect, tag, untag, the image list, /info, /version) is bounded by
  ``call_timeout`` (``[heal] engine_timeout``): a wedged dockerd must not keep
  a heal, and the lock file it holds, waiting forever.
- Long operations (build, pull, push, load) answer with a stream of JSON messages,
  one per line. Each is turned into human text and handed to ``on_line`` as it
  arrives. A message carrying ``error`` is how dockerd reports a failure after
  it already answered 200, so it raises ``EngineError`` just as an HTTP error
  status does; either way the message is dockerd's own.
- Uploads (the build context, an image archive) are streamed from an async
  iterator and never held whole. If that iterator fails, its own exception is
  raised, not aiohttp's report that the connection broke as a result.

Theory of operation: ``Engine`` owns one aiohttp session on one Unix-socket
connector with no connection limit (concurrent heals must not queue behind
each other's hour-long builds). Short JSON calls go through aiodocker sharing
that session; the streaming calls use the session directly, because they
need an async-iterator body, build parameters aiodocker lacks (``target``),
and line-by-line progress with error detection. ``progress_lines`` and
``progress_error`` are the pure part: what a JSON message says, and whether
it is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiodocker
import aiohttp

from ...recipes.reference import split

LineSink = Callable[[str], None]
T = TypeVar("T")

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
_UPLOAD_CHUNK = 1 << 20
_ANONYMOUS = base64.urlsafe_b64encode(b"{}").decode("ascii")
_MAX_LINE = 1 << 20
"""A "line" longer than this is cut, so a stream without newlines stays bounded."""


class EngineError(Exception):
    """dockerd refused or failed a request; the text is dockerd's message."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def stream_chunks(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """What ``stream`` (a child's pipe) gives until its end, as it comes."""
    while chunk := await stream.read(1 << 16):
        yield chunk


async def iter_lines(chunks: AsyncIterable[bytes], limit: int = _MAX_LINE) -> AsyncIterator[str]:
    """Decoded lines of a byte stream, without their line endings.

    A line longer than ``limit`` comes out in ``limit``-sized pieces, so
    memory stays bounded whatever the other side writes.
    """
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        while (end := pending.find(b"\n", 0, limit)) >= 0 or len(pending) >= limit:
            cut = end + 1 if end >= 0 else limit
            yield pending[:cut].rstrip(b"\r\n").decode("utf-8", "replace")
            del pending[:cut]
    if pending:
        yield pending.rstrip(b"\r\n").decode("utf-8", "replace")


def progress_error(message: Mapping[str, Any]) -> str | None:
    """The failure a progress message reports, if it reports one."""
    detail = message.get("errorDetail")
    if isinstance(detail, Mapping) and detail.get("message"):
        return str(detail["message"])
    if message.get("error"):
        return str(message["error"])
    return None


def progress_lines(message: Mapping[str, Any]) -> list[str]:
    """What a person would want to read of one progress message."""
    error = progress_error(message)
    if error is not None:
        return [error]
    if isinstance(message.get("stream"), str):
        return [line for line in message["stream"].splitlines() if line.strip()]
    if message.get("status"):
        words = [f"{message['id']}:" if message.get("id") else "", message["status"]]
        words.append(str(message.get("progress") or ""))
        return [" ".join(word for word in words if word)]
    return []


class _Upload:
    """An upload body that remembers why its source failed.

    aiohttp reports a failing body as a broken connection; the caller wants
    the source's own error (an unreadable context file, say).
    """

    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self.source = source
        self.error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.source:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


async def _file_chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, _UPLOAD_CHUNK):
        yield chunk


async def _error_text(response: aiohttp.ClientResponse) -> str:
    body = await response.text(errors="replace")
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.strip() or f"HTTP {response.status}"


KEEPALIVE_SECONDS = 2.0
"""How long an idle daemon connection is kept for the next call.

aiohttp closes idle connections on a tick of this period, so one lives up to
twice this after its last use. Its default (15 s) kept a heal's connection
open for up to half a minute after the heal: a descriptor that looks like a
leak to anyone counting them, for a saving of one Unix-socket connect."""


class Engine:
    """A client of one dockerd socket. Create it inside the running event loop."""

    def __init__(self, socket_path: str, call_timeout: float) -> None:
        self.socket_path = socket_path
        self.call_timeout = call_timeout
        """Seconds each short call may take: ``[heal] engine_timeout``, given by
        whoever builds the engine, and kept current by the healer on a reload."""
        connector = aiohttp.UnixConnector(
            path=socket_path, limit=0, keepalive_timeout=KEEPALIVE_SECONDS
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=_NO_TIMEOUT)
        # The host is a placeholder: the connector decides where requests go.
        self._docker = aiodocker.Docker(
            url="unix://localhost", connector=connector, session=self._session, timeout=_NO_TIMEOUT
        )

    async def close(self) -> None:
        await self._docker.close()
        await self._session.close()

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.call_timeout):
                yield
        except TimeoutError:
            raise EngineError(
                f"the Docker daemon at {self.socket_path} did not answer {what} "
                f"within {self.call_timeout:g}s"
            ) from None

    async def image_exists(self, ref: str) -> bool:
        try:
            async with self._bounded(f"an inspect of {ref}"):
                await self._docker.images.inspect(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise EngineError(exc.message, exc.status) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"cannot reach the Docker daemon at {self.socket_path}: {exc}"
            raise EngineError(reason) from None
        return True

    async def ping(self) -> str | None:
        """None when the daemon answers ``/_ping``, else why not (for ``/healthz``)."""
        try:
            async with self._session.get(
                "http://docker/_ping", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status == 200:
                    return None
                return f"the Docker daemon answered /_ping with {response.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return (
                f"cannot reach the Docker daemon at {self.socket_path}: {exc or type(exc).__name__}"
            )

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """A short aiodocker call, bounded, its failures turned into EngineError."""
        try:
            async with self._bounded(what):
                return await call
        except aiodocker.DockerError as exc:
            raise EngineError(exc.message, exc.status) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"cannot reach the Docker daemon at {self.socket_path}: {exc}"
            raise EngineError(reason) from None

    async def list_images(self) -> list[dict[str, Any]]:
        """``GET /images/json``: one entry per image, with its ``RepoTags``."""
        return list(await self._call("the image list", self._docker.images.list()))

    async def root_dir(self) -> str:
        """The daemon's ``DockerRootDir`` from ``GET /info``."""
        info = await self._call("/info", self._docker.system.info())
        return str(info.get("DockerRootDir") or "")

    async def image_events(
        self, since: float, opened: Callable[[], None]
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Image events from ``since`` (wall-clock seconds) on, until the stream ends.

        ``opened`` runs once dockerd answered 200: a daemon can answer
        ``/_ping`` and still refuse ``/events`` (a socket proxy that forbids
        it). Ends normally when dockerd closes the stream (it stopped);
        raises EngineError when it cannot be opened or breaks. Read with the
        session directly, like the other streams, to learn when it opened.
        """
        params = {"since": f"{since:.3f}", "filters": json.dumps({"type": ["image"]})}
        try:
            async with self._session.get("http://docker/events", params=params) as response:
                if response.status != 200:
                    raise EngineError(await _error_text(response), response.status)
                opened()
                async for line in iter_lines(response.content.iter_any()):
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue  # not an event; dockerd writes only JSON lines
                    if isinstance(event, dict):
                        yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineError(f"lost dockerd's events at {self.socket_path}: {exc}") from None

    async def inspect(self, ref: str) -> Mapping[str, Any] | None:
        """``GET /images/{ref}/json``, or None when no image has that name."""
        try:
            return dict(await self._call(f"an inspect of {ref}", self._docker.images.inspect(ref)))
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    async def image_id(self, ref: str) -> str:
        """The ID of the image ``ref`` names now, to pin it while it is pushed."""
        found = await self._call(f"an inspect of {ref}", self._docker.images.inspect(ref))
        return str(found["Id"])

    async def platform(self) -> str:
        """The daemon's ``os/arch``, which decides what an image built on it runs on."""
        version = await self._call("/version", self._docker.version())
        return f"{version.get('Os', '')}/{version.get('Arch', '')}"

    async def untag(self, ref: str) -> None:
        """Remove the name ``ref`` only; the image stays while other names hold it."""
        await self._call(f"an untag of {ref}", self._docker.images.delete(ref, noprune=True))

    async def tag(self, source: str, target: str) -> None:
        ref = split(target)
        await self._call(
            f"a tag of {source} as {target}",
            self._docker.images.tag(source, ref.name, tag=ref.tag),
        )

    async def build(
        self,
        context: AsyncIterable[bytes],
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: Mapping[str, str] | None = None,
        target: str | None = None,
        on_line: LineSink,
    ) -> None:
        params = {"t": tag, "dockerfile": dockerfile}
        if buildargs:
            params["buildargs"] = json.dumps(dict(buildargs))
        if target:
            params["target"] = target
        headers = {"Content-Type": "application/x-tar"}
        await self._stream("/build", params, headers, on_line, _Upload(context))

    async def pull(self, ref: str, auth_header: str | None, on_line: LineSink) -> None:
        parsed = split(ref)
        params = {"fromImage": parsed.name, "tag": parsed.digest or parsed.tag or "latest"}
        headers = {"X-Registry-Auth": auth_header} if auth_header else {}
        await self._stream("/images/create", params, headers, on_line)

    async def push(self, ref: str, auth_header: str | None, on_line: LineSink) -> None:
        parsed = split(ref)
        # dockerd refuses a push without the header; "{}" is how the CLI says anonymous.
        headers = {"X-Registry-Auth": auth_header or _ANONYMOUS}
        params = {"tag": parsed.tag or "latest"}
        await self._stream(f"/images/{parsed.name}/push", params, headers, on_line)

    async def load(self, path: Path, on_line: LineSink) -> None:
        """Load a ``docker save`` archive (compressed or not; dockerd decides)."""
        # Opened here so a missing file is an OSError before any request is made.
        handle = await asyncio.to_thread(path.open, "rb")
        headers = {"Content-Type": "application/x-tar"}
        try:
            upload = _Upload(_file_chunks(handle))
            await self._stream("/images/load", {"quiet": "1"}, headers, on_line, upload)
        finally:
            handle.close()

    async def _stream(
        self,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        on_line: LineSink,
        upload: _Upload | None = None,
    ) -> None:
        try:
            async with self._session.post(
                f"http://docker{path}", params=params, headers=headers, data=upload
            ) as response:
                if response.status >= 400:
                    raise EngineError(await _error_text(response), response.status)
                async for line in iter_lines(response.content.iter_any()):
                    self._relay(line, on_line)
        except aiohttp.ClientError as exc:
            if upload is not None and upload.error is not None:
                raise upload.error from None
            raise EngineError(f"lost dockerd at {self.socket_path}: {exc}") from None

    @staticmethod
    def _relay(line: str, on_line: LineSink) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            if line.strip():
                on_line(line)
            return
        for text in progress_lines(message):
            on_line(text)
        error = progress_error(message)
        if error is not None:
            raise EngineError(error)
