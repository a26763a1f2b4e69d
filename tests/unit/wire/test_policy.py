"""policy: shipped profiles row by row, extends, modes, old API versions, build options."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import pytest
from hostile import ROWS as ROUTE_ROWS
from hostile import pattern, plain, targets
from hypothesis import given, settings

from proxy.wire.bodychecks import CreateRules
from proxy.wire.policy import (
    FULL,
    SHIPPED,
    Policy,
    policies_from_config,
)
from proxy.wire.routes import DOCKERD_ROUTES, METHODS, locate, template

POLICIES = policies_from_config({})

# (method, target) -> the profiles that allow it. Every row is judged under
# every shipped profile: a profile not named must refuse it.
ROWS: list[tuple[str, str, set[str]]] = [
    ("GET", "/_ping", {"readonly", "runner", "autoheal", "watchtower"}),
    ("HEAD", "/v1.41/_ping", {"readonly", "runner", "autoheal", "watchtower"}),
    ("GET", "/v1.41/version", {"readonly", "runner", "watchtower"}),
    ("GET", "/v1.41/info", {"readonly", "runner"}),
    ("GET", "/v1.41/events?filters=%7B%7D", {"readonly", "runner"}),
    ("GET", "/v1.41/containers/json?all=1", {"readonly", "autoheal", "watchtower"}),
    ("GET", "/v1.41/containers/abc/json", {"readonly", "runner", "watchtower"}),
    ("GET", "/v1.41/images/json", {"readonly", "runner"}),
    ("GET", "/v1.41/images/127.0.0.1:5000/team/app:1/json", {"readonly", "runner", "watchtower"}),
    ("GET", "/v1.41/networks", {"readonly"}),
    ("GET", "/v1.41/networks/", {"readonly"}),
    ("GET", "/v1.41/networks/bridge", {"readonly"}),
    ("GET", "/v1.41/volumes", {"readonly"}),
    ("GET", "/v1.41/volumes/data", {"readonly"}),
    # What readonly refuses though it only reads: files, images, streams, processes.
    ("GET", "/v1.41/containers/abc/archive?path=/etc", set()),
    ("HEAD", "/v1.41/containers/abc/archive?path=/etc", set()),
    ("GET", "/v1.41/containers/abc/export", set()),
    ("GET", "/v1.41/images/app:1/get", set()),
    ("GET", "/v1.41/images/get?names=app", set()),
    ("GET", "/v1.41/containers/abc/attach/ws", set()),
    ("GET", "/v1.41/containers/abc/logs?stdout=1", {"runner"}),
    ("GET", "/v1.41/containers/abc/top", set()),
    ("GET", "/v1.41/containers/abc/stats", set()),
    ("GET", "/v1.41/swarm", set()),
    ("GET", "/v1.41/system/df", set()),
    ("GET", "/_heal/status", set()),
    ("POST", "/_heal/heal?image=app:1", set()),
    # The runner's containers.
    ("POST", "/v1.41/containers/create?name=job", {"runner", "watchtower"}),
    ("POST", "/v1.41/containers/abc/start", {"runner", "watchtower"}),
    ("POST", "/v1.41/containers/abc/attach?stream=1&stdin=1", {"runner"}),
    ("POST", "/v1.41/containers/abc/wait?condition=removed", {"runner"}),
    ("POST", "/v1.41/containers/abc/resize?h=24&w=80", {"runner"}),
    ("POST", "/v1.41/containers/abc/kill?signal=TERM", {"runner", "watchtower"}),
    ("POST", "/v1.41/containers/abc/stop", {"runner"}),
    ("DELETE", "/v1.41/containers/abc?force=1", {"runner", "watchtower"}),
    ("POST", "/v1.41/containers/abc/exec", {"runner", "watchtower"}),
    ("POST", "/v1.41/exec/e1/start", {"runner", "watchtower"}),
    ("GET", "/v1.41/exec/e1/json", {"runner", "watchtower"}),
    ("POST", "/v1.41/exec/e1/resize?h=1&w=1", {"runner"}),
    ("POST", "/v1.41/containers/abc/restart?t=10", {"autoheal"}),
    ("POST", "/v1.41/containers/abc/rename?name=x", {"watchtower"}),
    ("POST", "/v1.41/images/create?fromImage=app&tag=1", {"watchtower"}),
    ("DELETE", "/v1.41/images/sha256:abc", {"watchtower"}),
    ("POST", "/v1.41/networks/n1/connect", {"watchtower"}),
    ("POST", "/v1.41/networks/n1/disconnect", {"watchtower"}),
    # Refused by them all.
    ("PUT", "/v1.41/containers/abc/archive?path=/", set()),
    ("POST", "/v1.41/containers/abc/update", set()),
    ("POST", "/v1.41/containers/abc/pause", set()),
    ("POST", "/v1.41/commit?container=abc", set()),
    ("POST", "/v1.41/build", set()),
    ("POST", "/session", set()),
    ("POST", "/grpc", set()),
    ("POST", "/v1.41/networks/create", set()),
    ("POST", "/v1.41/images/load", set()),
    ("POST", "/v1.41/images/app/push", set()),
    ("POST", "/v1.41/plugins/pull?remote=x", set()),
    ("POST", "/v1.41/swarm/init", set()),
    ("GET", "/debug/pprof/", set()),
    ("OPTIONS", "/v1.41/containers/json", set()),
    ("POST", "/v1.41/auth", set()),
]


@pytest.mark.parametrize(("method", "target", "allowed"), ROWS)
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_profiles_row_by_row(
    name: str, method: str, target: str, allowed: set[str]
) -> None:
    verdict = POLICIES[name].judge(method, target)
    assert verdict.denied == (name not in allowed)
    assert verdict.forward == (name in allowed or name == "discovery")
    assert verdict.policy == name


def test_every_entry_of_a_shipped_profile_has_a_row() -> None:
    """A profile entry no row exercises would be a rule nobody checked."""
    judged = {
        POLICIES[name].judge(method, target).rule
        for method, target, allowed in ROWS
        for name in allowed
    }
    assert judged >= {entry for table in SHIPPED.values() for entry in table["allow"]}


def test_discovery_refuses_everything_and_lets_it_through() -> None:
    verdict = POLICIES["discovery"].judge("POST", "/v1.41/containers/create")
    assert verdict.mode == "audit"
    assert verdict.denied and verdict.forward
    assert verdict.route == "POST /containers/create"
    assert verdict.rule is None


README = (Path(__file__).parents[3] / "README.md").read_text()
POLICIES_SECTION = README.split("\n## Policies\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_readme_lists_each_profile_route_by_route(name: str) -> None:
    assert f"**`{name}`**" in POLICIES_SECTION
    listed = POLICIES_SECTION.split(f"<!-- profile {name} -->\n```text\n", 1)[1:]
    routes = listed[0].split("\n```", 1)[0].splitlines() if listed else []
    assert routes == SHIPPED[name]["allow"]


def test_the_readme_policy_example_is_a_valid_policy() -> None:
    block = POLICIES_SECTION.split("```toml\n", 1)[1].split("\n```", 1)[0]
    policies = policies_from_config(tomllib.loads(block)["policies"])
    assert policies["ci"].allow[-2:] == ("POST /build", "GET /images/{name}/history")


def test_full_is_no_policy() -> None:
    assert FULL not in POLICIES


def test_refusal_names_the_policy_and_the_route_template() -> None:
    verdict = POLICIES["runner"].judge("GET", "/v1.41/containers/0123abcd/archive?path=/")
    assert verdict.reason == ('policy "runner" does not allow GET /containers/{id}/archive')
    assert verdict.route == "GET /containers/{id}/archive"
    assert "0123abcd" not in verdict.reason + verdict.route


def test_a_path_dockerd_may_route_elsewhere_is_refused_as_other() -> None:
    # dockerd takes this to inspect a container named "a/archive"; the proxy
    # will not vouch for that.
    verdict = POLICIES["readonly"].judge("GET", "/v1.41/containers/a%2Farchive/json")
    assert verdict.denied
    assert verdict.route == "GET other"
    assert verdict.reason == (
        'policy "readonly" does not allow GET other (not a route it can be sure of)'
    )


def test_the_first_entry_that_fits_is_the_rule() -> None:
    policy = Policy("p", allow=("GET /_ping", "* /_ping"))
    assert policy.judge("GET", "/_ping").rule == "GET /_ping"
    assert policy.judge("HEAD", "/_ping").rule == "* /_ping"


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("1.23", True),
        ("1.12", True),
        ("1", True),
        (".", True),  # dockerd reads it as 0.0
        ("1.23.99", True),
        ("1.24", False),
        ("1.24.0", False),
        ("01.24", False),
        ("1.41", False),
        ("2", False),
    ],
)
def test_api_versions_below_1_24_are_refused(version: str, refused: bool) -> None:
    """Before 1.24, start takes a HostConfig: a runner could start it privileged."""
    verdict = POLICIES["runner"].judge("POST", f"/v{version}/containers/x/start")
    assert verdict.denied == refused
    assert verdict.rule == "POST /containers/{id}/start"
    if refused:
        assert verdict.reason == (
            f'policy "runner" does not allow API version {version} (1.24 is the oldest)'
        )


def test_old_api_versions_are_refused_in_every_mode() -> None:
    """A discovery run must not let a HostConfig start through either."""
    for name in ("discovery", "runner"):
        verdict = POLICIES[name].judge("POST", "/v1.23/containers/x/start")
        assert verdict.denied and verdict.mode == "enforce" and not verdict.forward
    assert POLICIES["discovery"].judge("POST", "/v1.24/containers/x/start").forward


def test_no_version_prefix_is_the_daemon_s_own_version() -> None:
    assert not POLICIES["runner"].judge("POST", "/containers/x/start").denied


BUILDER = Policy("builder", allow=("POST /build",))
TAR = [b"application/x-tar"]


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("t=app%3A1&networkmode=default", ""),
        ("networkmode=bridge", ""),
        ("networkmode=mynet", ""),
        ("networkmode=none", ""),
        ("cgroupparent=", ""),
        ("networkmode=host", "networkmode=host"),
        ("networkmode=HOST", "networkmode=HOST"),
        ("network%6Dode=host", "networkmode=host"),
        ("networkmode=h%6Fst", "networkmode=host"),
        ("networkmode=container%3Aabc", "networkmode=container:abc"),
        ("networkmode=default&networkmode=host", "networkmode=host"),
        ("cgroupparent=%2Fsystem.slice", "cgroupparent"),
        ("x=1;networkmode=host", "networkmode=host"),  # Go < 1.17 splits at ";" too
    ],
)
def test_build_options_need_the_policy_s_leave(query: str, refusal: str) -> None:
    verdict = BUILDER.judge("POST", f"/v1.41/build?{query}", TAR)
    assert verdict.denied == bool(refusal)
    if refusal:
        assert verdict.reason == f'policy "builder" does not allow POST /build with {refusal}'


def test_build_options_the_policy_allows() -> None:
    loose = Policy("b", allow=("POST /build",), build_host_network=True, build_cgroup_parent=True)
    assert not loose.judge("POST", "/build?networkmode=host&cgroupparent=x").denied
    network = Policy("b", allow=("POST /build",), build_host_network=True)
    assert not network.judge("POST", "/build?networkmode=host", TAR).denied
    assert network.judge("POST", "/build?cgroupparent=x", TAR).denied


@pytest.mark.parametrize(
    ("content_types", "denied"),
    [
        (None, True),  # not told: the body may hold networkmode=host
        ([b"application/x-www-form-urlencoded"], True),
        ([b"Multipart/Form-Data; boundary=x"], True),
        ([b"application/x-tar"], False),
        ([], False),
    ],
)
def test_a_build_whose_body_may_be_a_form_is_refused(
    content_types: list[bytes] | None, denied: bool
) -> None:
    """dockerd's FormValue reads a form body's parameters ahead of the query's."""
    assert BUILDER.judge("POST", "/v1.41/build", content_types).denied == denied


