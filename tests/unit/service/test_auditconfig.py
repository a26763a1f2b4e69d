"""``[audit]``: what it accepts, and the one line naming the key it refuses with."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.service.auditconfig import AuditSettings, audit_settings


def test_no_table_no_audit_log() -> None:
    assert audit_settings({}) is None


def test_defaults_drop_with_a_bounded_buffer() -> None:
    found = audit_settings({"path": "/var/log/docker-heal-proxy/audit.jsonl"})
    assert found == AuditSettings("/var/log/docker-heal-proxy/audit.jsonl", "drop", 4096)
    assert found is not None and not found.journal


def test_journal_and_refuse() -> None:
    found = audit_settings({"path": "journal", "on_full": "refuse", "buffer": 10})
    assert found == AuditSettings("journal", "refuse", 10)
    assert found.journal


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"path": "audit.jsonl"}, '[audit] path must be an absolute file path or "journal"'),
        ({"path": "/var/log/"}, "[audit] path must be an absolute file path"),
        ({"path": "/"}, "[audit] path must be an absolute file path"),
        ({"path": 1}, "[audit] path must be an absolute file path"),
        ({"on_full": "drop"}, "[audit] path must be an absolute file path"),
        ({"path": "/a", "on_full": "block"}, '[audit] on_full must be "drop" or "refuse"'),
        ({"path": "/a", "buffer": 0}, "[audit] buffer must be a number of lines from 1"),
        ({"path": "/a", "buffer": True}, "[audit] buffer must be a number of lines from 1"),
        ({"path": "/a", "buffer": "1k"}, "[audit] buffer must be a number of lines from 1"),
        ({"path": "/a", "size": 1}, "[audit] unknown key 'size'"),
    ],
)
def test_refused_with_one_line_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        audit_settings(table)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
