"""Finding the Dockerfile in a ``POST /build`` body as it streams past.

Rules:
- Sans-IO: the caller feeds the request body's bytes exactly as they came
  off the wire and reads the outcome; nothing here reads, writes or waits.
  The build interception spools the same bytes and forwards them unchanged.
- Nothing is extracted and nothing is kept but the Dockerfile entry (capped
  at ``MAX_DOCKERFILE``) and the names of the few metadata entries in front
  of it. File data is counted past, so memory stays flat however large the
  context is.
- The layers are the daemon's: HTTP chunked coding (or a fixed length), then
  gzip, bzip2 or xz if the first bytes say so (as ``archive.DetectCompression``
  does), then a tar stream with GNU long names and PAX ``path``,
  ``linkpath`` and ``size`` records, header-only types carrying no data.
- The Dockerfile is the first entry whose name, normalised inside the
  context root, equals the ``dockerfile`` parameter's. dockerd extracts the
  whole archive, so a later entry of the same name replaces it there;
  finding that out would mean reading every body to its end before
  forwarding it, so an archive holding two Dockerfiles may heal the bases of
  the first while the daemon builds the last (no client sends such a tar). As dockerd does, the
  default name ``Dockerfile`` falls back to ``dockerfile`` when the archive
  has no ``Dockerfile``.
- A Dockerfile entry that is a symlink or a hard link is resolved inside the
  archive only: the target, normalised inside the root, is looked for from
  the start of the archive again (``restart``), since it may come before or
  after the link. At most ``MAX_LINKS`` links are followed.
- At most ``limit`` tar bytes are read, counted after decompression: a small
  compressed body can stand for terabytes. ``stop`` ends a scan from
  another thread (its build is over) between pieces of at most
  ``INFLATE_PIECE`` bytes.
- Anything that cannot be read (bad chunking, an unknown compression, a
  broken tar header, a Dockerfile over the cap or missing) ends in
  ``failed`` with a reason for the log: the caller then forwards the build
  untouched, and the daemon judges it as it would without the proxy.

Theory of operation:
``DockerfileScan.feed`` takes raw body bytes. A ``_Payload`` layer removes
the transfer coding; the first few payload bytes pick a ``_Inflater`` (or
none), whose output, cut into bounded pieces, goes to the tar reader. The
tar reader is a table of states (``_TAR_STATES``): ``header`` collects a
512-byte block and decides what follows, ``skip`` counts past data and
padding, ``meta`` collects a long name or PAX record set, ``capture``
collects the Dockerfile. An outcome (``text``, ``failed`` or ``restart``)
stops it; further bytes are ignored.
"""

from __future__ import annotations

import bz2
import lzma
import posixpath
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from ...wire.http1 import ChunkedBody, ProtocolError

MAX_DOCKERFILE = 1 << 20
"""The largest Dockerfile entry read; a larger one leaves the build unhealed."""

MAX_LINKS = 8
"""Links followed from the Dockerfile entry before giving up."""

MAX_META = 1 << 20
"""The largest GNU long name or PAX record set read before an entry."""

INFLATE_PIECE = 1 << 20
"""Decompressed bytes handed to the tar reader at once: the bound on memory."""

BLOCK = 512
DEFAULT_NAME = "Dockerfile"

_MAGIC = 6  # bytes needed to recognise every compression below
_GZIP = b"\x1f\x8b\x08"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_HEADER_ONLY = frozenset(b"123456")  # links, devices, directories, FIFOs: no data


def context_path(name: str) -> str:
    """A path as it resolves inside the context root: no ``.``, ``..`` or leading ``/``."""
    return posixpath.normpath("/" + name).lstrip("/")


class _Payload:
    """The request body without its transfer coding."""

    def __init__(self, chunked: bool) -> None:
        self._chunks = ChunkedBody() if chunked else None

    def decode(self, data: bytes) -> Iterator[memoryview]:
        view = memoryview(data)
        chunks = self._chunks
        if chunks is None:
            yield view
            return
        i, end = 0, len(view)
        while i < end and not chunks.done:
            if chunks.remaining:  # only ever non-zero inside a chunk's data
                n = min(chunks.remaining, end - i)
                chunks.feed(data[i : i + n])
                yield view[i : i + n]
                i += n
                continue
            nl = data.find(b"\n", i)
            stop = end if nl < 0 else nl + 1
            chunks.feed(data[i:stop])  # one line at most: it stops where data starts
            i = stop


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


