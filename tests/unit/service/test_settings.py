"""Where each setting comes from: flag, then config file, then environment, then default.

The precedence is the docker CLI's, so a user who knows one knows the other;
getting it wrong silently points the proxy at the wrong daemon or socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.recipes.config import Config, SecuritySettings
from proxy.service.settings import (
    DEFAULT_UPSTREAM,
    Settings,
    SettingsError,
    host_port,
    resolve,
    unix_path,
)


def settings(
    config: Config | None = None,
    *,
    env: dict[str, str] | None = None,
    is_root: bool = True,
    groups: tuple[str, ...] = (),
    owned: tuple[str, ...] = ("/run/user/1000", "/xdg"),
    users: tuple[str, ...] = ("nobody",),
    **flags: str | None,
) -> Settings:
    return resolve(
        config or Config(),
        env=env or {},
        is_root=is_root,
        group_exists=lambda name: name in groups,
        owned=lambda folder: folder in owned,
        user_exists=lambda name: name in users,
        **flags,
    )


def test_defaults_for_root() -> None:
    s = settings()
    assert s.listen == "/run/docker-heal-proxy.sock"
    assert s.upstream == "/var/run/docker.sock" == unix_path(DEFAULT_UPSTREAM, "x")
    assert s.socket_mode == 0o660
    assert s.socket_group is None
    assert s.shutdown_timeout == 10.0
    assert s.metrics == ("127.0.0.1", 9478)
    assert s.state_dir == Path("/var/lib/docker-heal-proxy")


def test_defaults_for_a_user_follow_xdg() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    s = settings(env=env, is_root=False)
    assert s.listen == "/run/user/1000/docker-heal-proxy.sock"
    assert s.state_dir == Path("/home/u/.local/state/docker-heal-proxy")
    env["XDG_STATE_HOME"] = "/state"
    assert settings(env=env, is_root=False).state_dir == Path("/state/docker-heal-proxy")

    plain = settings(env={"HOME": "/home/u"}, is_root=False)
    assert plain.listen == "/home/u/.local/state/docker-heal-proxy/docker-heal-proxy.sock"
    assert "without XDG_RUNTIME_DIR" in plain.listen_note
    assert settings(env=env, is_root=False).listen_note == ""


def test_a_runtime_dir_of_someone_elses_is_not_used() -> None:
    """A plain ``su`` keeps the caller's XDG_RUNTIME_DIR, which the user cannot
    write: the XDG spec says to use it only when it is the user's own folder."""
    env = {"XDG_RUNTIME_DIR": "/run/user/0", "HOME": "/home/u"}
    s = settings(env=env, is_root=False)
    assert s.listen == "/home/u/.local/state/docker-heal-proxy/docker-heal-proxy.sock"
    assert s.listen_note == " (XDG_RUNTIME_DIR /run/user/0 is not a folder of this user's)"
    named = settings(env=env, is_root=False, listen="unix:///x/p.sock")
    assert (named.listen, named.listen_note) == ("/x/p.sock", "")


def test_root_ignores_the_user_runtime_dir() -> None:
    assert settings(env={"XDG_RUNTIME_DIR": "/run/user/0"}).listen == (
        "/run/docker-heal-proxy.sock"
    )


def test_flag_beats_config_beats_environment_beats_default() -> None:
    env = {"DOCKER_HOST": "unix:///env/docker.sock", "XDG_RUNTIME_DIR": "/xdg"}
    config = Config(
        listen="unix:///cfg/proxy.sock",
        upstream="unix:///cfg/docker.sock",
        metrics_listen="127.0.0.1:1000",
    )
    # Default only.
    assert settings(env={}).upstream == "/var/run/docker.sock"
    # The environment beats the default.
    assert settings(env=env).upstream == "/env/docker.sock"
    # The config file beats the environment.
    s = settings(config, env=env, is_root=False)
    assert (s.listen, s.upstream, s.metrics) == (
        "/cfg/proxy.sock",
        "/cfg/docker.sock",
        ("127.0.0.1", 1000),
    )
    # A flag beats the config file.
    s = settings(
        config,
        env=env,
        listen="unix:///flag/proxy.sock",
        upstream="unix:///flag/docker.sock",
        metrics_listen="[::1]:2000",
    )
    assert (s.listen, s.upstream, s.metrics) == (
        "/flag/proxy.sock",
        "/flag/docker.sock",
        ("::1", 2000),
    )


