"""The audit log's writer: the file it opens, the queue it bounds, the reopen, the journal."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for

from proxy.service import auditsink
from proxy.service.auditconfig import AuditSettings
from proxy.service.auditsink import AuditError, AuditSink, FileOutput, JournalOutput
from proxy.wire.access import AccessRecord, Peer

PEER = Peer(uid=0, gid=0, groups=(), pid=1, exe="/usr/bin/docker")
WAIT = 10.0


def post(n: int = 0, listener: str = "ci") -> AccessRecord:
    return AccessRecord(
        listener, PEER, "POST", f"/v1.45/containers/c{n}/stop", None, 204, 0.01, False
    )


def paths(path: Path) -> list[str]:
    return [json.loads(line)["path"] for line in path.read_text().splitlines()]


@pytest.fixture
def sinks() -> Iterator[list[AuditSink]]:
    """Sinks a test opened, closed after it so no writer thread outlives it."""
    opened: list[AuditSink] = []
    yield opened
    for sink in opened:
        sink.close()


def file_sink(sinks: list[AuditSink], path: Path, size: int = 100) -> AuditSink:
    sink = AuditSink(FileOutput(str(path)), size)
    sinks.append(sink)
    return sink


class Gate:
    """An output that writes to a list, and can be held or made to fail."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.failures = 0
        self.closed = False

    def write(self, batch: list[tuple[float, AccessRecord]]) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.lines += [record.path for _, record in batch]

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


# -- the file ---------------------------------------------------------------------


