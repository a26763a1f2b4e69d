"""The command line: ``serve`` (the default), ``check``, ``heal`` and ``status``.

Rules:
- Errors a user can fix (a bad flag, a bad config, a busy socket) print one
  line to stderr and exit 2 for usage and config, 1 for everything else.
  Tracebacks are for bugs only.
- A bare ``docker-heal-proxy`` means ``serve``, so the systemd unit and a
  person at a terminal type the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import uvloop

from .. import __version__
from ..healing.background import proactive
from ..healing.core.dockerfileparse import MAX_PARSED, ParseFailed, within_limit
from ..healing.core.healer import Healer, HealFailed
from ..healing.core.statefiles import StateDirError, prepare_state_dir
from ..healing.sources import openfiles
from ..healing.sources.buildcontext import read_dockerfile_from_disk
from ..healing.sources.cache import config_dir, reference_for
from ..healing.sources.engine import Engine, EngineError
from ..healing.sources.inputs import InputsError
from ..healing.stale.decision import Fresh, Stale
from ..healing.stale.tracker import judge_now
from ..recipes.config import Config, ConfigError, load_config
from ..recipes.graph import DependencyCycle, NamedImages, heal_plan, named_by
from ..recipes.patterns import Pattern, find_recipe
from ..recipes.recipe import ConcreteRecipe
from ..recipes.reference import InvalidReference
from ..wire.bodychecks import unsafe_folders
from ..wire.listener import ListenerError, check_not_self
from ..wire.routes import HEAL_PATH
from . import logs, proxyclient, systemd, trustscan
from .app import App
from .auditlines import allow_list, allow_toml
from .auditsink import AuditError, AuditSink
from .check import CacheReference, Staleness, describe
from .daemonview import DaemonView
from .listeners import warnings
from .server import open_listeners
from .settings import Settings, SettingsError, resolve
from .terminaltext import harmless, harmless_lines

DEFAULT_CONFIG = Path("/etc/docker-heal-proxy/config.toml")
CHECK_WAIT = 5.0
"""How long ``check`` waits for the daemon at most: a wedged one must not hang it."""
COMMANDS = ("serve", "check", "heal", "status")

T = TypeVar("T")


def _known(lookup: Callable[[str], object], name: str) -> bool:
    """Whether ``lookup`` (``grp.getgrnam``, ``pwd.getpwnam``) finds ``name``."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _uid_of(user: str) -> int | None:
    """``user``'s uid, or None when there is no such user."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _owned_folder(path: str) -> bool:
    """Whether ``path`` is a folder of this user's: the XDG runtime folder's rule."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


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

    check = add("check", "validate the config; with IMAGE, show how it would be healed")
    check.add_argument("image", nargs="?", metavar="IMAGE")
    check.add_argument("--upstream", help="unix:///path of the Docker daemon (cache key, min_free)")
    check.add_argument(
        "--audit-log",
        metavar="FILE",
        help="print the allow list the traffic in this audit log needs (- reads stdin)",
    )
    check.add_argument("--listener", metavar="NAME", help="with --audit-log: this listener only")

    heal = add("heal", "heal an image now, in the running proxy (else in this process)")
    heal.add_argument("image", nargs="?", metavar="IMAGE")
    heal.add_argument("--all", action="store_true", help="every non-pattern recipe that is missing")
    heal.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    heal.add_argument(
        "--listen", help="unix:///path of the proxy's socket (default: DOCKER_HOST, then config)"
    )
    heal.add_argument(
        "--upstream", help="unix:///path of the Docker daemon's socket (when no proxy answers)"
    )

    status = add("status", "show recipes, running heals and last results of a running proxy")
    status.add_argument(
        "--listen", help="unix:///path of the proxy's socket (default: DOCKER_HOST, then config)"
    )
    status.add_argument("--watch", action="store_true", help="redraw running heals every second")
    return top


def _serve(args: argparse.Namespace, config: Config) -> int:
    settings = _settings(args, config)
    _refuse_untrusted(config, settings)
    settings = _private_state(settings)  # made and checked once the config is trusted
    watchdog = systemd.watchdog_interval()  # a malformed one stops us before binding
    openfiles.raise_for_the_proxy()  # see openfiles: as dockerd does
    # A log that cannot be opened stops us before binding too.
    audit = AuditSink.open(settings.audit) if settings.audit is not None else None
    listeners = open_listeners(settings)
    return uvloop.run(App(settings, config, loader(args), listeners, watchdog, audit).run())


