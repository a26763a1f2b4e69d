"""proxyclient: where the proxy's socket is, and telling "no proxy" from a bad answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import OneShotServer, http_response

from proxy.service import proxyclient


@pytest.mark.parametrize(
    ("listen", "env", "config", "expected"),
    [
        ("unix:///a.sock", {"DOCKER_HOST": "unix:///b.sock"}, "unix:///c.sock", "/a.sock"),
        (None, {"DOCKER_HOST": "unix:///b.sock"}, "unix:///c.sock", "/b.sock"),
        (None, {"DOCKER_HOST": "tcp://h:2375"}, "unix:///c.sock", "/c.sock"),
        (None, {}, None, "/run/docker-heal-proxy.sock"),
    ],
)
def test_socket_path_precedence(
    listen: str | None, env: dict[str, str], config: str | None, expected: str
) -> None:
    assert proxyclient.socket_path(listen, env, config, True, lambda _: True) == expected


def test_no_socket_and_a_404_are_no_proxy(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with pytest.raises(proxyclient.NoProxy, match="cannot reach the proxy"):
        proxyclient.ask(path, "POST", "/_heal/heal?image=x", None)
    server = OneShotServer(path, http_response("404 Not Found", b'{"message":"page not found"}'))
    try:
        with pytest.raises(proxyclient.NoProxy, match=r"answered /_heal/heal with 404"):
            proxyclient.ask(path, "POST", "/_heal/heal?image=x", None)
    finally:
        server.close()


def test_an_answer_that_is_not_http_is_an_error_not_no_proxy(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = OneShotServer(path, b"SSH-2.0-OpenSSH\r\n")
    try:
        with pytest.raises(proxyclient.AskError) as caught:
            proxyclient.ask(path, "GET", "/_heal/status", 5)
        assert not isinstance(caught.value, proxyclient.NoProxy)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("there", "expected"),
    [
        ({"/run/user/1000/docker-heal-proxy.sock"}, "/run/user/1000/docker-heal-proxy.sock"),
        ({"/run/docker-heal-proxy.sock"}, "/run/docker-heal-proxy.sock"),
        (
            {"/run/user/1000/docker-heal-proxy.sock", "/run/docker-heal-proxy.sock"},
            "/run/user/1000/docker-heal-proxy.sock",
        ),
        (set(), "/run/user/1000/docker-heal-proxy.sock"),
    ],
)
def test_a_user_with_no_proxy_of_their_own_asks_the_service(there: set[str], expected: str) -> None:
    """A user in the docker group runs ``heal`` with nothing naming a socket:
    asking only their own default would find no proxy while the service runs,
    and heal here with locks of their own, beside the service's heal of the tag."""
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    found = proxyclient.socket_path(None, env, None, False, lambda _: True, there.__contains__)
    assert found == expected
