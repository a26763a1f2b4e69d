"""buildheal: which builds are claimed, and what of their query counts."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from urllib.parse import urlencode

import pytest

from proxy.healing.claims.buildheal import BuildParams, _absorb, _rescan, build_params
from proxy.healing.claims.contextscan import DockerfileScan


def test_what_the_cli_sends() -> None:
    query = urlencode(
        {
            "t": "agent:g1",
            "dockerfile": ".dockerfile.0a1b2c",
            "buildargs": json.dumps({"GROUP": "g1", "FROM_ENV": None}),
            "target": "final",
            "rm": "1",
        }
    )
    assert build_params(query) == BuildParams(
        ".dockerfile.0a1b2c", {"GROUP": "g1"}, "final", "agent:g1"
    )


def test_defaults_and_first_values_win() -> None:
    assert build_params("") == BuildParams()
    assert build_params("t=a&t=b&dockerfile=&target=") == BuildParams(tag="a")


@pytest.mark.parametrize("args", ["{", "[1]", '"x"', "null", '{"A": 1}'])
def test_build_args_the_daemon_would_refuse_count_as_none(args: str) -> None:
    params = build_params(urlencode({"buildargs": args}))
    assert params is not None
    assert params.build_args == {}


def test_build_args_read_to_go_depth_and_no_further() -> None:
    """Go reads 10,000 levels; Python's json used to raise RecursionError at ~1,000."""
    deep = "[" * 9_999 + "]" * 9_999  # with the object around it: 10,000 levels
    params = build_params(urlencode({"buildargs": f'{{"X": {deep}, "G": "a", "G": "b"}}'}))
    assert params is not None and params.build_args == {"G": "b"}
    deeper = "[" * 10_000 + "]" * 10_000
    params = build_params(urlencode({"buildargs": f'{{"X": {deeper}, "G": "a"}}'}))
    assert params is not None and params.build_args == {}  # the daemon refuses the build


@pytest.mark.parametrize("remote", ["client-session", "https://example.com/ctx.git"])
def test_a_remote_context_is_not_claimed(remote: str) -> None:
    assert build_params(urlencode({"remote": remote, "t": "x"})) is None


def test_a_rescan_reads_the_spool_so_far_then_goes_on_with_the_live_body() -> None:
    """The Dockerfile is a link to an entry that has not arrived yet."""
    link = tarfile.TarInfo("Dockerfile")
    link.type = tarfile.SYMTYPE
    link.linkname = "real/Dockerfile"
    real = tarfile.TarInfo("real/Dockerfile")
    real.size = 12
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("other"))
        tar.addfile(real, io.BytesIO(b"FROM later\n\n"))
    body = archive.getvalue()
    first, live = body[:1024], body[1024:]  # the link and "other"; the target is to come
    scan = DockerfileScan(None, chunked=False)
    with tempfile.TemporaryFile() as spool:
        _absorb(spool, scan, first)
        assert scan.restart == "real/Dockerfile"
        fresh = _rescan(spool, scan, complete=False)
        assert not fresh.done  # the spool so far does not hold it
        _absorb(spool, fresh, live)
        spool.seek(0)
        assert spool.read() == body  # appends went on at the end
    assert fresh.text == "FROM later\n\n"
    assert fresh.links == 1