def test_the_file_is_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0o077)  # the service's UMask=
    try:
        output = FileOutput(str(path))
    finally:
        os.umask(old)
    output.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_file_already_there_is_appended_to_and_keeps_its_mode(
    tmp_path: Path, sinks: list[AuditSink]
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"path":"/before"}\n')
    path.chmod(0o600)
    sink = file_sink(sinks, path)
    sink.record(post(1))
    sink.close()
    assert paths(path) == ["/before", "/v1.45/containers/c1/stop"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_is_refused(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "elsewhere"
    if not dangling:
        target.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(AuditError, match="it is a symbolic link"):
        FileOutput(str(link))
    assert not dangling or not target.exists()
    assert dangling or target.read_text() == ""


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AuditError, match=r"^cannot open the audit log .*fifo: "):
        FileOutput(str(fifo))
    with pytest.raises(AuditError, match="Is a directory"):
        FileOutput(str(tmp_path))


def test_lines_are_written_and_close_writes_what_is_queued(
    tmp_path: Path, sinks: list[AuditSink]
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = file_sink(sinks, path)
    for n in range(50):
        sink.record(post(n))
    sink.record(AccessRecord("ci", PEER, "GET", "/v1.45/containers/json", None, 200, 0.0, False))
    sink.close()
    assert paths(path) == [f"/v1.45/containers/c{n}/stop" for n in range(50)]


def test_reopen_follows_a_rename(tmp_path: Path, sinks: list[AuditSink]) -> None:
    path = tmp_path / "audit.jsonl"
    sink = file_sink(sinks, path)
    sink.record(post(1))
    wait_for(lambda: path.read_text(), WAIT, "the first line")
    path.rename(tmp_path / "audit.jsonl.1")
    sink.reopen()
    sink.record(post(2))
    sink.close()
    assert paths(tmp_path / "audit.jsonl.1") == ["/v1.45/containers/c1/stop"]
    assert paths(path) == ["/v1.45/containers/c2/stop"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_reopen_that_fails_keeps_writing_to_the_open_file(
    tmp_path: Path, sinks: list[AuditSink], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = file_sink(sinks, path)
    sink.record(post(1))
    wait_for(lambda: path.read_text(), WAIT, "the first line")
    path.rename(tmp_path / "audit.jsonl.1")
    path.symlink_to("/etc/passwd")
    with caplog.at_level(logging.ERROR):
        sink.reopen()
        sink.record(post(2))
        sink.close()
    assert paths(tmp_path / "audit.jsonl.1") == [f"/v1.45/containers/c{n}/stop" for n in (1, 2)]
    assert "it is a symbolic link; lines go on to the file open before" in caplog.text


# -- the queue ----------------------------------------------------------------------


def test_a_full_queue_drops_and_counts(sinks: list[AuditSink]) -> None:
    gate = Gate()
    gate.release.clear()
    sink = AuditSink(gate, size=3)
    sinks.append(sink)
    sink.record(post(0))
    wait_for(gate.entered.is_set, WAIT, "the writer to take the first line")
    for n in range(1, 6):
        sink.record(post(n))
    assert sink.dropped == 2
    assert sink.admits(), "on_full = drop never refuses"
    gate.release.set()
    sink.close()
    assert gate.lines == [f"/v1.45/containers/c{n}/stop" for n in range(4)]
    assert sink.dropped == 2


def test_refuse_admits_nothing_while_full_and_drops_nothing(sinks: list[AuditSink]) -> None:
    gate = Gate()
    gate.release.clear()
    sink = AuditSink(gate, size=2, refuse_when_full=True)
    sinks.append(sink)
    sink.record(post(0))
    wait_for(gate.entered.is_set, WAIT, "the writer to take the first line")
    sink.record(post(1))
    assert sink.admits()
    sink.record(post(2))
    assert not sink.admits()
    sink.record(post(3))  # an exchange admitted before the queue filled still gets its line
    assert not sink.admits()
    gate.release.set()
    wait_for(sink.admits, WAIT, "the queue to drain")
    sink.close()
    assert gate.lines == [f"/v1.45/containers/c{n}/stop" for n in range(4)]
    assert sink.dropped == 0


def test_a_refused_write_is_counted_under_drop(
    sinks: list[AuditSink], caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    gate.failures = 1
    sink = AuditSink(gate, size=10)
    sinks.append(sink)
    with caplog.at_level(logging.WARNING):
        sink.record(post(0))
        wait_for(lambda: sink.dropped == 1, WAIT, "the failed line to be counted")
        sink.record(post(1))
        sink.close()
    assert gate.lines == ["/v1.45/containers/c1/stop"]
    assert "audit log: cannot write: No space left on device" in caplog.text
    assert "audit log: writing again" in caplog.text


def test_a_refused_write_is_tried_again_under_refuse(
    sinks: list[AuditSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auditsink, "RETRY", 0.05)
    gate = Gate()
    gate.failures = 2
    sink = AuditSink(gate, size=10, refuse_when_full=True)
    sinks.append(sink)
    sink.record(post(0))
    sink.record(post(1))
    wait_for(lambda: gate.lines, WAIT, "the lines to be written at last")
    sink.record(post(2))
    sink.close()
    assert gate.lines[-1] == "/v1.45/containers/c2/stop"
    assert sorted(gate.lines) == gate.lines == [f"/v1.45/containers/c{n}/stop" for n in range(3)]
    assert sink.dropped == 0


def test_close_closes_the_output() -> None:
    gate = Gate()
    sink = AuditSink(gate, size=1)
    sink.close()
    assert gate.closed


# -- the journal ---------------------------------------------------------------------


def fields(datagram: bytes) -> dict[str, str]:
    """The native protocol's fields, plain and length-prefixed."""
    found: dict[str, str] = {}
    rest = datagram
    while rest:
        head, _, tail = rest.partition(b"\n")
        if b"=" in head:
            name, _, value = head.partition(b"=")
            found[name.decode()] = value.decode()
            rest = tail
        else:
            size = int.from_bytes(tail[:8], "little")
            found[head.decode()] = tail[8 : 8 + size].decode()
            assert tail[8 + size : 9 + size] == b"\n"
            rest = tail[9 + size :]
    return found


def test_the_journal_gets_one_datagram_a_line(tmp_path: Path, sinks: list[AuditSink]) -> None:
    address = str(tmp_path / "journal.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(address)
        journal.settimeout(WAIT)
        sink = AuditSink(JournalOutput(address), size=10)
        sinks.append(sink)
        sink.record(post(1, listener="two\nlines"))
        got = fields(journal.recv(65536))
    assert got["SYSLOG_IDENTIFIER"] == "docker-heal-proxy-audit"
    assert got["PRIORITY"] == "6"
    assert got["AUDIT_LISTENER"] == "two\nlines"
    assert got["AUDIT_ROUTE"] == "POST /containers/{id}/stop"
    assert got["AUDIT_DECISION"] == "allow"
    line = json.loads(got["MESSAGE"])
    assert line["path"] == "/v1.45/containers/c1/stop"
    assert line["listener"] == "two\nlines"


def test_no_journal_is_one_line_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"^cannot reach the journal at .*: No such file"):
        JournalOutput(str(tmp_path / "none"))
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditError, match="is not a socket"):
        JournalOutput(str(tmp_path / "file"))


def test_open_takes_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink.open(AuditSettings(str(path), "refuse", 7))
    try:
        assert (sink.size, sink.refuse_when_full) == (7, True)
        assert path.exists()
    finally:
        sink.close()