def test_empty_metrics_flag_disables_metrics_even_if_configured() -> None:
    config = Config(metrics_listen="127.0.0.1:1000")
    assert settings(config, metrics_listen="").metrics is None
    assert settings(Config(metrics_listen=None)).metrics is None
    assert settings(metrics_listen=":9000").metrics == ("0.0.0.0", 9000)


def test_tcp_docker_host_is_not_taken_as_the_upstream() -> None:
    """A tcp:// DOCKER_HOST is another daemon; the proxy only speaks to Unix sockets."""
    assert settings(env={"DOCKER_HOST": "tcp://10.0.0.1:2375"}).upstream == "/var/run/docker.sock"


def test_socket_group_defaults_to_docker_when_it_exists() -> None:
    assert settings(groups=("docker",)).socket_group == "docker"
    assert settings().socket_group is None
    assert settings(Config(socket_group="ops"), groups=("docker", "ops")).socket_group == "ops"


def test_a_named_socket_group_must_exist() -> None:
    """Refused here, before the socket is bound, so ``check`` refuses it too."""
    with pytest.raises(SettingsError, match="socket_group 'ops' is not a group on this machine"):
        settings(Config(socket_group="ops"), groups=("docker",))


def test_the_parse_user_must_exist_when_root() -> None:
    """Refused at start (and by ``check`` and a reload), not at the first build."""
    parser = Config(security=SecuritySettings(parse_user="parser"))
    with pytest.raises(SettingsError, match="parse_user 'parser' is not a user on this machine"):
        settings(parser)
    settings(parser, users=("parser",))
    settings(parser, is_root=False, env={"HOME": "/home/u"})  # a user cannot change user


def test_config_values_pass_through() -> None:
    config = Config(socket_mode=0o600, shutdown_timeout=3.5, state_dir=Path("/s"))
    s = settings(config)
    assert (s.socket_mode, s.shutdown_timeout, s.state_dir) == (0o600, 3.5, Path("/s"))


@pytest.mark.parametrize(
    "url",
    ["tcp://127.0.0.1:2375", "unix://relative/path", "/var/run/docker.sock", "unix:/x"],
)
def test_only_absolute_unix_urls(url: str) -> None:
    with pytest.raises(SettingsError, match="unix:///absolute/path"):
        settings(upstream=url)
    with pytest.raises(SettingsError, match="listen must be"):
        settings(listen=url)


@pytest.mark.parametrize("value", ["9478", "host:", "host:port", "h:70000", "h:-1"])
def test_bad_metrics_addresses(value: str) -> None:
    with pytest.raises(SettingsError, match="HOST:PORT"):
        host_port(value, "metrics listen")


def test_the_top_level_listen_is_the_default_listener_with_full() -> None:
    entry = {"name": "ci", "listen": "unix:///run/ci.sock", "policy": "ci"}
    s = settings(Config(listeners=(entry,), policies={"ci": {}}), groups=("docker",))
    default, ci = s.listeners
    assert (default.name, default.listen, default.policy) == ("default", s.listen, "full")
    assert (default.socket_mode, default.socket_group) == (s.socket_mode, "docker")
    assert (ci.name, ci.listen, ci.policy) == ("ci", "/run/ci.sock", "ci")


def test_a_listener_mistake_is_a_settings_error() -> None:
    entry = {"name": "ci", "listen": "unix:///run/ci.sock", "policy": "nope"}
    with pytest.raises(SettingsError, match=r"^listeners\.ci\.policy: no policy 'nope'"):
        settings(Config(listeners=(entry,)))
