"""Finding the Dockerfile in a build body, fed in pieces as a socket delivers it."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.healing.claims.contextscan import MAX_DOCKERFILE, DockerfileScan, context_path

Entry = tarfile.TarInfo | tuple[str, bytes]

COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


def tar(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def chunked(data: bytes, size: int = 4096) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def scan(
    body: bytes, name: str | None = None, *, is_chunked: bool = True, piece: int = 65536
) -> DockerfileScan:
    """Scan a whole body, following restarts the way the interception does."""
    result = DockerfileScan(name, chunked=is_chunked)
    while True:
        for data in pieces(body, piece):
            result.feed(data)
        result.end()
        if result.restart is None:
            return result
        result = DockerfileScan(result.restart, chunked=is_chunked, links=result.links + 1)


CONTEXT = [("big.bin", bytes(range(256)) * 300), ("sub/file", b"x"), ("Dockerfile", b"FROM a\n")]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("is_chunked", [True, False])
def test_every_compression_and_framing(compression: str, is_chunked: bool) -> None:
    payload = COMPRESSIONS[compression](tar(CONTEXT))
    body = chunked(payload) if is_chunked else payload
    found = scan(body, is_chunked=is_chunked, piece=1000)
    assert (found.text, found.failed) == ("FROM a\n", None)


SMALL = [("big.bin", bytes(range(256)) * 9), ("Dockerfile", b"FROM a\n")]


@settings(deadline=None, max_examples=60)
@given(
    st.sampled_from(sorted(COMPRESSIONS)),
    st.integers(1, 5000),
    st.integers(1, 5000),
)
def test_any_chunk_and_read_sizes(compression: str, chunk: int, piece: int) -> None:
    body = chunked(COMPRESSIONS[compression](tar(SMALL)), chunk)
    assert scan(body, piece=piece).text == "FROM a\n"


def test_found_as_soon_as_its_entry_is_read() -> None:
    body = chunked(tar([("Dockerfile", b"FROM a\n"), ("rest", b"y" * 100_000)]))
    found = DockerfileScan(None, chunked=True)
    found.feed(body[:2048])
    assert found.text == "FROM a\n"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_tar_format(fmt: int) -> None:
    deep = "d" * 90 + "/" + "e" * 60 + "/Dockerfile.long"
    body = chunked(
        tar(
            [("x" * 150 if fmt != tarfile.USTAR_FORMAT else "x", b"1"), (deep, b"FROM deep\n")], fmt
        )
    )
    assert scan(body, deep).text == "FROM deep\n"


def test_names_are_compared_inside_the_context_root() -> None:
    body = chunked(tar([("./sub/Dockerfile.g1", b"FROM g1\n"), ("Dockerfile", b"FROM no\n")]))
    assert scan(body, "sub/../sub/./Dockerfile.g1").text == "FROM g1\n"
    assert scan(body, "/sub/Dockerfile.g1").text == "FROM g1\n"
    assert context_path("../../etc/passwd") == "etc/passwd"


@pytest.mark.parametrize(
    ("entries", "restart"),
    [
        ([link("Dockerfile", "real/Df"), ("real/Df", b"FROM r\n")], "real/Df"),
        ([("real/Df", b"FROM r\n"), link("Dockerfile", "/real/Df")], "real/Df"),
        ([("Df", b"FROM r\n"), link("sub/Dockerfile", "../../../Df")], "Df"),
        ([("real/Df", b"FROM r\n"), link("Dockerfile", "real/Df", tarfile.LNKTYPE)], "real/Df"),
    ],
)
def test_links_are_resolved_inside_the_archive(entries: list[Entry], restart: str) -> None:
    name = "sub/Dockerfile" if restart == "Df" else None
    body = chunked(tar(entries))
    first = DockerfileScan(name, chunked=True)
    first.feed(body)
    assert first.restart == restart
    assert scan(body, name).text == "FROM r\n"


def test_a_link_loop_gives_up() -> None:
    body = chunked(tar([link("Dockerfile", "a"), link("a", "Dockerfile")]))
    assert "links" in (scan(body).failed or "")


def test_lowercase_dockerfile_only_for_the_default_name() -> None:
    lower = chunked(tar([("dockerfile", b"FROM lower\n"), ("z", b"")]))
    assert scan(lower).text == "FROM lower\n"
    assert scan(lower, "Dockerfile").text == "FROM lower\n"
    assert scan(lower, "Other").failed == "the build context has no Other"
    both = chunked(tar([("dockerfile", b"FROM lower\n"), ("Dockerfile", b"FROM upper\n")]))
    assert scan(both).text == "FROM upper\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (chunked(tar([("other", b"x")])), "the build context has no Dockerfile"),
        (chunked(tar([("Dockerfile", b"#" * (MAX_DOCKERFILE + 1))])), "over 1 MiB"),
        (chunked(tar([link("Dockerfile", "", tarfile.DIRTYPE)])), "not a regular file"),
        (chunked(b"\x28\xb5\x2f\xfd" + bytes(600)), "zstd"),
        (chunked(b"not a tar at all" * 64), "not a tar header"),
        (chunked(tar(CONTEXT).replace(b"FROM a", b"FROM b")[:512] + bytes(1024)), "no Dockerfile"),
        (chunked(tar(CONTEXT)[:148] + b"0000000\0" + tar(CONTEXT)[156:]), "wrong checksum"),
        (b"zz\r\nabc", "cannot be read"),
        (chunked(gzip.compress(tar(CONTEXT))[:-200] + b"garbage" * 50), "cannot be read"),
        (chunked(b""), "no Dockerfile"),
    ],
)
def test_what_cannot_be_read_says_why(body: bytes, reason: str) -> None:
    found = scan(body)
    assert found.text is None
    assert reason in (found.failed or ""), found.failed


def test_bytes_after_the_outcome_are_ignored() -> None:
    found = DockerfileScan(None, chunked=True)
    found.feed(chunked(tar([("Dockerfile", b"FROM a\n")])))
    found.feed(b"anything at all")
    found.end()
    assert (found.text, found.failed) == ("FROM a\n", None)


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_memory_stays_flat_for_a_large_context(compression: str) -> None:
    """64 MiB of zeros before the Dockerfile: gzip makes it ~64 KiB, a worst
    case for an inflater that would expand a whole input at once."""
    size = 64 << 20
    head = tarfile.TarInfo("zeros")
    head.size = size
    archive = head.tobuf(tarfile.PAX_FORMAT)
    archive += bytes(size) + tar([("Dockerfile", b"FROM big\n")])
    body = chunked(archive if compression == "plain" else zlib_gzip(archive), 1 << 16)
    del archive
    tracemalloc.start()
    try:
        found = DockerfileScan(None, chunked=True)
        for data in pieces(body, 1 << 16):
            found.feed(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.text == "FROM big\n"
    assert peak < 4 << 20


def zlib_gzip(data: bytes) -> bytes:
    """gzip at level 1: the test is about the reader, not about waiting for the writer."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_base_256_sizes() -> None:
    """GNU tar's encoding of sizes of 8 GiB and more, here of a small one."""
    info = tarfile.TarInfo("data")
    info.size = 100
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (100).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    archive = bytes(header) + b"d" * 100 + bytes(412) + tar([("Dockerfile", b"FROM sized\n")])
    assert scan(chunked(archive)).text == "FROM sized\n"


