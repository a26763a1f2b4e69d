"""Registry credentials from a docker config, as the X-Registry-Auth header."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.healing.registryauth import load_docker_config, registry_auth


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
