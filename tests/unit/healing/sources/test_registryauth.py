"""Registry credentials from a docker config, as the X-Registry-Auth header."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from proxy.healing.sources import registryauth
from proxy.healing.sources.registryauth import (
    helper_credentials,
    helper_for,
    load_docker_config,
    registry_auth,
    resolve_auth,
)


def decode(header: str | None) -> dict[str, Any]:
    assert header is not None
    return dict(json.loads(base64.urlsafe_b64decode(header)))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_hub_is_filed_under_the_index_url() -> None:
    config = {"auths": {"https://index.docker.io/v1/": {"auth": basic("me", "p:w")}}}
    assert decode(registry_auth(config, "docker.io")) == {
        "username": "me",
        "password": "p:w",
        "serveraddress": "https://index.docker.io/v1/",
    }


def test_registry_by_host_with_or_without_scheme() -> None:
    config = {
        "auths": {
            "https://other.example/v2/": {"auth": basic("x", "y")},
            "https://registry.example:5000": {"username": "u", "password": "pw"},
        }
    }
    assert decode(registry_auth(config, "registry.example:5000"))["username"] == "u"
    assert registry_auth(config, "registry.example") is None
    assert registry_auth(config, "docker.io") is None


def test_exact_key_wins_and_identity_tokens_pass_through() -> None:
    config = {
        "auths": {
            "https://reg.example": {"auth": basic("old", "x")},
            "reg.example": {"identitytoken": "tok"},
        }
    }
    assert decode(registry_auth(config, "reg.example")) == {
        "identitytoken": "tok",
        "serveraddress": "reg.example",
    }


@pytest.mark.parametrize(
    "config",
    [{}, {"auths": []}, {"auths": {"reg.example": {}}}, {"auths": {"reg.example": {"auth": "!!"}}}],
)
def test_nothing_usable_means_anonymous(config: dict[str, Any]) -> None:
    assert registry_auth(config, "reg.example") is None


def test_config_location_follows_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert load_docker_config() == {}
    (tmp_path / "config.json").write_text('{"auths": {}}')
    assert load_docker_config() == {"auths": {}}
    (tmp_path / "config.json").write_text("not json")
    assert load_docker_config() == {}


def test_a_cred_helper_for_the_host_wins_then_the_store_then_auths() -> None:
    config = {
        "auths": {"reg:5000": {"auth": basic("u", "p")}},
        "credsStore": "desktop",
        "credHelpers": {"reg:5000": "pass", "https://index.docker.io/v1/": "hub"},
    }
    assert helper_for(config, "reg:5000") == "pass"
    assert helper_for(config, "docker.io") == "hub"
    assert helper_for(config, "other:1") == "desktop"
    assert helper_for({"auths": config["auths"]}, "reg:5000") is None
    assert helper_for({"credsStore": "", "credHelpers": {"reg:5000": 5}}, "reg:5000") is None


def test_a_helper_answer_is_a_password_or_an_identity_token() -> None:
    assert helper_credentials(b'{"ServerURL":"r","Username":"u","Secret":"s"}') == {
        "username": "u",
        "password": "s",
    }
    assert helper_credentials(b'{"Username":"<token>","Secret":"t"}') == {"identitytoken": "t"}
    assert helper_credentials(b'{"Username":"","Secret":""}') is None
    for bad in (b"nope", b"[]", b'{"Username":"u"}'):
        with pytest.raises(ValueError):
            helper_credentials(bad)


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on PATH for ``docker-credential-*`` scripts, and a config naming them."""
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return tmp_path


def helper(folder: Path, name: str, body: str, registry: str = "reg:5000") -> None:
    script = folder / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    (folder / "config.json").write_text(json.dumps({"credHelpers": {registry: name}}))