class _Inflater:
    """One compression, multi-stream as Go's readers are, output in bounded pieces."""

    def __init__(self, make: Callable[[], _Decompressor]) -> None:
        self._make = make
        self._current = make()

    def inflate(self, data: bytes) -> Iterator[bytes]:
        while data:
            current = self._current
            out = current.decompress(data, INFLATE_PIECE)
            data = getattr(current, "unconsumed_tail", b"")  # zlib's; bz2 and lzma keep it
            if out:
                yield out
            while not data and not current.eof and not getattr(current, "needs_input", True):
                out = current.decompress(b"", INFLATE_PIECE)
                if out:
                    yield out
            if current.eof:
                data = current.unused_data
                self._current = self._make()


def _inflater(magic: bytes) -> _Inflater | str | None:
    """The decompression these first bytes announce; None for a plain tar, or why not."""
    if magic.startswith(_GZIP):
        return _Inflater(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
    if magic.startswith(_BZIP2):
        return _Inflater(bz2.BZ2Decompressor)
    if magic.startswith(_XZ):
        return _Inflater(lzma.LZMADecompressor)
    if magic.startswith(_ZSTD):
        return "the context is zstd-compressed, which the proxy does not read"
    return None


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    text = field.strip(b" \0")  # as Go's parseOctal: a NUL inside is an error
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ProtocolError("not a tar header") from None


def _signed_sum(data: bytes) -> int:
    """The checksum some old writers computed, bytes read as signed."""
    return sum(b - 256 if b > 127 else b for b in data)


def _pax_size(value: str) -> int:
    """A PAX ``size``: decimal, never negative (as Go's reader checks)."""
    try:
        size = int(value, 10)
    except ValueError:
        raise ProtocolError("bad PAX size") from None
    if size < 0:
        raise ProtocolError("bad PAX size")
    return size


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(records: bytes) -> dict[str, str]:
    """PAX extended header records: ``<length> <key>=<value>\\n`` each."""
    found: dict[str, str] = {}
    i = 0
    while i < len(records):
        space = records.find(b" ", i)
        if space < 0:
            break
        try:
            length = int(records[i:space])
        except ValueError:
            raise ProtocolError("bad PAX record") from None
        if length <= space - i:
            raise ProtocolError("bad PAX record")
        key, _, value = records[space + 1 : i + length - 1].partition(b"=")
        found[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += length
    return found


class DockerfileScan:
    """Feed a build body; learn the Dockerfile's text, or why it was not found."""

    def __init__(
        self, name: str | None, *, chunked: bool, limit: int | None = None, links: int = 0
    ) -> None:
        self.wanted = context_path(name or DEFAULT_NAME)
        self.fallback = context_path(DEFAULT_NAME.lower()) if self.wanted == DEFAULT_NAME else None
        self.chunked = chunked
        self.links = links
        self.limit = limit
        """Tar bytes (decompressed) read at most before giving up."""
        self.tar_bytes = 0
        self.text: str | None = None
        """The Dockerfile, once read."""
        self.failed: str | None = None
        """Why the Dockerfile cannot be had, once known."""
        self.restart: str | None = None
        """A name to look for from the start of the archive again (a link's target)."""
        self._payload = _Payload(chunked)
        self._magic: bytes | None = b""
        """The first payload bytes, until they say how the tar is compressed."""
        self._inflater: _Inflater | None = None
        self._fallback_seen = False
        # The tar reader.
        self._state = "header"
        self._block = bytearray()
        self._left = 0  # bytes of the current entry's data still to come
        self._pad = 0  # padding after them
        self._meta = bytearray()
        self._meta_kind = b""
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._pax: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self.text is not None or self.failed is not None or self.restart is not None

    def feed(self, data: bytes) -> None:
        """Raw body bytes, as they came from the client."""
        if self.done:
            return
        try:
            for piece in self._payload.decode(data):
                self._decoded(piece)
                if self.done:
                    return
        except (ProtocolError, ValueError, zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
            self._fail(f"the build context cannot be read: {exc}")

    def stop(self) -> None:
        """Give up, from any thread: a ``feed`` under way ends at its next piece."""
        if not self.done:
            self.failed = "the scan was stopped"

    def end(self) -> None:
        """The body is complete: whatever was not found is not there."""
        if self.done:
            return
        if self._magic:
            self._start_tar(self._magic)
        if not self.done:
            self._archive_end()

    # -- layers ------------------------------------------------------------

    def _decoded(self, piece: memoryview) -> None:
        if self._magic is not None:
            take = _MAGIC - len(self._magic)
            self._magic += piece[:take].tobytes()
            if len(self._magic) < _MAGIC:
                return
            self._start_tar(self._magic)
            piece = piece[take:]
            if self.done:
                return
        if self._inflater is None:
            self._tar(piece)
            return
        for out in self._inflater.inflate(piece.tobytes()):
            self._tar(memoryview(out))
            if self.done:
                return

    def _start_tar(self, magic: bytes) -> None:
        kind = _inflater(magic)
        if isinstance(kind, str):
            self._fail(kind)
            return
        self._inflater = kind
        self._magic = None
        if kind is None:
            self._tar(memoryview(magic))
        else:
            for out in kind.inflate(magic):
                self._tar(memoryview(out))

    # -- the tar reader ----------------------------------------------------

    def _tar(self, data: memoryview) -> None:
        self.tar_bytes += len(data)
        if self.limit is not None and self.tar_bytes > self.limit:
            self._fail(f"no Dockerfile in the first {self.limit} bytes of the tar")
            return
        while data and not self.done and self._state != "end":
            data = _TAR_STATES[self._state](self, data)

    def _header(self, data: memoryview) -> memoryview:
        take = BLOCK - len(self._block)
        self._block += data[:take]
        if len(self._block) < BLOCK:
            return data[take:]
        block, self._block = bytes(self._block), bytearray()
        self._entry(block)
        return data[take:]

    def _entry(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._archive_end()
            return
        stored = _number(block[148:156])
        rest = block[:148] + block[156:]
        if stored != sum(rest) + 8 * 32 and stored != _signed_sum(rest) + 8 * 32:
            raise ProtocolError("a tar header has a wrong checksum")
        kind = block[156:157]
        size = _pax_size(self._pax["size"]) if "size" in self._pax else _number(block[124:136])
        if kind in (b"L", b"K", b"x"):
            if size > MAX_META:
                raise ProtocolError("a tar metadata entry is too large")
            self._expect("meta", size)
            self._meta_kind = kind
            return
        if kind == b"g":  # global PAX records: nothing the Dockerfile's name depends on
            self._expect("skip", size)
            return
        name = self._long_name or self._pax.get("path")
        if name is None:
            name = _text(block[0:100])
            if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX: GNU has no prefix
                name = _text(block[345:500]) + "/" + name
        link = self._long_link or self._pax.get("linkpath") or _text(block[157:257])
        self._long_name = self._long_link = None
        self._pax = {}
        if kind[0] in _HEADER_ONLY:
            size = 0
        path = context_path(name)
        if path == self.wanted:
            self._found(kind, path, link, size)
        else:
            if path == self.fallback:
                self._fallback_seen = True
            self._expect("skip", size)

    def _found(self, kind: bytes, path: str, link: str, size: int) -> None:
        if kind in (b"1", b"2"):
            if self.links >= MAX_LINKS:
                self._fail(f"the Dockerfile {path} is a chain of more than {MAX_LINKS} links")
            elif kind == b"2":  # a symlink is relative to its folder, or to the root
                self.restart = context_path(posixpath.join(posixpath.dirname(path), link))
            else:  # a hard link names its target from the root
                self.restart = context_path(link)
            return
        if kind not in (b"0", b"\0", b"7"):
            self._fail(f"the Dockerfile {path} is not a regular file")
            return
        if size > MAX_DOCKERFILE:
            self._fail(f"the Dockerfile {path} is over {MAX_DOCKERFILE >> 20} MiB")
            return
        self._expect("capture", size)
        if size == 0:
            self.text = ""

    def _expect(self, state: str, size: int) -> None:
        self._state = state
        self._left = size
        self._pad = -size % BLOCK
        if state == "skip" and size == 0:
            self._state = "header"

    def _skip(self, data: memoryview) -> memoryview:
        n = min(len(data), self._left + self._pad)
        taken = min(n, self._left)
        self._left -= taken
        self._pad -= n - taken
        if self._left == 0 and self._pad == 0:
            self._state = "header"
        return data[n:]

    def _collect(self, data: memoryview) -> memoryview:
        n = min(len(data), self._left)
        self._meta += data[:n]
        self._left -= n
        if self._left:
            return data[n:]
        collected, self._meta = bytes(self._meta), bytearray()
        if self._state == "capture":
            self.text = collected.decode("utf-8", "replace").removeprefix("\ufeff")
            return data[n:]
        if self._meta_kind == b"L":
            self._long_name = _text(collected)
        elif self._meta_kind == b"K":
            self._long_link = _text(collected)
        else:
            self._pax = _pax(collected)
        self._state = "skip" if self._pad else "header"  # the padding after the metadata
        return data[n:]

    def _archive_end(self) -> None:
        self._state = "end"
        if self._fallback_seen:
            self.restart = self.fallback
        else:
            self._fail(f"the build context has no {self.wanted}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._state = "end"


_TAR_STATES: dict[str, Callable[[DockerfileScan, memoryview], memoryview]] = {
    "header": DockerfileScan._header,
    "skip": DockerfileScan._skip,
    "meta": DockerfileScan._collect,
    "capture": DockerfileScan._collect,
}
