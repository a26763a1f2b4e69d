"""The command line: ``serve`` (the default), ``check``, ``heal``, ``status``.

Rules:
- Errors a user can fix (a bad flag, a bad config, a busy socket) print one
  line to stderr and exit 2 for usage and config, 1 for everything else.
  Tracebacks are for bugs only.
- A bare ``docker-heal-proxy`` means ``serve``, so the systemd unit and a
  person at a terminal type the same thing.
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, logs
from .config import Config, ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/docker-heal-proxy/config.toml")
COMMANDS = ("serve", "check", "heal", "status")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def load(path: str | None) -> Config:
    """The config named on the command line, else the default file if present."""
    if path is not None:
        return load_config(Path(path))
    if DEFAULT_CONFIG.exists():
        return load_config(DEFAULT_CONFIG)
    return Config()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="docker-heal-proxy",
        description="A Docker Engine API proxy that rebuilds pruned images on container create.",
    )
    top.add_argument("--version", action="version", version=f"docker-heal-proxy {__version__}")
    sub = top.add_subparsers(dest="command")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if it exists)")
        p.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
        p.add_argument("--log-format", choices=("text", "json"), default="text")
        return p

    serve = add("serve", "run the proxy (the default)")
    serve.add_argument("--listen", help="unix:///path of the proxy's socket")
    serve.add_argument("--upstream", help="unix:///path of the Docker daemon's socket")
    serve.add_argument("--metrics-listen", help='HOST:PORT for /metrics and /healthz; "" disables')
    return top


def _serve(args: argparse.Namespace, config: Config) -> int:
    import uvloop

    from .server import open_listener
    from .settings import resolve

    settings = resolve(
        config,
        listen=args.listen,
        upstream=args.upstream,
        metrics_listen=args.metrics_listen,
        env=os.environ,
        is_root=os.geteuid() == 0,
        group_exists=_group_exists,
    )
    listener = open_listener(settings)
    from .app import App

    return uvloop.run(App(settings, config, args.config, listener).run())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "serve")
    args = parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"docker-heal-proxy: {exc}", file=sys.stderr)
        return 2
    from .listener import ListenerError
    from .settings import SettingsError

    try:
        return _serve(args, config)
    except (ListenerError, SettingsError) as exc:
        print(f"docker-heal-proxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