def loader(args: argparse.Namespace) -> Callable[[], Config]:
    """How a reload reads the config: the file start-up read, held to the same
    checks, so a reload takes nothing the next start would refuse."""

    def reload() -> Config:
        config = load(args.config)
        _refuse_untrusted(config, _settings(args, config))
        return config

    return reload


def _settings(args: argparse.Namespace, config: Config) -> Settings:
    """The one validation of what the config and flags bind: check, serve, heal
    and reload all go through it."""
    settings = resolve(
        config,
        listen=getattr(args, "listen", None),
        upstream=getattr(args, "upstream", None),
        metrics_listen=getattr(args, "metrics_listen", None),
        env=os.environ,
        is_root=os.geteuid() == 0,
        group_exists=partial(_known, grp.getgrnam),
        owned=_owned_folder,
        user_uid=_uid_of,
    )
    try:
        check_not_self(settings.listen, settings.upstream)
    except ListenerError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _untrusted(config: Config, settings: Settings) -> list[str]:
    return trustscan.untrusted(config, settings, os.environ, os.geteuid())


def _refuse_untrusted(config: Config, settings: Settings) -> None:
    """As root, refuse a config whose files someone else could change (see ``trust``);
    serve, heal and reload go through here, ``check`` lists them all."""
    if os.geteuid() != 0:
        return
    found = _untrusted(config, settings)
    if found:
        more = f" (and {len(found) - 1} more: see docker-heal-proxy check)" if found[1:] else ""
        raise SettingsError(f"root will not run what others can change: {found[0]}{more}")


def _private_state(settings: Settings) -> Settings:
    """``settings`` with ``state_dir`` made, checked and resolved (``statefiles``):
    before anything is written there, by ``serve`` or a local ``heal``."""
    return replace(settings, state_dir=prepare_state_dir(settings.state_dir))


async def _ask_daemon(
    upstream: str, config: Config, question: Callable[[Engine], Awaitable[T]]
) -> T:
    """One short question to the daemon at ``upstream``, on an Engine of its own
    whose calls give up after ``CHECK_WAIT``, or sooner if ``engine_timeout`` says so."""
    engine = Engine(upstream, min(CHECK_WAIT, config.heal.engine_timeout))
    try:
        return await question(engine)
    finally:
        await engine.close()


def _min_free_problem(args: argparse.Namespace, config: Config) -> str | None:
    """Why ``[heal] min_free`` cannot be checked by the proxy on this host, or None."""
    if not proactive.enabled(config):
        return None
    try:
        upstream = _settings(args, config).upstream
    except SettingsError:
        return None  # check reports the config; serve will report the settings
    try:
        root = uvloop.run(_ask_daemon(upstream, config, Engine.root_dir))
    except EngineError as exc:
        return f"cannot ask the daemon for its root folder, so [heal] min_free is unchecked: {exc}"
    return proactive.unseen_root(root)


def _cache_reference(
    args: argparse.Namespace, config: Config, named: NamedImages
) -> CacheReference:
    """The key a heal would compute: the inputs hashed here, the platform asked of
    the daemon a heal would run on."""

    def reference(concrete: ConcreteRecipe) -> str:
        repository = config.heal.cache
        if repository is None:
            return "none: [heal] cache is not set"
        try:
            platform = uvloop.run(
                _ask_daemon(_settings(args, config).upstream, config, Engine.platform)
            )
            plan = heal_plan(concrete.image, config.recipes, named)
            found = reference_for(repository, plan, config_dir(config), platform)
        except InputsError as error:
            return f"none, a heal would not use the cache: {error}"
        except (EngineError, SettingsError) as error:
            return f"unknown: the key needs the daemon's os/arch ({error})"
        pull_only = "" if config.heal.cache_push else ", pull only"
        return f"{found} ({platform}{pull_only}; tried before the recipe)"

    return reference