def test_extends_adds_entries_after_the_parent_s_and_inherits_the_rest() -> None:
    policies = policies_from_config(
        {
            "ci": {"extends": "runner", "allow": ["POST /build"], "build_host_network": True},
            "ci-watch": {"extends": "ci", "mode": "warn"},
            "quiet": {"extends": "discovery"},
        }
    )
    ci, watch = policies["ci"], policies["ci-watch"]
    assert ci.allow == (*POLICIES["runner"].allow, "POST /build")
    assert ci.mode == "enforce"
    assert watch.allow == ci.allow
    assert watch.mode == "warn" and watch.build_host_network
    assert policies["quiet"].mode == "audit"
    verdict = watch.judge("POST", "/v1.41/images/load")
    assert verdict.denied and verdict.forward


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"runner": {"allow": []}}, 'policies.runner: "runner" is shipped; name yours otherwise'),
        ({"full": {}}, 'policies.full: "full" is shipped'),
        ({"a b": {}}, 'policies."a b": a name is letters, digits, "_", "." and "-"'),
        ({"p": []}, "policies.p: must be a table"),
        ({"p": {"allows": []}}, "policies.p.allows: unknown key"),
        ({"p": {"allow": "GET /_ping"}}, 'policies.p.allow: must be a list of "METHOD /route"'),
        ({"p": {"allow": ["GET /nope"]}}, 'policies.p.allow: "GET /nope" is no route'),
        ({"p": {"allow": ["GET /containers/{id}/start"]}}, "policies.p.allow: "),
        ({"p": {"allow": ["GET  /_ping"]}}, "policies.p.allow: "),
        ({"p": {"allow": ["get /_ping"]}}, "policies.p.allow: "),
        ({"p": {"allow": ["GET /containers/abc/json"]}}, "policies.p.allow: "),
        ({"p": {"mode": "loud"}}, "policies.p.mode: must be one of enforce, warn, audit"),
        ({"p": {"build_host_network": "yes"}}, "policies.p.build_host_network: must be true"),
        ({"p": {"extends": "nope"}}, 'policies.p.extends: no policy "nope"'),
        ({"p": {"extends": "full"}}, 'policies.p.extends: "full" is no policy to build on'),
        ({"p": {"extends": 1}}, "policies.p.extends: must be a policy's name"),
        ({"p": {"extends": "p"}}, 'policies.p.extends: "p" leads back to "p"'),
        ({"p": {"extends": "q"}, "q": {"extends": "p"}}, 'extends: "p" leads back to "q"'),
    ],
)
def test_config_errors_name_the_key_in_one_line(tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        policies_from_config(tables)
    assert str(raised.value).startswith(message) or message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_wildcard_entries_cover_every_method_of_the_template() -> None:
    policy = Policy("p", allow=("* /containers/{id}/archive",))
    assert not policy.judge("GET", "/containers/a/archive").denied
    assert not policy.judge("HEAD", "/containers/a/archive").denied
    assert not policy.judge("PUT", "/containers/a/archive").denied
    assert policy.judge("POST", "/containers/a/archive").denied  # no such route


IDS = {
    "containers": "abc",
    "exec": "e1",
    "images": "127.0.0.1:5000/team/app:1",
    "networks": "n1",
    "volumes": "data",
    "plugins": "vieux/sshfs:latest",
    "distribution": "team/app:1",
    "checkpoints": "cp1",
    **{kind: "x1" for kind in ("services", "nodes", "tasks", "secrets", "configs")},
}
PLAINS = [plain(row, IDS, version) for row in ROUTE_ROWS for version in ("/v1.41", "")]


def mux(method: str, target: str) -> str:
    """dockerd's route for a target, modelled apart from ``routes``: its oracle here.

    Go's request URI: the path up to ``?`` (``#`` stays in it), an absolute
    form's path, escapes decoded (a bad one is a 400), an unclean path
    redirected; then gorilla/mux: the first route, in registration order,
    whose method and pattern fit, tried with and without a version prefix.
    """
    path = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", target.split("?", 1)[0])
    if not path.startswith("/") or re.search("%(?![0-9A-Fa-f]{2})", path):
        return "nowhere"
    path = unquote_to_bytes(path).decode("latin-1")
    if re.search(r"//|/\.\.?(/|$)", path):
        return "redirect"
    for row in DOCKERD_ROUTES:
        row_method = row.partition(" ")[0]
        if row_method not in (method, "*"):
            continue
        prefixes = [""] if row_method == "*" else ["", "/v[0-9.]+"]
        if any(re.fullmatch(prefix + pattern(row).pattern, path) for prefix in prefixes):
            return f"{method if method in METHODS else '*'} {template(row)}"
    return "nowhere"


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(targets(PLAINS))
def test_a_bent_target_routes_where_dockerd_takes_it_or_nowhere(
    drawn: tuple[str, str, str],
) -> None:
    """The route a policy judges is dockerd's route, or ``other``, which every policy refuses."""
    method, _, bent = drawn
    route = locate(method, bent).route
    assert route.endswith(" other") or route == mux(method, bent)
    for policy in POLICIES.values():
        assert policy.judge(method, bent, TAR).denied or route != f"{method} other"


@settings(max_examples=500, deadline=None, derandomize=True)
@given(targets(PLAINS))
def test_a_bend_keeping_the_path_keeps_the_route(drawn: tuple[str, str, str]) -> None:
    """An escaped character, an absolute form or a query trick changes nothing."""
    method, target, bent = drawn
    if unquote(bent.partition("?")[0].removeprefix("http://d")) == target.partition("?")[0]:
        assert locate(method, bent).route == locate(method, target).route


def test_a_create_table_is_read_over_the_one_it_extends() -> None:
    policies = policies_from_config(
        {
            "agents": {"extends": "runner", "create": {"binds_under": ["/srv/agents"]}},
            "gpu": {"extends": "agents", "create": {"devices": ["/dev/nvidia0"]}},
        }
    )
    assert policies["runner"].create == CreateRules()
    assert policies["agents"].create == CreateRules(binds_under=("/srv/agents",))
    assert policies["gpu"].create == CreateRules(
        binds_under=("/srv/agents",), devices=("/dev/nvidia0",)
    )
    with pytest.raises(ValueError, match=r"^policies\.x\.create\.privilegd: unknown key"):
        policies_from_config({"x": {"create": {"privilegd": True}}})
