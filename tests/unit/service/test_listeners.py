"""listeners: the [[listeners]] entries read into settings, each mistake one line naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.service.listeners import ListenersError, ListenerSettings, listeners, warnings
from proxy.wire.peer import ClientRule
from proxy.wire.policy import policies_from_config

DEFAULT = ListenerSettings("default", "/run/dhp.sock", 0o660, "docker", "full")
UPSTREAM = "/var/run/docker.sock"
POLICIES = ("runner", "readonly")


def read(*entries: dict[str, Any]) -> tuple[ListenerSettings, ...]:
    return listeners(DEFAULT, entries, UPSTREAM, POLICIES, lambda group: group in {"ci"})


def ci(**changes: Any) -> dict[str, Any]:
    return {"name": "ci", "listen": "unix:///run/ci.sock", "policy": "runner", **changes}


def test_no_entries_is_the_default_listener_alone() -> None:
    assert read() == (DEFAULT,)


def test_an_entry_with_its_clients() -> None:
    clients = [{"uids": [1000], "policy": "readonly"}, {"gids": [50, 51], "policy": "full"}]
    found = read(ci(socket_mode="0666", socket_group="ci", clients=clients))
    assert found == (
        DEFAULT,
        ListenerSettings(
            "ci",
            "/run/ci.sock",
            0o666,
            "ci",
            "runner",
            (
                ClientRule(frozenset({1000}), frozenset(), "readonly"),
                ClientRule(frozenset(), frozenset({50, 51}), "full"),
            ),
        ),
    )


def test_a_listeners_socket_is_for_its_owner_alone_unless_told() -> None:
    (_, found) = read(ci())
    assert (found.socket_mode, found.socket_group) == (0o660, None)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"listen": "unix:///run/ci.sock", "policy": "runner"}], "listeners[0].name: missing"),
        ([ci(name="a:b")], "listeners[0].name: 'a:b' must be 1-64 letters"),
        ([ci(name="default")], "listeners[0].name: 'default' must be"),
        # Names systemd gives a socket the default listener (``full``) takes.
        ([ci(name="unknown")], "listeners[0].name: 'unknown' must be"),
        ([ci(name="docker-heal-proxy.socket")], "'docker-heal-proxy.socket' must be"),
        ([ci(port=1)], "listeners[0]: unknown key 'port'"),
        ([ci(listen="/run/ci.sock")], "listeners.ci.listen: must be a unix:///absolute/path URL"),
        ([ci(listen=None)], "listeners.ci.listen: missing"),
        ([ci(socket_mode=666)], 'listeners.ci.socket_mode: expected an octal string like "0660"'),
        ([ci(socket_group="docker")], "listeners.ci.socket_group: 'docker' is not a group"),
        ([ci(policy="runr")], "listeners.ci.policy: no policy 'runr' (known: full, readonly,"),
        ([ci(policy=None)], "listeners.ci.policy: missing"),
        ([ci(clients={"uids": [1]})], "listeners.ci.clients: expected [[listeners.clients]]"),
        ([ci(clients=[{"policy": "full"}])], "listeners.ci.clients[0]: names no caller"),
        ([ci(clients=[{"uids": ["bob"], "policy": "full"}])], "clients[0].uids: expected a list"),
        ([ci(clients=[{"gids": [-1], "policy": "full"}])], "clients[0].gids: expected a list"),
        ([ci(clients=[{"uids": [1], "policy": "x"}])], "clients[0].policy: no policy 'x'"),
        ([ci(clients=[{"uids": [1], "policy": "full", "a": 1}])], "unknown key 'a'"),
        ([ci(), ci(listen="unix:///run/b.sock")], "listeners.ci.name: is the name of another"),
        ([ci(listen="unix:///run/dhp.sock")], "/run/dhp.sock is default's socket too"),
        ([ci(listen=f"unix://{UPSTREAM}")], "is the daemon's socket (upstream)"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(entries: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ListenersError) as raised:
        read(*entries)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


SHIPPED = policies_from_config({"kit": {"extends": "runner", "allow": ["POST /session"]}})


def warned(*entries: dict[str, Any], root: dict[int, str] | None = None) -> list[str]:
    found = listeners(DEFAULT, entries, UPSTREAM, SHIPPED, lambda group: group in {"ci", "docker"})
    groups = {1000: frozenset({1000, 999}), 1001: frozenset({1001})}
    return warnings(found, entries, SHIPPED, root or {999: "docker"}, groups.get)


def test_check_warns_of_a_restricted_uid_in_the_docker_group() -> None:
    rules = [{"uids": [1000, 1001, 4242], "policy": "readonly"}, {"uids": [1000], "policy": "full"}]
    assert warned(ci(clients=rules)) == [
        "warning: listeners.ci.clients[0]: uid 1000 is in group docker, which reaches the "
        "daemon's socket directly; policy readonly does not bind it"
    ]


def test_check_warns_of_a_restricted_gid_or_socket_group_that_is_root_equivalent() -> None:
    rules = [{"gids": [999, 5], "policy": "runner"}]
    assert warned(ci(clients=rules, socket_group="docker")) == [
        "warning: listeners.ci: members of socket_group docker reach the daemon's socket "
        "directly; policy runner binds none of them",
        "warning: listeners.ci.clients[0]: gid 999 is group docker, whose members reach the "
        "daemon's socket directly; policy runner binds none of them",
        "warning: listeners.ci: socket_mode and socket_group apply only when the proxy binds "
        "the socket; one systemd passes (FileDescriptorName=ci) keeps its unit's SocketMode= "
        "and SocketGroup=",
    ]


def test_check_warns_of_a_policy_that_lets_buildkit_through() -> None:
    assert warned(ci()) == []
    assert warned(ci(policy="kit")) == [
        "warning: policy kit allows BuildKit (/session, /grpc): a build through it can run "
        "steps in the host's network (--network host travels inside /grpc)"
    ]
