"""The few fsutil packets a BuildKit file transfer is made of, read and written by hand.

Rules:
- Read only what the session relay needs: a packet's type, its ID, a STAT's
  path (and its Stat as sent, to know the file again) and a DATA packet's
  bytes. Writing is one packet: the ERR that fails a
  transfer with the proxy's reason.
- A packet that is not what fsutil (tonistiigi/fsutil, ``types.Packet``)
  writes raises ``PacketError``; the relay then fails open. That covers bad
  protobuf wire format, an unknown packet field or type, and a field of the
  wrong wire type. A Stat is read more loosely: it has many fields the relay
  does not need (uid, gid, times, xattrs), so any well-formed field is skipped.
- Pure: no I/O. Protobuf is decoded by hand, because the relay needs four
  fields of two messages and a schema compiler would be the larger part.

Theory of operation:
A packet is a protobuf message with ``type`` = 1 (varint), ``stat`` = 2 (a
Stat message), ``ID`` = 3 (varint) and ``data`` = 4 (bytes); a Stat has
``path`` = 1 (bytes), ``mode`` = 2 and ``size`` = 5 among others. proto3
leaves zero values out, so a STAT packet has no ``type`` field, the entry
with ID 0 has no ``ID`` field, a file's end is a DATA packet with no ``data``
field, and the STAT that ends the listing has no ``stat`` field.
``read_packet`` walks the fields once (``_fields``: a key varint, then a
varint, 8 bytes, a length-delimited run or 4 bytes, by wire type).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

STAT = 0
REQ = 1
DATA = 2
FIN = 3
ERR = 4

_VARINT = 0
_FIXED64 = 1
_BYTES = 2
_FIXED32 = 5
_WIDTHS = {_FIXED64: 8, _FIXED32: 4}

# Packet fields: number -> wire type.
_PACKET_FIELDS = {1: _VARINT, 2: _BYTES, 3: _VARINT, 4: _BYTES}
_STAT_PATH = 1


class PacketError(ValueError):
    """Bytes that are not an fsutil packet as fsutil writes one."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One fsutil packet, as far as the relay reads it."""

    type: int
    id: int
    data: bytes
    """A DATA packet's bytes, or an ERR packet's text; empty for a file's end."""
    path: bytes | None
    """A STAT packet's path; ``None`` for the empty STAT that ends the listing."""
    stat: bytes = b""
    """A STAT packet's Stat message as sent: what fsutil compares to call a file unchanged."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PacketError("a varint longer than 10 bytes")
    raise PacketError("a truncated varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Each field as (number, wire type, value): an int for varints, the bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise PacketError("field number 0")
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        else:
            if wire == _BYTES:
                size, pos = _varint(buf, pos)
            elif wire in _WIDTHS:
                size = _WIDTHS[wire]
            else:
                raise PacketError(f"wire type {wire}")
            if pos + size > len(buf):
                raise PacketError("a truncated field")
            value = buf[pos : pos + size]
            pos += size
        yield number, wire, value


def _stat_path(buf: memoryview) -> bytes:
    path = b""
    for number, wire, value in _fields(buf):
        if number == _STAT_PATH:
            if not isinstance(value, memoryview) or wire != _BYTES:
                raise PacketError("a Stat path that is not bytes")
            path = bytes(value)
    return path


def read_packet(message: bytes | memoryview) -> Packet:
    """The packet one gRPC message carries, or ``PacketError``."""
    kind = ident = 0
    data = b""
    path: bytes | None = None
    stat = b""
    for number, wire, value in _fields(memoryview(message)):
        if _PACKET_FIELDS.get(number) != wire:
            raise PacketError(f"packet field {number} of wire type {wire}")
        match number, value:
            case 1, int():
                kind = value
            case 2, memoryview():
                stat = bytes(value)
                path = _stat_path(value)
            case 3, int():
                ident = value
            case 4, memoryview():
                data = bytes(value)
    if kind > ERR:
        raise PacketError(f"packet type {kind}")
    return Packet(kind, ident, data, path, stat)


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def err_packet(message: str) -> bytes:
    """An ERR packet with ``message``: fsutil's receiver fails with "error from sender: ..."."""
    text = message.encode()
    return b"\x08" + varint(ERR) + b"\x22" + varint(len(text)) + text