def _staleness(args: argparse.Namespace, config: Config) -> Staleness:
    """Whether an image is stale, as a running proxy would judge it now."""

    def staleness(image: str) -> str:
        try:
            settings = _settings(args, config)
            found = uvloop.run(
                _ask_daemon(
                    settings.upstream,
                    config,
                    lambda engine: judge_now(config, engine, settings.state_dir, image),
                )
            )
        except (EngineError, SettingsError) as error:
            return f"cannot tell: {error}"
        if isinstance(found, Stale):
            return f"yes, {found.reason}"
        if isinstance(found, Fresh) and found.note:
            return f"cannot tell: {found.note}"
        return "no"

    return staleness


def _dockerfile_for_check(concrete: ConcreteRecipe) -> str | None:
    """What the service would parse of a build's Dockerfile; a text it would
    not parse leaves the bases unknown, as in the service, and says so."""
    text = read_dockerfile_from_disk(concrete, limit=MAX_PARSED)
    try:
        return None if text is None else within_limit(text)
    except ParseFailed as exc:
        print(
            f"warning: {concrete.image}: its Dockerfile's bases are unknown: {exc}",
            file=sys.stderr,
        )
        return None


def _check(args: argparse.Namespace, config: Config) -> int:
    """Exit 1 when IMAGE is given but nothing would heal it, so scripts can ask;
    2, as serve would refuse, when root would not trust a file."""
    if args.audit_log is not None or args.listener is not None:
        return _allow_from_log(args)
    settings = _settings(args, config)  # what serve would refuse at start, check refuses too
    is_root = os.geteuid() == 0
    untrusted = [
        f"{'refused' if is_root else 'warning'}: {p}" for p in _untrusted(config, settings)
    ]
    access = _access_warnings(config, settings)
    disk = _min_free_problem(args, config)
    # check parses in its own process: it is no server, and the parser would
    # only be a worker's to load in serve (see healing.core.dockerfileparse).
    from ..recipes.dockerfile import from_images

    named = named_by(_dockerfile_for_check, from_images)
    reference = _cache_reference(args, config, named)
    stale = _staleness(args, config)
    print(describe(config, args.image, named, reference, disk, [*untrusted, *access], stale))
    if is_root and untrusted:
        return 2
    if args.image is None:
        return 0
    try:
        plan = heal_plan(args.image, config.recipes, named)
    except (DependencyCycle, InvalidReference):
        return 1
    return 0 if plan else 1


def _groups_of(uid: int) -> frozenset[int] | None:
    """A user's groups, primary and supplementary, as the group database says."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return None
    members = (group.gr_gid for group in grp.getgrall() if user.pw_name in group.gr_mem)
    return frozenset({user.pw_gid, *members})


def _access_warnings(config: Config, settings: Settings) -> list[str]:
    """``check``'s warnings about the listeners (see ``listeners.warnings``)."""
    root_groups: dict[int, str] = {}
    with contextlib.suppress(KeyError):
        root_groups[grp.getgrnam("docker").gr_gid] = "docker"
    with contextlib.suppress(OSError, KeyError):
        gid = os.stat(settings.upstream).st_gid
        root_groups.setdefault(gid, grp.getgrgid(gid).gr_name)
    used = {listener.policy for listener in settings.listeners}
    used |= {rule.policy for listener in settings.listeners for rule in listener.clients}
    folders = [
        line
        for name in sorted(used & settings.policies.keys())
        for line in unsafe_folders(
            f"policies.{name}.create", settings.policies[name].create, _owner_mode
        )
    ]
    binding = [name for name in sorted(used & settings.policies.keys())
               if settings.policies[name].create.binds_under]  # fmt: skip
    if binding and DaemonView(settings.upstream).daemon_root() is None:
        folders.append(
            f"warning: cannot read dockerd's root through {settings.upstream}: bind mounts "
            f"are refused under policies {', '.join(binding)} (run the proxy as root)"
        )
    return [
        *warnings(settings.listeners, config.listeners, settings.policies, root_groups, _groups_of),
        *folders,
    ]