def bomb(zeros: int) -> bytes:
    """A bzip2 body: a tar entry declaring a terabyte, then ``zeros`` zero bytes."""
    info = tarfile.TarInfo("big.bin")
    info.size = 1 << 40
    compressor = bz2.BZ2Compressor()
    out = compressor.compress(info.tobuf(tarfile.PAX_FORMAT))
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out += compressor.compress(block)
    return out + compressor.flush()


def test_decompressed_bytes_count_against_the_limit() -> None:
    body = bomb(64 << 20)
    assert len(body) < 1 << 12
    scan = DockerfileScan(None, chunked=False, limit=4 << 20)
    scan.feed(body)
    assert scan.failed == f"no Dockerfile in the first {4 << 20} bytes of the tar"
    assert scan.tar_bytes <= (4 << 20) + (1 << 20)


def test_a_stopped_scan_ends_at_its_next_piece() -> None:
    class Stopping(DockerfileScan):
        def _tar(self, data: memoryview) -> None:
            super()._tar(data)
            self.stop()  # as the build's handler would, from the loop's thread

    scan = Stopping(None, chunked=False)
    scan.feed(bomb(64 << 20))
    assert scan.failed == "the scan was stopped"
    assert scan.tar_bytes <= 1 << 20


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_a_gnu_header_has_no_prefix_field() -> None:
    """GNU's magic is "ustar  ": its bytes 345.. hold times, not a name prefix."""
    archive = bytearray(tar([("Dockerfile", b"FROM gnu\n")], tarfile.GNU_FORMAT))
    header = bytearray(archive[:512])
    assert header[257:265] == b"ustar  \0"
    header[345:357] = b"14712345670\0"  # an access time
    archive[:512] = with_checksum(header)
    scan = DockerfileScan(None, chunked=False)
    scan.feed(bytes(archive))
    assert scan.text == "FROM gnu\n"


def test_numbers_are_trimmed_of_nuls_and_spaces_at_both_ends() -> None:
    archive = bytearray(tar([("Dockerfile", b"FROM x\n")], tarfile.USTAR_FORMAT))
    header = bytearray(archive[:512])
    header[124:136] = b"\x00\x0000000007 \x00"  # the size, as Go still reads it
    archive[:512] = with_checksum(header)
    scan = DockerfileScan(None, chunked=False)
    scan.feed(bytes(archive))
    assert scan.text == "FROM x\n"


def test_a_negative_pax_size_is_refused() -> None:
    info = tarfile.TarInfo("Dockerfile")
    info.pax_headers = {"size": "-512"}
    scan = DockerfileScan(None, chunked=False)
    scan.feed(tar([info]))
    assert scan.failed == "the build context cannot be read: bad PAX size"
