"""claim: a path the proxy cannot use is a one-line refusal, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.service import cli
from proxy.wire.listener import ListenerError, claim


def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    """``lstat`` and ``makedirs`` fail with an OSError that is not FileNotFoundError
    (as EACCES does for a folder the user cannot enter; root, which runs the
    tests, gets ENOTDIR the same way)."""
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "file" / "p.sock", tmp_path / "file" / "sub" / "p.sock"):
        with pytest.raises(ListenerError, match=f"cannot listen on {path}: Not a directory"):
            claim(str(path), 0o660, None)


def test_serve_refuses_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    sock = tmp_path / "file" / "p.sock"
    argv = ["serve", f"--listen=unix://{sock}", "--upstream=unix:///nowhere", "--config=/dev/null"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"docker-heal-proxy: cannot listen on {sock}: Not a directory\n"