def _owner_mode(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_uid, found.st_mode


def _allow_from_log(args: argparse.Namespace) -> int:
    """``check --audit-log``: the ``allow`` list for a policy, from the traffic a
    log holds (the ``discovery`` profile's purpose); it reads no daemon and no config."""
    if args.audit_log is None or args.image is not None:
        print("docker-heal-proxy: check takes IMAGE or --audit-log FILE", file=sys.stderr)
        return 2
    try:
        if args.audit_log == "-":
            harvest = allow_list(sys.stdin, args.listener)
        else:
            with open(args.audit_log, encoding="utf-8", errors="replace") as lines:
                harvest = allow_list(lines, args.listener)
    except OSError as exc:
        print(f"docker-heal-proxy: cannot read {args.audit_log}: {exc.strerror}", file=sys.stderr)
        return 1
    print(allow_toml(harvest, args.audit_log, args.listener), end="")
    return 0


async def _heal_now(settings: Settings, config: Config, images: list[str], force: bool) -> int:
    engine = Engine(settings.upstream, config.heal.engine_timeout)
    healer = Healer(config, engine, settings.upstream, settings.state_dir)
    failed = 0
    try:
        for image in images:
            try:
                outcome = await healer.ensure(image, force=force, trigger="cli")
            except HealFailed as failure:
                print(failure, file=sys.stderr)
                failed += 1
            else:
                print(f"{image}: {outcome}")
        await healer.settle()
    finally:
        await engine.close()
    return 1 if failed else 0


def _heal(args: argparse.Namespace, config: Config) -> int:
    """In the running proxy when one answers, so that the heal shares its locks,
    state and metrics; in this process only when none does, and then it says so."""
    if args.all == bool(args.image):
        print("docker-heal-proxy: heal takes an IMAGE or --all", file=sys.stderr)
        return 2
    if args.all:
        images = [r.match for r in config.recipes if not Pattern.compile(r.match).is_template]
    else:
        images = [args.image]
    path = _proxy_socket(args, config)
    try:
        return _heal_in_proxy(path, images, args.force)
    except proxyclient.NoProxy as exc:
        why = str(exc)
    settings = _settings(args, config)
    _refuse_untrusted(config, settings)  # the recipes run here, as this user
    settings = _private_state(settings)
    print(
        f"docker-heal-proxy: no proxy answers ({why}); healing in this process, "
        f"with the locks in {settings.state_dir}",
        file=sys.stderr,
    )
    if not args.all and find_recipe(config.recipes, args.image) is None:
        print(f"docker-heal-proxy: no recipe matches {args.image}", file=sys.stderr)
        return 1
    return uvloop.run(_heal_now(settings, config, images, args.force))


def _heal_in_proxy(path: str, images: list[str], force: bool) -> int:
    """Each heal asked of the proxy at ``path``; raises NoProxy before the first
    answer only, so a fallback never repeats a heal the proxy ran."""
    failed = 0
    for image in images:
        query = urlencode({"image": image, **({"force": "1"} if force else {})})
        try:
            status, body = proxyclient.ask(path, "POST", f"{HEAL_PATH}?{query}", None)
        except proxyclient.AskError as exc:
            if isinstance(exc, proxyclient.NoProxy) and image == images[0]:
                raise
            print(f"docker-heal-proxy: {exc}", file=sys.stderr)
            return 1
        answer = _json_object(body)
        # The answer names the tag and, on failure, the recipe's last lines: shown, not obeyed.
        if status == 200:
            print(harmless(f"{answer.get('image', image)}: {answer.get('outcome', '?')}"))
        else:
            message = str(answer.get("message") or f"{path} answered {status}")
            print(harmless_lines(message.splitlines()), end="", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _proxy_socket(args: argparse.Namespace, config: Config) -> str:
    return proxyclient.socket_path(
        args.listen, os.environ, config.listen, os.geteuid() == 0, _owned_folder
    )


def _status(args: argparse.Namespace, config: Config) -> int:
    from . import status

    path = _proxy_socket(args, config)
    if args.watch:
        # Ctrl-C is how a watch ends, even when started from a background job or
        # a supervisor that ignores SIGINT: children inherit that, and it
        # would leave the watch unstoppable but by SIGKILL.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        status.watch(path, sys.stdout)
    try:
        print(status.render(status.fetch(path)), end="")
    except status.StatusError as exc:
        print(f"docker-heal-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


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
    command = {"serve": _serve, "check": _check, "heal": _heal, "status": _status}[args.command]
    try:
        return command(args, config)
    except SettingsError as exc:
        print(f"docker-heal-proxy: {exc}", file=sys.stderr)
        return 2
    except (ListenerError, systemd.ActivationError, StateDirError, AuditError) as exc:
        print(f"docker-heal-proxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
