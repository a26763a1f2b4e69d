"""What the running proxy uses, after command line, config file and environment.

Rules:
- Precedence is the docker CLI's: a flag beats the config file, the config
  file beats the environment, the environment beats the built-in default.
- Pure: the caller passes the environment, whether we are root, how to
  look up a group and whether a folder is the user's own, so every rule
  here is testable without touching the host.
- Only ``unix://`` URLs are accepted, for both sides. A TCP Docker socket
  would need TLS to be safe, and that is a different product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..recipes.config import Config, unix_socket_path
from ..recipes.config import host_port as parse_host_port
from ..wire.policy import Policy, policies_from_config
from .auditconfig import AuditSettings, audit_settings
from .listeners import DEFAULT, FULL, ListenerSettings, listeners

DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """Everything bound at start-up, resolved once; a reload changes none of it."""

    listen: str
    """Path of the proxy's own Unix socket."""
    upstream: str
    """Path of the daemon's Unix socket."""
    socket_mode: int
    socket_group: str | None
    shutdown_timeout: float
    metrics: tuple[str, int] | None
    state_dir: Path
    listen_note: str = ""
    """Why the socket is where it is, when that may surprise (for the start-up line)."""
    listeners: tuple[ListenerSettings, ...] = ()
    """Every listener, ``default`` (``listen``, ``socket_mode``, ``socket_group``) first."""
    policies: Mapping[str, Policy] = field(default_factory=dict)
    """Every policy by name, shipped ones included; ``full`` is none."""
    audit: AuditSettings | None = None
    """The audit log, or None for none."""


def unix_path(url: str, what: str) -> str:
    """The socket path of ``url``, by the same rule the config file is held to."""
    try:
        return unix_socket_path(url)
    except ValueError as exc:
        raise SettingsError(f"{what} {exc}") from None


def host_port(value: str, what: str) -> tuple[str, int]:
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise SettingsError(f"{what} {exc}") from None


def default_listen(
    env: Mapping[str, str], is_root: bool, owned: Callable[[str], bool]
) -> tuple[str, str]:
    """``/run`` for root, the user's runtime folder for a user; and a note
    saying why, when the socket is somewhere the user may not look.

    ``XDG_RUNTIME_DIR`` counts only when it is a folder of the user's own (the
    XDG spec's condition): a plain ``su`` keeps the caller's, which the new
    user cannot write. Without one (``su``, ssh without a login session) the
    socket goes in the user's state folder, which is theirs alone, rather
    than in a ``/tmp`` anyone could squat on first.
    """
    if is_root:
        return "unix:///run/docker-heal-proxy.sock", ""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and owned(runtime):
        return f"unix://{runtime}/docker-heal-proxy.sock", ""
    folder = default_state_dir(env, is_root)
    if runtime:
        note = f" (XDG_RUNTIME_DIR {runtime} is not a folder of this user's)"
    else:
        note = " (the default for a user without XDG_RUNTIME_DIR)"
    return f"unix://{folder}/docker-heal-proxy.sock", note


def unix_docker_host(env: Mapping[str, str]) -> str | None:
    """``DOCKER_HOST`` when it names a Unix socket; a TCP one is not ours to use."""
    host = env.get("DOCKER_HOST", "")
    return host if host.startswith("unix://") else None


def default_upstream(env: Mapping[str, str]) -> str:
    return unix_docker_host(env) or DEFAULT_UPSTREAM


def default_state_dir(env: Mapping[str, str], is_root: bool) -> Path:
    if is_root:
        return Path("/var/lib/docker-heal-proxy")
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "state")
    return Path(base) / "docker-heal-proxy"


def resolve(
    config: Config,
    *,
    listen: str | None = None,
    upstream: str | None = None,
    metrics_listen: str | None = None,
    env: Mapping[str, str],
    is_root: bool,
    group_exists: Callable[[str], bool],
    owned: Callable[[str], bool],
    user_exists: Callable[[str], bool] = lambda name: True,
) -> Settings:
    listen_url, note = listen or config.listen or "", ""
    if not listen_url:
        listen_url, note = default_listen(env, is_root, owned)
    upstream_url = upstream or config.upstream or default_upstream(env)
    metrics = config.metrics_listen if metrics_listen is None else metrics_listen
    group = config.socket_group
    if group is None and group_exists("docker"):
        group = "docker"
    elif group is not None and not group_exists(group):
        raise SettingsError(f"socket_group {group!r} is not a group on this machine")
    parse_user = config.security.parse_user
    if is_root and not user_exists(parse_user):  # only root changes user
        raise SettingsError(
            f"[security] parse_user {parse_user!r} is not a user on this machine "
            "(the Dockerfile parser runs as it)"
        )
    listen_path = unix_path(listen_url, "listen")
    upstream_path = unix_path(upstream_url, "upstream")
    default = ListenerSettings(DEFAULT, listen_path, config.socket_mode, group, FULL)
    try:
        policies = policies_from_config(config.policies)
        every = listeners(default, config.listeners, upstream_path, policies, group_exists)
        audit = audit_settings(config.audit)
    except ValueError as exc:  # ListenersError among them
        raise SettingsError(str(exc)) from None
    return Settings(
        listen=listen_path,
        upstream=upstream_path,
        socket_mode=config.socket_mode,
        socket_group=group,
        shutdown_timeout=config.shutdown_timeout,
        metrics=host_port(metrics, "metrics listen") if metrics else None,
        state_dir=config.state_dir or default_state_dir(env, is_root),
        listen_note=note,
        listeners=every,
        policies=policies,
        audit=audit,
    )
