"""The config file: what it may say, and what it means once read.

Everything that turns TOML into settings lives here, and nothing else may
refuse a config. That way every mistake shows when the proxy starts (or under
``docker-heal-proxy check``), as one line naming the file and the key, and
never surfaces halfway through a heal.

Rules:

- Every key is optional; without a file the proxy runs on ``Config()``.
- An unknown key is an error at every level: a misspelt key that was silently
  ignored would leave a default in place that the user thinks they changed.
- A duration is a string of number-unit pairs (``d``, ``h``, ``m``, ``s``,
  ``ms``: ``"90s"``, ``"1h30m"``, ``"30d"``) or whole seconds as an integer.
- ``heal.min_free`` is a share of the disk (``"15%"``) or a size with a
  binary or decimal unit (``"10GiB"``, ``"500MB"``); ``"0%"`` turns it off.
- ``proactive`` is a boolean, off by default: rebuilding right after a prune
  gives back the disk the prune freed, so it must be asked for.
- ``socket_mode`` is an octal string, as chmod takes it (``"0660"``). A TOML
  integer is refused: ``660`` and ``0o660`` are easy to confuse and far apart.
- ``listen`` and ``upstream`` are ``unix:///absolute/path`` URLs and
  ``metrics.listen`` is ``HOST:PORT`` (or ``""``, which turns the metrics
  endpoint off). They are checked here even though only a restart applies
  them: ``check`` and a reload must refuse what the next start would refuse.
- Relative paths are relative to the config file's folder, since under systemd
  the working directory is ``/``. ``build.dockerfile`` is the exception: like
  ``docker build -f`` it is relative to the build context.
- An ``[[images]]`` entry has a ``match`` and exactly one of ``command``,
  ``build``, ``pull`` and ``load``. Every placeholder its fields use must be
  captured by its ``match``. ``pull = true`` pulls the image that was asked
  for; ``pull = false`` is refused, as it would leave an entry that can heal
  nothing.
- ``[heal] cache`` is a repository (no tag, no digest); ``cache = true`` on a
  ``command`` or ``build`` entry needs it. ``pull`` and ``load`` entries
  already fetch a stored image, so a cache in front of them would only copy
  it. ``inputs`` globs are relative and never climb out with ``..``: they
  describe the entry's own sources.
- ``[security] trust_paths`` are folders (relative to the config's) whose
  contents root trusts without the ownership check ``check`` and start apply.
- ``rebuild_when = "stale"`` needs sources to compare: a ``command`` or
  ``build`` entry must name its ``inputs`` (never the whole build context by
  default, which may hold data written at run time), a ``load`` entry's source
  is its archive, and a ``pull`` entry is refused (the registry decides what a
  tag is). ``on_stale`` only means something with ``rebuild_when = "stale"``,
  so it is refused without it.
- ``[[listeners]]``, ``[policies.NAME]`` and ``[audit]`` are kept here as the
  raw tables they are (a list of tables, a table of tables, a table): each
  is read by the part that uses it (``service.settings`` the listeners, the
  policy module the policies, the audit log its own), with the same one-line
  errors, so this module only checks that they are tables.
- A placeholder-free ``depends_on`` must name an image some entry matches
  (otherwise nothing could heal it), and such entries must not form a cycle.

Theory of operation: ``parse_config`` walks the data with small readers that
each know the dotted key path they are reading, so any of them can fail with
the precise location. Each entry is checked on its own first; the checks that
need all entries (``depends_on`` targets, cycles) run once all exist. Paths are
made absolute here, with the config folder escaped so that braces in it are
never taken for placeholders.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .graph import DependencyCycle, check_cycles
from .patterns import Pattern, escape, find_recipe, placeholders_in
from .recipe import Kind, OnStale, RebuildWhen, Recipe
from .reference import InvalidReference, normalize, parse

_Choice = TypeVar("_Choice", bound=str)


class ConfigError(ValueError):
    """A config the proxy refuses; the message is one line meant for a person."""


@dataclass(frozen=True)
class KeepLogs:
    """``heal.keep_logs``: which heal transcripts stay in ``state_dir/logs``."""

    last: int = 20
    """The newest this many per tag."""
    max_age: float = 14 * 86400.0
    """And of those, none older than this many seconds."""


@dataclass(frozen=True)
class MinFree:
    """The ``heal.min_free`` floor: a share of the disk or a number of bytes."""

    percent: float | None = None
    size: int | None = None

    def met(self, total: int, free: int) -> bool:
        if self.size is not None:
            return free >= self.size
        return total <= 0 or free * 100 >= (self.percent or 0.0) * total

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return f"{(self.size or 0) / 2**30:.3g}GiB"


@dataclass(frozen=True)
class HealSettings:
    """The ``[heal]`` table: limits that apply to every heal."""

    timeout: float = 1800.0
    """Default for an entry's ``timeout``."""
    failure_cooldown: float = 60.0
    """How long a failed heal is remembered, so a crash-looping client does not
    start a rebuild on every create."""
    max_parallel: int = 2
    forget_after: float = 30 * 86400.0
    """A remembered tag nobody used for this long is no longer healed proactively."""
    reconcile_interval: float = 900.0
    """How often to compare the images with the remembered tags, events or not."""
    reconcile_debounce: float = 5.0
    """How long image events must be quiet before a reconcile (one per prune)."""
    background_parallel: int = 1
    min_free: MinFree = MinFree(percent=15.0)
    """Proactive heals wait while the daemon's disk has less free space than this."""
    engine_timeout: float = 60.0
    """Bound on each short call to dockerd: an inspect, a tag, the reconcile's
    image list, /info for ``min_free``, and the cache's inspect, untag and
    /version. A wedged dockerd must not keep a heal, and the tag's lock file,
    forever; streams (build, pull, load, push) are bounded by the recipe's
    ``timeout`` instead. ``check`` waits the shorter of this and 5s."""
    max_build_spool: int = 4 << 30
    """Bytes of a build body read, and of its tar once decompressed, while
    looking for its Dockerfile before the build is forwarded unhealed."""
    max_build_spool_total: int = 16 << 30
    """Bytes spooled by all builds at once; a build that would pass it is
    forwarded unhealed, so concurrent builds cannot fill the disk."""
    keep_logs: KeepLogs = KeepLogs()
    cache: str | None = None
    """The registry repository heals are pulled from and pushed to (normalised)."""
    cache_push: bool = True
    """False makes this host pull-only, for hosts that hold no push credentials."""
    inputs_rescan: float = 300.0
    """How often every stale-mode entry's inputs are hashed again whole, in case
    the file watcher missed a change."""
    inputs_debounce: float = 5.0
    """How long a ``proactive`` stale-mode entry's inputs must be quiet before
    the background rebuild starts (one rebuild per edit session, not per save)."""


@dataclass(frozen=True)
class SecuritySettings:
    """The ``[security]`` table: what root trusts, and who runs what."""

    trust_paths: tuple[Path, ...] = ()
    """Folders exempt from the check of what root runs; a foot-gun by design."""
    parse_user: str = "nobody"
    """The user the Dockerfile parse worker becomes when the proxy is root: it
    parses clients' text."""


@dataclass(frozen=True)
class Config:
    """The config file, validated; ``Config()`` is the proxy with no file."""

    path: Path | None = None
    listen: str | None = None
    upstream: str | None = None
    socket_mode: int = 0o660
    socket_group: str | None = None
    state_dir: Path | None = None
    shutdown_timeout: float = 10.0
    heal: HealSettings = field(default_factory=HealSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    metrics_listen: str | None = "127.0.0.1:9478"
    recipes: tuple[Recipe, ...] = ()
    listeners: tuple[Mapping[str, Any], ...] = ()
    """The raw ``[[listeners]]`` entries (see ``service.settings``)."""
    policies: Mapping[str, Any] = field(default_factory=dict)
    """The raw ``[policies.NAME]`` tables, by name."""
    audit: Mapping[str, Any] = field(default_factory=dict)
    """The raw ``[audit]`` table."""


_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|d|h|m|s))+", re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)", re.ASCII)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)%", re.ASCII)
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?([KMGT]i?B|B)?", re.ASCII | re.IGNORECASE)
_UNIT_BYTES = {"b": 1} | {
    f"{prefix}{infix}b": base**power
    for power, prefix in enumerate("kmgt", 1)
    for infix, base in (("", 1000), ("i", 1024))
}
_SOCKET_MODE_RE = re.compile(r"[0-7]{3,4}")
_TOML_POSITION_RE = re.compile(r"(.*) \(at line (\d+), column (\d+)\)")

_TOP_KEYS = (
    "listen",
    "upstream",
    "socket_mode",
    "socket_group",
    "state_dir",
    "shutdown_timeout",
    "heal",
    "security",
    "metrics",
    "images",
    "listeners",
    "policies",
    "audit",
)
_HEAL_KEYS = (
    "timeout",
    "failure_cooldown",
    "max_parallel",
    "engine_timeout",
    "forget_after",
    "reconcile_interval",
    "reconcile_debounce",
    "background_parallel",
    "min_free",
    "max_build_spool",
    "max_build_spool_total",
    "keep_logs",
    "cache",
    "cache_push",
    "inputs_rescan",
    "inputs_debounce",
)
_METRICS_KEYS = ("listen",)
_SECURITY_KEYS = ("trust_paths", "parse_user")
_KINDS: tuple[Kind, ...] = ("command", "build", "pull", "load")
_ENTRY_KEYS = (
    "match",
    *_KINDS,
    "workdir",
    "env",
    "depends_on",
    "timeout",
    "proactive",
    "cache",
    "inputs",
    "rebuild_when",
    "on_stale",
)
_REBUILD_WHEN: tuple[RebuildWhen, ...] = ("missing", "stale")
_ON_STALE: tuple[OnStale, ...] = ("rebuild", "strict", "background")
_CACHED_KINDS: tuple[Kind, ...] = ("command", "build")
_BUILD_KEYS = ("context", "dockerfile", "args", "target")


def parse_duration(value: object) -> float:
    """Seconds in a duration; raises ValueError with a hint at the syntax."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and _DURATION_RE.fullmatch(value):
        return sum(
            float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART_RE.findall(value)
        )
    raise ValueError(f'bad duration {value!r} (use e.g. "90s", "30m", "1h30m" or seconds)')


def _toml_type(value: object) -> str:
    """What a TOML value is, in TOML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date or time"


def _bytes(text: str, unit_required: bool) -> int | None:
    """Bytes in ``"10GiB"``, ``"500 MB"`` (KB is 1000, KiB 1024, any case), or None."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or (unit_required and match[2] is None):
        return None
    return int(float(match[1]) * _UNIT_BYTES[(match[2] or "b").lower()])


def parse_size(value: object) -> int:
    """Bytes in a size: a whole number, or ``"4GiB"``, ``"512MB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    size = _bytes(value, unit_required=False) if isinstance(value, str) else None
    if size is None:
        raise ValueError(f'bad size {value!r} (use e.g. "4GiB", "512MB" or bytes)')
    return size


def parse_min_free(value: object) -> MinFree:
    """``heal.min_free``; raises ValueError with a hint at the syntax.

    A bare number is refused: it could be meant as a share or as bytes.
    """
    if isinstance(value, str):
        if (percent := _PERCENT_RE.fullmatch(value)) and float(percent.group(1)) <= 100:
            return MinFree(percent=float(percent.group(1)))
        if (size := _bytes(value, unit_required=True)) is not None:
            return MinFree(size=size)
    raise ValueError(f'bad size {value!r} (use a share like "15%" or a size like "10GiB")')


def format_duration(seconds: float) -> str:
    """The shortest duration string that reads back as ``seconds`` (to the ms)."""
    hours, rest = divmod(round(seconds * 1000), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    parts = zip((hours, minutes, whole, millis), ("h", "m", "s", "ms"), strict=True)
    return "".join(f"{amount}{unit}" for amount, unit in parts if amount) or "0s"


def unix_socket_path(url: str) -> str:
    """The path in a ``unix:///absolute/path`` URL; raises ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "unix" or not rest.startswith("/"):
        raise ValueError(f"must be a unix:///absolute/path URL, not {url!r}")
    return rest


def parse_socket_mode(value: object) -> int:
    """An octal string as chmod takes it; raises ValueError for anything else."""
    if not isinstance(value, str) or not _SOCKET_MODE_RE.fullmatch(value):
        raise ValueError(f'expected an octal string like "0660", not {value!r}')
    return int(value, 8)


def host_port(value: str) -> tuple[str, int]:
    """Where a ``HOST:PORT`` listens; an empty host is every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"must be HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text: {error.reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION_RE.fullmatch(message)
        if position:
            what, line, column = position.groups()
            message = f"line {line}, column {column}: {what}"
        raise ConfigError(f"{path}: {message}") from None
    config = parse_config(data, base_dir=path.absolute().parent, source=str(path))
    return replace(config, path=path.absolute())


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: str = "config") -> Config:
    """Validate TOML data whose relative paths are relative to ``base_dir``."""
    return _Reader(source, base_dir.absolute()).config(data)


def _at(where: str, key: str) -> str:
    """The dotted path of ``key`` in the table at ``where`` ("" is the top level)."""
    return f"{where}.{key}" if where else key


@dataclass(frozen=True)
class _Reader:
    """Validation state: what to call the file, and where relative paths start."""

    source: str
    base_dir: Path

    def fail(self, where: str, message: str) -> NoReturn:
        location = f"{self.source}: {where}" if where else self.source
        raise ConfigError(f"{location}: {message}")

    def config(self, data: Mapping[str, Any]) -> Config:
        self.known(data, _TOP_KEYS, "")
        defaults = Config()
        heal = self.heal(self.table(data, "heal"))
        security = self.table(data, "security")
        self.known(security, _SECURITY_KEYS, "security")
        trust_paths = self.string_list(security.get("trust_paths", []), "security.trust_paths")
        for i, folder in enumerate(trust_paths):
            self.string(folder, f"security.trust_paths[{i}]")
        metrics = self.table(data, "metrics")
        self.known(metrics, _METRICS_KEYS, "metrics")
        metrics_listen = defaults.metrics_listen
        if "listen" in metrics:
            metrics_listen = self.string(metrics["listen"], "metrics.listen", empty=True) or None
            if metrics_listen is not None:
                self.checked(host_port, metrics_listen, "metrics.listen")
        images = data.get("images", [])
        if not isinstance(images, list):
            self.fail("images", "expected [[images]] entries")
        recipes = tuple(self.recipe(index, entry, heal) for index, entry in enumerate(images))
        self.check_dependencies(recipes)
        listeners = data.get("listeners", [])
        if not isinstance(listeners, list) or not all(
            isinstance(entry, Mapping) for entry in listeners
        ):
            self.fail("listeners", "expected [[listeners]] entries")
        policies = self.table(data, "policies")
        for name, policy in policies.items():
            if not isinstance(policy, Mapping):
                self.fail(f"policies.{name}", "expected a table")
        return Config(
            listen=self.optional_socket(data, "listen"),
            upstream=self.optional_socket(data, "upstream"),
            socket_mode=(
                self.socket_mode(data["socket_mode"])
                if "socket_mode" in data
                else defaults.socket_mode
            ),
            socket_group=self.optional_string(data, "socket_group"),
            state_dir=(
                self.base_dir / self.string(data["state_dir"], "state_dir")
                if "state_dir" in data
                else None
            ),
            shutdown_timeout=self.optional_duration(
                data, "shutdown_timeout", "", defaults.shutdown_timeout
            ),
            heal=heal,
            security=SecuritySettings(
                trust_paths=tuple(self.base_dir / folder for folder in trust_paths),
                parse_user=self.string(
                    security.get("parse_user", SecuritySettings.parse_user), "security.parse_user"
                ),
            ),
            metrics_listen=metrics_listen,
            recipes=recipes,
            listeners=tuple(listeners),
            policies=policies,
            audit=self.table(data, "audit"),
        )

    def heal(self, table: Mapping[str, Any]) -> HealSettings:
        self.known(table, _HEAL_KEYS, "heal")
        defaults = HealSettings()
        min_free = defaults.min_free
        if "min_free" in table:
            try:
                min_free = parse_min_free(table["min_free"])
            except ValueError as error:
                self.fail("heal.min_free", str(error))
        return HealSettings(
            timeout=self.optional_duration(
                table, "timeout", "heal", defaults.timeout, positive=True
            ),
            failure_cooldown=self.optional_duration(
                table, "failure_cooldown", "heal", defaults.failure_cooldown
            ),
            max_parallel=self.at_least_one(table, "max_parallel", defaults.max_parallel),
            engine_timeout=self.optional_duration(
                table, "engine_timeout", "heal", defaults.engine_timeout, positive=True
            ),
            forget_after=self.optional_duration(
                table, "forget_after", "heal", defaults.forget_after, positive=True
            ),
            reconcile_interval=self.optional_duration(
                table, "reconcile_interval", "heal", defaults.reconcile_interval, positive=True
            ),
            reconcile_debounce=self.optional_duration(
                table, "reconcile_debounce", "heal", defaults.reconcile_debounce
            ),
            background_parallel=self.at_least_one(
                table, "background_parallel", defaults.background_parallel
            ),
            min_free=min_free,
            max_build_spool=self.optional_size(table, "max_build_spool", defaults.max_build_spool),
            max_build_spool_total=self.optional_size(
                table, "max_build_spool_total", defaults.max_build_spool_total
            ),
            keep_logs=self.keep_logs(table.get("keep_logs", {})),
            cache=self.cache_repository(table["cache"]) if "cache" in table else None,
            cache_push=self.boolean(
                table.get("cache_push", defaults.cache_push), "heal.cache_push"
            ),
            inputs_rescan=self.optional_duration(
                table, "inputs_rescan", "heal", defaults.inputs_rescan, positive=True
            ),
            inputs_debounce=self.optional_duration(
                table, "inputs_debounce", "heal", defaults.inputs_debounce
            ),
        )

    def at_least_one(
        self, table: Mapping[str, Any], key: str, default: int, where: str = "heal"
    ) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(_at(where, key), f"expected a whole number of at least 1, not {value!r}")
        return value

    def keep_logs(self, value: object) -> KeepLogs:
        """``{ last = 20, max_age = "14d" }``; either may be left out."""
        where = "heal.keep_logs"
        if not isinstance(value, Mapping):
            self.fail(where, 'expected a table like { last = 20, max_age = "14d" }')
        self.known(value, ("last", "max_age"), where)
        defaults = KeepLogs()
        return KeepLogs(
            last=self.at_least_one(value, "last", defaults.last, where),
            max_age=self.optional_duration(
                value, "max_age", where, defaults.max_age, positive=True
            ),
        )

    def cache_repository(self, value: object) -> str:
        """The repository heals are cached in, normalised; a tag or digest is refused,
        since the proxy picks the tag (the cache key)."""
        text = self.string(value, "heal.cache")
        try:
            reference = parse(text)
        except InvalidReference as error:
            self.fail("heal.cache", f"{text!r} is not a repository: {error.reason}")
        if "@" in text or ":" in text.rsplit("/", 1)[-1]:
            self.fail("heal.cache", f"give a repository without a tag or digest, not {text!r}")
        return reference.name

    def recipe(self, index: int, raw: object, heal: HealSettings) -> Recipe:
        where = f"images[{index}]"
        if not isinstance(raw, Mapping):
            self.fail(where, "expected a table")
        self.known(raw, _ENTRY_KEYS, where)
        if "match" not in raw:
            self.fail(f"{where}.match", "required")
        match = self.string(raw["match"], f"{where}.match")
        pattern = self.pattern(match, f"{where}.match")
        kinds = [kind for kind in _KINDS if kind in raw]
        if len(kinds) != 1:
            self.fail(where, self.kinds_problem(kinds))
        if "@" in pattern.normalized and kinds[0] != "pull":
            # Only a registry can give back content with a given digest; a
            # rebuild would produce a different one.
            self.fail(where, f"a digest reference heals only through pull, not {kinds[0]}")
        # Every field that may hold placeholders, under the name errors give it.
        templates: dict[str, str] = {}

        command = self.string_list(raw.get("command", []), f"{where}.command")
        if "command" in raw and not command:
            self.fail(f"{where}.command", "must not be empty")
        templates.update((f"command[{i}]", arg) for i, arg in enumerate(command))
        build = self.build(raw["build"], f"{where}.build", templates) if "build" in raw else None
        pull = self.pull(raw["pull"], match, f"{where}.pull") if "pull" in raw else None
        if pull is not None:
            templates["pull"] = pull
        load = None
        if "load" in raw:
            templates["load"] = self.string(raw["load"], f"{where}.load")
            load = self.path_template(templates["load"])
        workdir = escape(str(self.base_dir))
        if "workdir" in raw:
            templates["workdir"] = self.string(raw["workdir"], f"{where}.workdir")
            workdir = self.path_template(templates["workdir"])
        env = self.string_table(raw.get("env", {}), f"{where}.env")
        templates.update((f"env.{key}", value) for key, value in env.items())
        cache = self.boolean(raw.get("cache", False), f"{where}.cache")
        if cache and kinds[0] not in _CACHED_KINDS:
            self.fail(
                f"{where}.cache", f"only command and build entries are cached, not {kinds[0]}"
            )
        if cache and heal.cache is None:
            self.fail(f"{where}.cache", "needs a repository in [heal] cache")
        inputs = self.string_list(raw.get("inputs", []), f"{where}.inputs")
        if inputs and kinds[0] not in _CACHED_KINDS:
            self.fail(f"{where}.inputs", f"a {kinds[0]} entry has no sources to hash")
        for i, glob in enumerate(inputs):
            if not glob or glob.startswith("/") or ".." in glob.split("/"):
                self.fail(
                    f"{where}.inputs[{i}]",
                    f"expected a glob inside the workdir or build context, not {glob!r}",
                )
            templates[f"inputs[{i}]"] = glob
        depends_on = self.string_list(raw.get("depends_on", []), f"{where}.depends_on")
        for i, dependency in enumerate(depends_on):
            self.pattern(dependency, f"{where}.depends_on[{i}]")
            templates[f"depends_on[{i}]"] = dependency

        for label, text in templates.items():
            try:
                missing = placeholders_in(text) - pattern.placeholders
            except ValueError as error:
                self.fail(f"{where}.{label}", str(error))
            if missing:
                name = min(missing)
                self.fail(where, f"placeholder {{{name}}} in {label} is not captured by match")
        proactive = self.boolean(raw.get("proactive", False), f"{where}.proactive")
        rebuild_when, on_stale = self.staleness(raw, where, kinds[0], bool(inputs))
        return Recipe(
            index=index,
            match=match,
            kind=kinds[0],
            command=tuple(command),
            workdir=workdir,
            env=env,
            build=build,
            pull=pull,
            load=load,
            depends_on=tuple(depends_on),
            timeout=self.optional_duration(raw, "timeout", where, heal.timeout, positive=True),
            proactive=proactive,
            cache=cache,
            inputs=tuple(inputs),
            rebuild_when=rebuild_when,
            on_stale=on_stale,
        )

    def staleness(
        self, raw: Mapping[str, Any], where: str, kind: Kind, has_inputs: bool
    ) -> tuple[RebuildWhen, OnStale]:
        """``rebuild_when`` and ``on_stale``, refused where no source could be compared."""
        rebuild_when = self.choice(raw, "rebuild_when", where, _REBUILD_WHEN)
        on_stale = self.choice(raw, "on_stale", where, _ON_STALE)
        if rebuild_when == "stale" and kind == "pull":
            self.fail(
                f"{where}.rebuild_when",
                'a pull entry cannot be "stale": the registry decides what its tag is',
            )
        if rebuild_when == "stale" and kind in _CACHED_KINDS and not has_inputs:
            self.fail(
                f"{where}.rebuild_when",
                f'"stale" needs the {kind} entry\'s sources: list them in inputs',
            )
        if "on_stale" in raw and rebuild_when != "stale":
            self.fail(f"{where}.on_stale", 'applies only with rebuild_when = "stale"')
        return rebuild_when, on_stale

    def choice(
        self, raw: Mapping[str, Any], key: str, where: str, choices: tuple[_Choice, ...]
    ) -> _Choice:
        """One of ``choices`` (the first is the default)."""
        value = raw.get(key, choices[0])
        for choice in choices:
            if value == choice:
                return choice
        listed = ", ".join(f'"{choice}"' for choice in choices)
        self.fail(f"{where}.{key}", f"expected one of {listed}, not {value!r}")

    @staticmethod
    def kinds_problem(kinds: list[Kind]) -> str:
        choice = "exactly one of " + ", ".join(_KINDS)
        if not kinds:
            return f"needs {choice}"
        listed = ", ".join(repr(kind) for kind in kinds[:-1]) + f" and {kinds[-1]!r}"
        both = "both " if len(kinds) == 2 else ""
        return f"has {both}{listed}; give {choice}"

    def build(self, raw: object, where: str, templates: dict[str, str]) -> Mapping[str, object]:
        """The ``build`` table, stored raw for ``patterns`` with its context made absolute."""
        if not isinstance(raw, Mapping):
            self.fail(where, "expected a table")
        self.known(raw, _BUILD_KEYS, where)
        if "context" not in raw:
            self.fail(f"{where}.context", "required")
        table: dict[str, object] = {}
        for key in ("context", "dockerfile", "target"):
            if key in raw:
                templates[f"build.{key}"] = self.string(raw[key], f"{where}.{key}")
                table[key] = templates[f"build.{key}"]
        table["context"] = self.path_template(templates["build.context"])
        args = self.string_table(raw.get("args", {}), f"{where}.args")
        templates.update((f"build.args.{key}", value) for key, value in args.items())
        table["args"] = args
        return table

    def pull(self, raw: object, match: str, where: str) -> str:
        if raw is True:
            return match
        if raw is False:
            self.fail(where, "false is not allowed; give true or an image reference")
        reference = self.string(raw, where)
        self.pattern(reference, where)
        return reference

    def pattern(self, text: str, where: str) -> Pattern:
        """``text`` as a reference template; ``match``, ``pull`` and ``depends_on`` are."""
        try:
            return Pattern.compile(text)
        except ValueError as error:
            self.fail(where, str(error))

    def check_dependencies(self, recipes: tuple[Recipe, ...]) -> None:
        for recipe in recipes:
            for i, dependency in enumerate(recipe.depends_on):
                if not Pattern.compile(dependency).is_template and not find_recipe(
                    recipes, dependency
                ):
                    self.fail(
                        f"images[{recipe.index}].depends_on[{i}]",
                        f"no [[images]] entry matches {normalize(dependency)!r}",
                    )
        try:
            check_cycles(recipes)
        except DependencyCycle as error:
            self.fail("", str(error))

    def path_template(self, text: str) -> str:
        """``text`` made absolute against the config folder; may hold placeholders."""
        return str(Path(escape(str(self.base_dir))) / text)

    def known(self, table: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in keys:
                self.fail(where, f"unknown key {key!r}")

    def table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            self.fail(key, "expected a table")
        return value

    def string(self, value: object, where: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, not {value!r}")
        if not value and not empty:
            self.fail(where, "must not be empty")
        return value

    def optional_string(self, data: Mapping[str, Any], key: str) -> str | None:
        return self.string(data[key], key) if key in data else None

    def optional_socket(self, data: Mapping[str, Any], key: str) -> str | None:
        url = self.optional_string(data, key)
        if url is not None:
            self.checked(unix_socket_path, url, key)
        return url

    def checked(self, parse: Callable[[str], object], value: str, where: str) -> None:
        """Fail at ``where`` if ``parse`` refuses ``value``."""
        try:
            parse(value)
        except ValueError as error:
            self.fail(where, str(error))

    def boolean(self, value: object, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, not {value!r}")
        return value

    def string_list(self, value: object, where: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(where, "expected a list of strings")
        return [self.string(item, f"{where}[{i}]", empty=True) for i, item in enumerate(value)]

    def string_table(self, value: object, where: str) -> dict[str, str]:
        """An ``env`` or build ``args`` table. Its values are where tokens go, so a
        wrong one is named by its TOML type, never shown."""
        if not isinstance(value, Mapping):
            self.fail(where, "expected a table of strings")
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{where}.{key}", f"expected a string, not {_toml_type(item)}")
        return {str(key): item for key, item in value.items()}

    def optional_duration(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        default: float,
        *,
        positive: bool = False,
    ) -> float:
        """``positive`` for a duration that bounds or paces something, where 0
        would fail every call at once or spin; elsewhere 0 means none."""
        if key not in table:
            return default
        try:
            seconds = parse_duration(table[key])
        except ValueError as error:
            self.fail(_at(where, key), str(error))
        if positive and seconds <= 0:
            self.fail(_at(where, key), "must be more than 0s")
        return seconds

    def optional_size(self, table: Mapping[str, Any], key: str, default: int) -> int:
        if key not in table:
            return default
        try:
            return parse_size(table[key])
        except ValueError as error:
            self.fail(_at("heal", key), str(error))

    def socket_mode(self, value: object) -> int:
        try:
            return parse_socket_mode(value)
        except ValueError as error:
            self.fail("socket_mode", str(error))
