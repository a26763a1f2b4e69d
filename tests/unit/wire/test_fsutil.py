"""fsutil: packets read as fsutil writes them, anything else refused, and the ERR written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire import fsutil
from proxy.wire.fsutil import PacketError, read_packet
from tests.h2session import data, field_bytes, field_int, req, stat


@given(
    path=st.text(min_size=1, max_size=50),
    ident=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**40),
)
def test_a_stat_gives_its_path_and_id(path: str, ident: int, size: int) -> None:
    packet = read_packet(stat(path, ident, size))
    assert (packet.type, packet.id, packet.path) == (fsutil.STAT, ident, path.encode())


def test_the_empty_stat_ends_the_listing() -> None:
    assert read_packet(b"") == fsutil.Packet(fsutil.STAT, 0, b"", None)


@given(ident=st.integers(0, 2**32 - 1), chunk=st.binary(max_size=100))
def test_data_and_a_file_end(ident: int, chunk: bytes) -> None:
    packet = read_packet(data(ident, chunk))
    assert (packet.type, packet.id, packet.data) == (fsutil.DATA, ident, chunk)


def test_req_and_fin() -> None:
    assert read_packet(req(3)).type == fsutil.REQ
    assert read_packet(field_int(1, fsutil.FIN)).type == fsutil.FIN


@pytest.mark.parametrize(
    "raw",
    [
        field_int(1, 5),  # no such type
        field_int(7, 1),  # no such field
        field_bytes(1, b"x"),  # type as bytes
        field_int(2, 1),  # stat as a varint
        b"\x08",  # a varint cut short
        b"\x22\x05ab",  # bytes cut short
        b"\x08" + b"\xff" * 11,  # a varint too long
        b"\x0b",  # wire type 3 (groups)
        b"\x00\x01",  # field 0
        field_bytes(2, field_int(1, 3)),  # a Stat path as a varint
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    with pytest.raises(PacketError):
        read_packet(raw)


def test_stat_fields_the_relay_skips_may_be_any_wire_type() -> None:
    body = field_bytes(1, b"Dockerfile") + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4
    assert read_packet(field_bytes(2, body)).path == b"Dockerfile"


@given(reason=st.text(max_size=300))
def test_the_err_packet_reads_back(reason: str) -> None:
    packet = read_packet(fsutil.err_packet(reason))
    assert (packet.type, packet.data) == (fsutil.ERR, reason.encode())
