"""grpcmessages: messages cut out of payloads split anywhere, with where each began."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.grpcmessages import CARRIED, Deframer, MessageError, message


@given(payloads=st.lists(st.binary(max_size=40), max_size=8), data=st.data())
def test_messages_come_out_whole_wherever_the_payloads_are_cut(
    payloads: list[bytes], data: st.DataObject
) -> None:
    raw = b"".join(message(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    deframer = Deframer(1 << 10)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        for start, body in deframer.feed(raw[a:b]):
            if start != CARRIED:
                assert raw[a + start : a + start + 5 + len(body)] == message(body)
            got.append(body)
    assert got == payloads


@pytest.mark.parametrize(
    "raw", [b"\x01\x00\x00\x00\x00", b"\x02\x00\x00\x00\x00", b"\x00\x00\x00\x04\x01"]
)
def test_compressed_odd_flags_and_oversized_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(MessageError):
        Deframer(1 << 10).feed(raw)