def test_resolve_auth_runs_the_helper_with_the_host_on_stdin(helpers: Path) -> None:
    helper(
        helpers,
        "t1",
        f'[ "$1" = get ] || exit 9\nread host\necho "$host" > {helpers}/asked\n'
        'echo \'{"Username":"me","Secret":"pw"}\'\n',
    )
    assert decode(resolve_auth("reg:5000")) == {
        "username": "me",
        "password": "pw",
        "serveraddress": "reg:5000",
    }
    assert (helpers / "asked").read_text() == "reg:5000\n"


def test_credentials_not_found_is_anonymous_without_a_warning(
    helpers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    helper(helpers, "t2", "echo credentials not found in native keychain\nexit 1\n")
    assert resolve_auth("reg:5000") is None
    assert caplog.records == []


@pytest.mark.parametrize(
    ("name", "body", "warning"),
    [
        ("t3", "echo 'SECRET-OUTPUT'\nexit 3\n", "docker-credential-t3: exited with status 3"),
        ("t4", "echo 'SECRET-OUTPUT'\n", "docker-credential-t4: its answer is not JSON"),
        ("t5", "sleep 30 &\nsleep 30\n", "docker-credential-t5: no answer within 0.5s"),
        ("../x", "exit 0\n", "'../x': not a valid helper name"),
        ("absent", None, "docker-credential-absent: cannot run"),
    ],
)
def test_a_failing_helper_is_anonymous_with_a_warning_that_leaks_nothing(
    helpers: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    body: str | None,
    warning: str,
) -> None:
    monkeypatch.setattr(registryauth, "HELPER_TIMEOUT", 0.5)
    if body is not None and "/" not in name:
        helper(helpers, name, body)
    else:
        (helpers / "config.json").write_text(json.dumps({"credHelpers": {"reg:5000": name}}))
    started = time.monotonic()
    assert resolve_auth("reg:5000") is None
    assert time.monotonic() - started < 5, "a hanging helper's children must not hold it"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and warning in messages[0], messages
    assert "SECRET-OUTPUT" not in caplog.text


def _group_gone(pgid: int) -> bool:
    """Whether no live process is left in group ``pgid`` (a zombie awaiting init is not live)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


@pytest.mark.parametrize(
    ("body", "password"),
    [
        # Hangs, and a child in a session of its own holds stdout past the kill.
        ("setsid sleep 20 &\necho $! > {folder}/detached\nsleep 20\n", None),
        # Answers and exits, but a child in its group holds stdout.
        ('sleep 20 &\necho \'{{"Username":"me","Secret":"pw"}}\'\n', "pw"),
    ],
    ids=["hung-detached-child", "answered-child-left"],
)
def test_a_child_holding_stdout_neither_hangs_the_lookup_nor_outlives_it(
    helpers: Path, monkeypatch: pytest.MonkeyPatch, body: str, password: str | None
) -> None:
    monkeypatch.setattr(registryauth, "HELPER_TIMEOUT", 2.0)  # time to answer, when it does
    helper(helpers, "t6", f"echo $$ > {helpers}/pid\n" + body.format(folder=helpers))
    started = time.monotonic()
    try:
        header = resolve_auth("reg:5000")
        assert time.monotonic() - started < 10, "a child holding stdout must not hold the lookup"
        assert (header and decode(header)["password"]) == password
        group = int((helpers / "pid").read_text())
        # SIGKILL is sent before the lookup returns; the kernel ends the group a moment later.
        wait_for(lambda: _group_gone(group), 5, "the helper's group to be killed")
    finally:
        if (helpers / "detached").exists():
            os.kill(int((helpers / "detached").read_text()), 9)


def test_auth_for_goes_anonymous_if_the_lookup_itself_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    monkeypatch.setattr(registryauth, "HELPER_TIMEOUT", -4.8)  # a bound of 0.2s
    monkeypatch.setattr(registryauth, "resolve_auth", lambda host: release.wait(30) and "x")

    async def lookup() -> str | None:
        try:
            return await registryauth.auth_for("reg:5000")
        finally:
            release.set()  # lets the thread end, so the loop can close at once

    assert asyncio.run(lookup()) is None
