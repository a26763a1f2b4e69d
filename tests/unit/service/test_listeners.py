"""listeners: the [[listeners]] entries read into settings, each mistake one line naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.service.listeners import ListenersError, ListenerSettings, listeners
from proxy.wire.peer import ClientRule

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
