"""buildheal: which builds are claimed, and what of their query counts."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from proxy.healing.buildheal import BuildParams, build_params


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


@pytest.mark.parametrize("remote", ["client-session", "https://example.com/ctx.git"])
def test_a_remote_context_is_not_claimed(remote: str) -> None:
    assert build_params(urlencode({"remote": remote, "t": "x"})) is None
