"""The benchmark's own plumbing, without running it: a comparison target that is
not installed must be skipped and named, never end the run in a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bench import bodycheck, exchange, facts, judge


def test_versions_of_missing_tools_do_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert facts.socat_version() == "?"
    assert facts.first_line(["haproxy", "-v"]) == "?"


def test_a_target_that_did_not_start_is_named_not_asked() -> None:
    def never() -> str:
        raise AssertionError("the version of a target that is not up was asked for")

    b = cast(Any, SimpleNamespace(unavailable={"socat": "not installed"}, targets=["direct"]))
    assert facts.version_of(b, "socat", never) == "not measured (see Not measured)"
    assert facts.version_of(b, "haproxy", never) == "not run (--targets)"
    b.targets.append("haproxy")
    assert facts.version_of(b, "haproxy", lambda: "2.6.12") == "2.6.12"


def test_the_in_process_exchange_passes_every_answer_whole() -> None:
    """It raises when an answer does not reach its client whole."""
    assert asyncio.run(exchange.per_exchange(100, 1)) > 0


def test_the_judge_rows_time_the_verdicts_they_are_named_after() -> None:
    for name, (call, arguments) in judge.rows().items():
        verdict = call(*arguments[-1])
        if name.startswith("loop alone"):
            assert verdict is None
        else:
            assert verdict.denied == ("refused" in name), name  # type: ignore[attr-defined]
        assert judge.per_call(call, arguments, 100, 1) > 0


def test_the_header_names_the_daemon_and_its_api_version() -> None:
    assert facts.version_line({"Version": "26.1.5", "ApiVersion": "1.45"}) == "26.1.5 (API 1.45)"
    assert facts.version_line({"Version": "20.10.24+dfsg1"}) == "20.10.24+dfsg1"
    assert facts.version_line({"message": "page not found"}) == "?"


def test_a_daemon_that_is_not_there_has_no_version(tmp_path: Path) -> None:
    assert facts.daemon_version(tmp_path / "no.sock") == "?"


def test_the_body_check_bench_times_the_path_it_names() -> None:
    """Its CLI body is let through under its rules (else it raises), the privileged one not."""
    for call in bodycheck.rows().values():
        assert bodycheck.per_body(call, 10, 1) > 0
    refused = bodycheck.judge(
        "r", bodycheck.RULES, "POST /containers/create", bodycheck.PRIVILEGED, bodycheck.AsIs()
    )
    assert refused is not None and refused.field == "HostConfig.Privileged"
