"""policy: shipped profiles row by row, extends, modes, old API versions, build options."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.wire.bodychecks import CreateRules
from proxy.wire.policy import FULL, SHIPPED, Policy, policies_from_config

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
