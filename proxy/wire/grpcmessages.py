"""gRPC's length-prefixed messages, cut out of one stream's DATA payloads.

Rules:
- A gRPC message on HTTP/2 is a 1-byte flag (0 plain, 1 compressed), a
  4-byte big-endian length and that many bytes, and may span DATA frames or
  share one. Nothing else about gRPC is read here.
- A compressed message, a flag other than 0 or 1, or a length over the
  limit raises ``MessageError``: the relay reads plain messages only, and
  fails open on anything else.
- Pure: no I/O.

Theory of operation:
``Deframer.feed`` takes one DATA frame's payload and returns the messages
that end in it, each with the offset in that payload where it began (or
``CARRIED`` when it began in an earlier frame), so a caller that replaces
a message knows whether the frame holds all of it. Bytes of a message not
yet whole wait in the deframer.
"""

from __future__ import annotations

PREFIX = 5
CARRIED = -1
"""A message's start offset when it began in an earlier payload."""


class MessageError(ValueError):
    """A gRPC message the relay will not read."""


class Deframer:
    """Cuts one stream's payloads into whole gRPC messages."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, payload: bytes | memoryview) -> list[tuple[int, bytes]]:
        """The messages that end in ``payload``, each with its start offset in it."""
        carried = len(self._buf)
        buf = self._buf
        buf += payload
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= PREFIX:
            flag = buf[pos]
            if flag != 0:
                raise MessageError("a compressed message" if flag == 1 else f"message flag {flag}")
            size = int.from_bytes(buf[pos + 1 : pos + PREFIX], "big")
            if size > self._limit:
                raise MessageError(f"a message of {size} bytes")
            end = pos + PREFIX + size
            if end > len(buf):
                break
            start = pos - carried if pos >= carried else CARRIED
            out.append((start, bytes(buf[pos + PREFIX : end])))
            pos = end
        del buf[:pos]
        return out


def message(payload: bytes) -> bytes:
    """``payload`` as one plain gRPC message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload
