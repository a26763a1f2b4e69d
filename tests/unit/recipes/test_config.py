from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.recipes.config import (
    Config,
    ConfigError,
    HealSettings,
    KeepLogs,
    MinFree,
    SecuritySettings,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

BASE = Path("/etc/dhp")
HINT = '(use e.g. "90s", "30m", "1h30m" or seconds)'
ONE_OF = "give exactly one of command, build, pull, load"
LOWERCASE = "is not a valid image reference: repository name must be lowercase"


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, base_dir=BASE, source="config.toml")


def fails(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(data)
    assert str(raised.value) == message


def test_defaults_without_a_file() -> None:
    assert parse({}) == Config(path=None) == Config()
    config = Config()
    assert (config.socket_mode, config.shutdown_timeout, config.metrics_listen) == (
        0o660,
        10.0,
        "127.0.0.1:9478",
    )
    assert config.heal == HealSettings(timeout=1800.0, failure_cooldown=60.0, max_parallel=2)
    assert config.recipes == ()


def test_access_tables_are_kept_raw_for_their_readers() -> None:
    listeners = [{"listen": "unix:///run/ci.sock", "policy": "runner", "clients": []}]
    policies = {"ci": {"extends": "runner", "allow": ["POST /build"]}}
    audit = {"path": "journal"}
    config = parse({"listeners": listeners, "policies": policies, "audit": audit})
    assert config.listeners == tuple(listeners)
    assert config.policies == policies
    assert config.audit == audit
    assert (Config().listeners, Config().policies, Config().audit) == ((), {}, {})


def test_top_level_settings() -> None:
    config = parse(
        {
            "listen": "unix:///run/x.sock",
            "upstream": "unix:///var/run/docker.sock",
            "socket_mode": "0640",
            "socket_group": "docker",
            "state_dir": "state",
            "shutdown_timeout": "1m",
            "heal": {
                "timeout": "1h30m",
                "failure_cooldown": 5,
                "max_parallel": 4,
                "max_build_spool": "512MiB",
            },
            "metrics": {"listen": ""},
        }
    )
    assert config == Config(
        listen="unix:///run/x.sock",
        upstream="unix:///var/run/docker.sock",
        socket_mode=0o640,
        socket_group="docker",
        state_dir=BASE / "state",
        shutdown_timeout=60.0,
        heal=HealSettings(
            timeout=5400.0, failure_cooldown=5.0, max_parallel=4, max_build_spool=512 << 20
        ),
        metrics_listen=None,
    )


def test_entries() -> None:
    config = parse(
        {
            "heal": {"timeout": "10m"},
            "images": [
                {"match": "base:{t}", "pull": True},
                {"match": "mirror:{t}", "pull": "mirror.example.com/x:{t}", "timeout": "90s"},
                {
                    "match": "agent:{group}",
                    "command": ["make", "GROUP={group}", "HOME=${{HOME}}"],
                    "env": {"G": "{group}"},
                    "depends_on": ["base:{group}", "base:1"],
                },
                {
                    "match": "app",
                    "build": {
                        "context": "src",
                        "dockerfile": "docker/Dockerfile",
                        "args": {"A": "1"},
                        "target": "prod",
                    },
                    "workdir": "/abs",
                },
                {"match": "saved", "load": "saved.tar", "workdir": "sub"},
            ],
        }
    )
    base, mirror, agent, app, saved = config.recipes
    assert [r.index for r in config.recipes] == [0, 1, 2, 3, 4]
    assert (base.kind, base.pull, base.timeout, base.workdir) == (
        "pull",
        "base:{t}",
        600.0,
        "/etc/dhp",
    )
    assert (mirror.pull, mirror.timeout) == ("mirror.example.com/x:{t}", 90.0)
    assert agent.kind == "command"
    assert agent.command == ("make", "GROUP={group}", "HOME=${{HOME}}")
    assert (agent.env, agent.depends_on) == ({"G": "{group}"}, ("base:{group}", "base:1"))
    assert app.kind == "build"
    assert app.build == {
        "context": "/etc/dhp/src",
        "dockerfile": "docker/Dockerfile",
        "args": {"A": "1"},
        "target": "prod",
    }
    assert app.workdir == "/abs"
    assert (saved.kind, saved.load, saved.workdir) == ("load", "/etc/dhp/saved.tar", "/etc/dhp/sub")


def test_braces_in_the_config_folder_stay_literal() -> None:
    config = parse_config(
        {"images": [{"match": "x", "build": {"context": "c"}}]}, base_dir=Path("/srv/{odd}")
    )
    (recipe,) = config.recipes
    assert recipe.workdir == "/srv/{{odd}}"
    assert recipe.build == {"context": "/srv/{{odd}}/c", "args": {}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lisen": "x"}, "config.toml: unknown key 'lisen'"),
        ({"heal": {"paralel": 1}}, "config.toml: heal: unknown key 'paralel'"),
        ({"heal": []}, "config.toml: heal: expected a table"),
        (
            {"heal": {"max_parallel": 0}},
            "config.toml: heal.max_parallel: expected a whole number of at least 1, not 0",
        ),
        (
            {"heal": {"max_parallel": True}},
            "config.toml: heal.max_parallel: expected a whole number of at least 1, not True",
        ),
        (
            {"heal": {"timeout": "5x"}},
            f"config.toml: heal.timeout: bad duration '5x' {HINT}",
        ),
        (
            {"shutdown_timeout": -1},
            f"config.toml: shutdown_timeout: bad duration -1 {HINT}",
        ),
        (
            {"socket_mode": 660},
            """config.toml: socket_mode: expected an octal string like "0660", not 660""",
        ),
        (
            {"socket_mode": "0980"},
            """config.toml: socket_mode: expected an octal string like "0660", not '0980'""",
        ),
        ({"listen": ""}, "config.toml: listen: must not be empty"),
        ({"upstream": 1}, "config.toml: upstream: expected a string, not 1"),
        ({"metrics": {"listen": 9478}}, "config.toml: metrics.listen: expected a string, not 9478"),
        (
            {"listen": "/run/x.sock"},
            "config.toml: listen: must be a unix:///absolute/path URL, not '/run/x.sock'",
        ),
        (
            {"upstream": "tcp://127.0.0.1:2375"},
            "config.toml: upstream: must be a unix:///absolute/path URL, not 'tcp://127.0.0.1:2375'",
        ),
        (
            {"metrics": {"listen": "127.0.0.1"}},
            "config.toml: metrics.listen: must be HOST:PORT, not '127.0.0.1'",
        ),
        ({"images": {"match": "x"}}, "config.toml: images: expected [[images]] entries"),
        ({"listeners": {"listen": "x"}}, "config.toml: listeners: expected [[listeners]] entries"),
        ({"listeners": ["x"]}, "config.toml: listeners: expected [[listeners]] entries"),
        ({"policies": []}, "config.toml: policies: expected a table"),
        ({"policies": {"ci": "readonly"}}, "config.toml: policies.ci: expected a table"),
        ({"audit": "journal"}, "config.toml: audit: expected a table"),
    ],
)
def test_top_level_errors(data: dict[str, Any], message: str) -> None:
    fails(data, message)


def entries(*images: dict[str, Any]) -> dict[str, Any]:
    return {"images": [{"match": "ok", "pull": True}, *images]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x", "images[1]: expected a table"),
        ({"pull": True}, "images[1].match: required"),
        (
            {"match": "Bad", "pull": True},
            f"images[1].match: 'Bad' {LOWERCASE}",
        ),
        ({"match": "x"}, "images[1]: needs exactly one of command, build, pull, load"),
        (
            {"match": "x", "command": ["a"], "pull": True},
            f"images[1]: has both 'command' and 'pull'; {ONE_OF}",
        ),
        (
            {"match": "x", "command": ["a"], "build": {}, "load": "l"},
            f"images[1]: has 'command', 'build' and 'load'; {ONE_OF}",
        ),
        ({"match": "x", "comand": ["a"]}, "images[1]: unknown key 'comand'"),
        ({"match": "x", "command": []}, "images[1].command: must not be empty"),
        ({"match": "x", "command": "make"}, "images[1].command: expected a list of strings"),
        ({"match": "x", "command": ["a", 1]}, "images[1].command[1]: expected a string, not 1"),
        ({"match": "x", "build": {}}, "images[1].build.context: required"),
        ({"match": "x", "build": "."}, "images[1].build: expected a table"),
        (
            {"match": "x", "build": {"context": ".", "file": "D"}},
            "images[1].build: unknown key 'file'",
        ),
        (
            {"match": "x", "build": {"context": ".", "args": {"A": 1}}},
            "images[1].build.args.A: expected a string, not an integer",
        ),
        (
            {"match": "x", "pull": False},
            "images[1].pull: false is not allowed; give true or an image reference",
        ),
        (
            {"match": "x", "pull": "UP"},
            f"images[1].pull: 'UP' {LOWERCASE}",
        ),
        ({"match": "x", "load": 3}, "images[1].load: expected a string, not 3"),
        (
            {"match": "x", "pull": True, "env": {"A": "{a"}},
            "images[1].env.A: stray '{' at position 0 in '{a'; "
            "write {name} for a placeholder or {{ for a literal brace",
        ),
        (
            {"match": "x", "pull": True, "timeout": "5x"},
            f"images[1].timeout: bad duration '5x' {HINT}",
        ),
        (
            {"match": "x:{tag}", "build": {"context": ".", "dockerfile": "D.{grp}"}},
            "images[1]: placeholder {grp} in build.dockerfile is not captured by match",
        ),
        (
            {"match": "x", "command": ["echo", "${HOME}"]},
            "images[1]: placeholder {HOME} in command[1] is not captured by match",
        ),
        (
            {"match": "x", "pull": True, "depends_on": ["Nope"]},
            f"images[1].depends_on[0]: 'Nope' {LOWERCASE}",
        ),
        (
            {"match": "x", "pull": True, "depends_on": ["missing"]},
            "images[1].depends_on[0]: no [[images]] entry matches "
            "'docker.io/library/missing:latest'",
        ),
        (
            {"match": "x", "pull": True, "depends_on": ["ok", "x"]},
            "images[1] -> images[1]: depends_on cycle",
        ),
    ],
)
def test_entry_errors_name_entry_and_key(entry: Any, message: str) -> None:
    fails(entries(entry), f"config.toml: {message}")


def test_cycle_across_entries() -> None:
    fails(
        {
            "images": [
                {"match": "a", "pull": True, "depends_on": ["b"]},
                {"match": "b", "pull": True, "depends_on": ["a:latest"]},
            ]
        },
        "config.toml: images[0] -> images[1] -> images[0]: depends_on cycle",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("30d", 2592000.0),
        (0, 0.0),
        (7, 7.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "90", "5x", "1 h", "-1s", True, False, -1, 1.5, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 << 30),
        ("4GB", 4 * 10**9),
        ("1.5 MiB", 3 << 19),
        ("100", 100),
        (7, 7),
        ("9kb", 9000),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "4g", "-1", "1 GiBs", True, -1, 1.5, None])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(bad)


def test_max_build_spool_is_a_size() -> None:
    assert parse({}).heal.max_build_spool == 4 << 30
    with pytest.raises(ConfigError, match=r"heal\.max_build_spool"):
        parse({"heal": {"max_build_spool": "lots"}})


def test_max_build_spool_total_is_a_size() -> None:
    assert parse({}).heal.max_build_spool_total == 16 << 30
    assert parse({"heal": {"max_build_spool_total": "1GiB"}}).heal.max_build_spool_total == 1 << 30
    with pytest.raises(ConfigError, match=r"heal\.max_build_spool_total"):
        parse({"heal": {"max_build_spool_total": "lots"}})


def test_security_parse_user() -> None:
    assert parse({}).security == SecuritySettings(parse_user="nobody")
    assert parse({"security": {"parse_user": "dhp-parse"}}).security.parse_user == "dhp-parse"
    with pytest.raises(ConfigError, match=r"security\.parse_user"):
        parse({"security": {"parse_user": ""}})
    with pytest.raises(ConfigError, match=r"security: unknown key 'user'"):
        parse({"security": {"user": "x"}})


def test_keep_logs() -> None:
    assert parse({}).heal.keep_logs == KeepLogs(last=20, max_age=14 * 86400.0)
    keep = parse({"heal": {"keep_logs": {"last": 5, "max_age": "2d"}}}).heal.keep_logs
    assert keep == KeepLogs(last=5, max_age=2 * 86400.0)
    assert parse({"heal": {"keep_logs": {"last": 3}}}).heal.keep_logs.max_age == 14 * 86400.0
    for bad, where in (
        (5, "heal.keep_logs"),
        ({"last": 0}, "heal.keep_logs.last"),
        ({"max_age": "0s"}, "heal.keep_logs.max_age"),
        ({"count": 3}, "heal.keep_logs"),
    ):
        with pytest.raises(ConfigError, match=rf"{where}\b"):
            parse({"heal": {"keep_logs": bad}})


@given(st.integers(min_value=0, max_value=10**9))
def test_durations_format_and_read_back(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


def test_format_duration_is_short() -> None:
    assert [format_duration(s) for s in (0, 0.5, 90, 1800, 5400.25)] == [
        "0s",
        "500ms",
        "1m30s",
        "30m",
        "1h30m250ms",
    ]


def test_load_config_resolves_against_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('state_dir = "state"\n[[images]]\nmatch = "a"\nbuild = { context = "." }\n')
    config = load_config(path)
    assert config.path == path
    assert config.state_dir == tmp_path / "state"
    assert config.recipes[0].build == {"context": str(tmp_path), "args": {}}


def test_load_config_reports_the_toml_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('listen = "x"\nupstream = \n')
    with pytest.raises(ConfigError, match=rf"^{path}: line 2, column 12: Invalid value$"):
        load_config(path)


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: No such file or directory$"):
        load_config(missing)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=rf"^{binary}: not UTF-8 text"):
        load_config(binary)


def test_semantic_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("lisen = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'lisen'$"):
        load_config(path)


def test_the_readme_example_is_a_valid_config() -> None:
    """The example users copy from must be one the proxy accepts, as documented."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    block = readme.split("<!-- config-example -->\n```toml\n", 1)[1].split("\n```", 1)[0]
    config = parse_config(tomllib.loads(block), base_dir=Path("/etc/docker-heal-proxy"))
    assert [r.kind for r in config.recipes] == ["command", "build", "pull", "load"]
    assert config.heal.max_parallel == 2
    assert config.metrics_listen == "127.0.0.1:9478"


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"match": "app@{digest}", "command": ["true"]}, "command"),
        ({"match": "app@sha256:" + "0" * 64, "load": "x.tar"}, "load"),
        ({"match": "app:1@{digest}", "build": {"context": "."}}, "build"),
    ],
)
def test_digests_heal_only_through_pull(entry: dict[str, Any], kind: str) -> None:
    fails(
        {"images": [entry]},
        f"config.toml: images[0]: a digest reference heals only through pull, not {kind}",
    )
    assert parse({"images": [{"match": entry["match"], "pull": True}]}).recipes[0].kind == "pull"


def test_proactive_settings_have_defaults() -> None:
    heal = parse({}).heal
    assert (heal.forget_after, heal.reconcile_interval, heal.background_parallel) == (
        30 * 86400.0,
        900.0,
        1,
    )
    assert heal.min_free == MinFree(percent=15.0)
    assert heal.reconcile_debounce == 5.0
    entry = {"match": "a:{g}", "command": ["x"]}
    assert parse({"images": [entry]}).recipes[0].proactive is False


def test_proactive_settings_are_read() -> None:
    config = parse(
        {
            "heal": {
                "forget_after": "7d",
                "reconcile_interval": "1m",
                "reconcile_debounce": "30s",
                "background_parallel": 2,
                "min_free": "10GiB",
            },
            "images": [{"match": "a:{g}", "command": ["x"], "proactive": True}],
        }
    )
    assert config.heal.forget_after == 7 * 86400.0
    assert config.heal.reconcile_interval == 60.0
    assert config.heal.reconcile_debounce == 30.0
    assert config.heal.background_parallel == 2
    assert config.heal.min_free == MinFree(size=10 * 2**30)
    assert config.recipes[0].proactive is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15%", MinFree(percent=15.0)),
        ("0%", MinFree(percent=0.0)),
        ("100%", MinFree(percent=100.0)),
        ("2.5%", MinFree(percent=2.5)),
        ("10GiB", MinFree(size=10 * 2**30)),
        ("500MB", MinFree(size=500 * 10**6)),
        ("1 TiB", MinFree(size=2**40)),
        ("1024B", MinFree(size=1024)),
        ("10gb", MinFree(size=10 * 10**9)),
    ],
)
def test_min_free_values(text: str, expected: MinFree) -> None:
    assert parse({"heal": {"min_free": text}}).heal.min_free == expected


@pytest.mark.parametrize("bad", ["", "15", "101%", "-1%", "10 gigs", "GiB", 15, True])
def test_bad_min_free(bad: object) -> None:
    hint = '(use a share like "15%" or a size like "10GiB")'
    message = f"config.toml: heal.min_free: bad size {bad!r} {hint}"
    fails({"heal": {"min_free": bad}}, message)


def test_min_free_is_met_by_share_or_size() -> None:
    assert MinFree(percent=15.0).met(total=100, free=15)
    assert not MinFree(percent=15.0).met(total=100, free=14)
    assert MinFree(size=10).met(total=100, free=10)
    assert not MinFree(size=10).met(total=10**9, free=9)
    assert (str(MinFree(percent=15.0)), str(MinFree(size=10 * 2**30))) == ("15%", "10GiB")


CACHE = {"cache": "registry.internal:5000/heal-cache"}


def test_cache_repository_and_cached_entries() -> None:
    config = parse(
        {
            "heal": {**CACHE, "cache_push": False},
            "images": [
                {"match": "app", "command": ["./b"], "cache": True, "inputs": ["src/**", "x"]}
            ],
        }
    )
    assert config.heal.cache == "registry.internal:5000/heal-cache"
    assert config.heal.cache_push is False
    assert (config.recipes[0].cache, config.recipes[0].inputs) == (True, ("src/**", "x"))
    assert parse({"heal": {"cache": "cache"}}).heal.cache == "docker.io/library/cache"
    assert Config().heal.cache is None and Config().heal.cache_push is True


@pytest.mark.parametrize(
    ("heal", "message"),
    [
        (
            {"background_parallel": 0},
            "heal.background_parallel: expected a whole number of at least 1, not 0",
        ),
        ({"forget_after": "1y"}, f"heal.forget_after: bad duration '1y' {HINT}"),
        ({"reconcile_interval": True}, f"heal.reconcile_interval: bad duration True {HINT}"),
    ],
)
def test_bad_proactive_settings(heal: dict[str, Any], message: str) -> None:
    fails({"heal": heal}, f"config.toml: {message}")


@pytest.mark.parametrize(
    ("where", "table"),
    [
        ("heal.engine_timeout", {"heal": {"engine_timeout": "0s"}}),
        ("heal.timeout", {"heal": {"timeout": 0}}),
        ("heal.reconcile_interval", {"heal": {"reconcile_interval": "0m"}}),
        ("heal.forget_after", {"heal": {"forget_after": "0d"}}),
        ("images[0].timeout", {"images": [{"match": "a", "pull": True, "timeout": "0s"}]}),
    ],
)
def test_durations_that_bound_or_pace_something_must_be_positive(
    where: str, table: dict[str, Any]
) -> None:
    """A zero timeout fails every call at once; a zero interval spins."""
    fails(table, f"config.toml: {where}: must be more than 0s")


def test_durations_where_zero_means_none_allow_it() -> None:
    heal = {"failure_cooldown": "0s", "reconcile_debounce": 0}
    config = parse({"shutdown_timeout": "0s", "heal": heal})
    assert (config.shutdown_timeout, config.heal.failure_cooldown) == (0.0, 0.0)
    assert config.heal.reconcile_debounce == 0.0


@pytest.mark.parametrize(
    ("value", "kind"),
    [(123456789, "an integer"), (1.5, "a number"), (True, "a boolean"), (["s"], "an array")],
)
def test_a_bad_env_value_is_named_by_its_type_never_shown(value: object, kind: str) -> None:
    """An env value is where a token goes; an error must not print it."""
    entry = {"match": "a", "pull": True, "env": {"TOKEN": value}}
    fails({"images": [entry]}, f"config.toml: images[0].env.TOKEN: expected a string, not {kind}")


def test_proactive_must_be_a_boolean() -> None:
    entry = {"match": "a", "command": ["x"], "proactive": "yes"}
    fails(
        {"images": [entry]}, "config.toml: images[0].proactive: expected true or false, not 'yes'"
    )


@pytest.mark.parametrize(
    ("heal", "message"),
    [
        (
            {"cache": "reg:5000/c:v1"},
            "give a repository without a tag or digest, not 'reg:5000/c:v1'",
        ),
        ({"cache": "reg:5000"}, "give a repository without a tag or digest, not 'reg:5000'"),
        ({"cache": "r/c@sha256:" + "0" * 64}, "give a repository without a tag or digest, not"),
        ({"cache": "Reg/UP"}, "'Reg/UP' is not a repository: repository name must be lowercase"),
        ({"cache": 5}, "expected a string, not 5"),
        ({"cache_push": "no"}, "expected true or false, not 'no'"),
    ],
)
def test_bad_cache_settings(heal: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"heal\.cache") as raised:
        parse({"heal": heal})
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("entry", "heal", "message"),
    [
        (
            {"command": ["x"], "cache": True},
            {},
            "images[0].cache: needs a repository in [heal] cache",
        ),
        (
            {"pull": True, "cache": True},
            CACHE,
            "only command and build entries are cached, not pull",
        ),
        (
            {"load": "a.tar", "cache": True},
            CACHE,
            "only command and build entries are cached, not load",
        ),
        ({"command": ["x"], "cache": 1}, CACHE, "images[0].cache: expected true or false, not 1"),
        ({"load": "a.tar", "inputs": ["x"]}, {}, "images[0].inputs: a load entry has no sources"),
        ({"command": ["x"], "inputs": ["../x"]}, {}, "images[0].inputs[0]: expected a glob inside"),
        (
            {"command": ["x"], "inputs": ["/etc/x"]},
            {},
            "images[0].inputs[0]: expected a glob inside",
        ),
        ({"command": ["x"], "inputs": [""]}, {}, "images[0].inputs[0]: expected a glob inside"),
        ({"command": ["x"], "inputs": ["{v}"]}, {}, "placeholder {v} in inputs[0] is not captured"),
    ],
)
def test_bad_cache_entries(entry: dict[str, object], heal: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"heal": heal, "images": [{"match": "app", **entry}]})
    assert message in str(raised.value)


def test_the_readme_many_hosts_example_is_a_valid_config() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("\n## Many hosts\n", 1)[1]
    block = section.split("```toml\n", 1)[1].split("\n```", 1)[0]
    config = parse_config(tomllib.loads(block), base_dir=Path("/etc/docker-heal-proxy"))
    assert config.heal.cache == "registry.internal:5000/heal-cache"
    assert config.recipes[0].cache and config.recipes[0].inputs


def test_security_trust_paths_are_folders_relative_to_the_config() -> None:
    config = parse_config(
        {"security": {"trust_paths": ["/srv/shared", "vendor"]}}, base_dir=Path("/etc/dhp")
    )
    assert config.security.trust_paths == (Path("/srv/shared"), Path("/etc/dhp/vendor"))
    assert parse_config({}, base_dir=Path("/etc/dhp")).security.trust_paths == ()


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"trust_paths": [""]}, "security.trust_paths[0]: must not be empty"),
        ({"trust_paths": "/srv"}, "security.trust_paths: expected a list of strings"),
        ({"trust_path": ["/srv"]}, "security: unknown key 'trust_path'"),
    ],
)
def test_security_mistakes_name_the_key(security: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"security": security}, base_dir=Path("/etc/dhp"))


def test_stale_mode_is_opt_in_per_entry() -> None:
    config = parse(
        {
            "heal": {"inputs_rescan": "1m", "inputs_debounce": "2s"},
            "images": [
                {"match": "a", "command": ["x"]},
                {
                    "match": "b",
                    "build": {"context": "."},
                    "inputs": ["src"],
                    "rebuild_when": "stale",
                },
                {"match": "c", "load": "c.tar", "rebuild_when": "stale", "on_stale": "strict"},
            ],
        }
    )
    assert [(r.rebuild_when, r.on_stale) for r in config.recipes] == [
        ("missing", "rebuild"),
        ("stale", "rebuild"),
        ("stale", "strict"),
    ]
    assert (config.heal.inputs_rescan, config.heal.inputs_debounce) == (60.0, 2.0)
    assert (HealSettings().inputs_rescan, HealSettings().inputs_debounce) == (300.0, 5.0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"pull": True, "rebuild_when": "stale"},
            'images[0].rebuild_when: a pull entry cannot be "stale"',
        ),
        (
            {"command": ["x"], "rebuild_when": "stale"},
            """images[0].rebuild_when: "stale" needs the command entry's sources: list them""",
        ),
        (
            {"build": {"context": "."}, "rebuild_when": "stale"},
            """images[0].rebuild_when: "stale" needs the build entry's sources: list them""",
        ),
        (
            {"command": ["x"], "rebuild_when": "changed"},
            """images[0].rebuild_when: expected one of "missing", "stale", not 'changed'""",
        ),
        (
            {"command": ["x"], "inputs": ["x"], "rebuild_when": "stale", "on_stale": 1},
            """images[0].on_stale: expected one of "rebuild", "strict", "background", not 1""",
        ),
        (
            {"command": ["x"], "on_stale": "strict"},
            'images[0].on_stale: applies only with rebuild_when = "stale"',
        ),
    ],
)
def test_stale_mode_needs_sources_to_compare(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"images": [{"match": "app", **entry}]})
    assert str(raised.value).startswith(f"config.toml: {message}")


def test_bad_inputs_rescan() -> None:
    message = "config.toml: heal.inputs_rescan: must be more than 0s"
    fails({"heal": {"inputs_rescan": "0s"}}, message)
