"""status: rendering a snapshot for a person, finding the socket, fetching over it.

The snapshots are built from the healer's own ``Progress.view`` and
``Result.view`` and sent through JSON, so a change of the wire format breaks
these tests rather than the command in the field.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import OneShotServer, http_response

from proxy.healing.core.healer import Progress, Result
from proxy.recipes.recipe import Recipe
from proxy.service import status
from proxy.wire.routes import STATUS_PATH


def snapshot() -> dict[str, Any]:
    running = Progress("127.0.0.1:1/app:2", "images[0] (127.0.0.1:1/app:*)", "127.0.0.1:1/app:*")
    running.phase = "running"
    running.started -= 12.3
    running.lines.extend(["Step 1/2 : FROM base", "Step 2/2 : RUN make"])
    running.log_path = Path("/var/lib/docker-heal-proxy/logs/app-2.log")
    running.cache = "reg:5000/heal-cache:app-2-0123456789abcdef"
    app = Recipe(index=0, match="127.0.0.1:1/app:*", kind="command", command=("make",))
    tool = Recipe(index=0, match="127.0.0.1:1/tool:1", kind="command", command=("make",))
    ok = Result(True, "127.0.0.1:1/app:*", "healed by images[0]", 1_700_000_000, 4.25, app)
    hit = Result(
        True,
        "127.0.0.1:1/app:*",
        "healed from the cache reg:5000/heal-cache:app-3-0123456789abcdef",
        1_700_000_000,
        0.5,
        app,
        source="cache",
        cache="reg:5000/heal-cache:app-3-0123456789abcdef",
    )
    bad = Result(
        False,
        "127.0.0.1:1/tool:1",
        "docker-heal-proxy: cannot heal 127.0.0.1:1/tool:1: exited with status 2\n  make: ***",
        1_700_000_100,
        1.0,
        tool,
    )
    data = {
        "recipes": [
            {"index": 0, "match": "127.0.0.1:1/app:*", "kind": "command"},
            {"index": 1, "match": "127.0.0.1:1/tool:1", "kind": "build"},
        ],
        "in_progress": [running.view()],
        "waiters": 3,
        "last_results": {
            "127.0.0.1:1/app:1": ok.view(),
            "127.0.0.1:1/app:3": hit.view(),
            "127.0.0.1:1/tool:1": bad.view(),
        },
    }
    return dict(json.loads(json.dumps(data)))


def test_render_shows_recipes_running_heals_and_last_results() -> None:
    text = status.render(snapshot())
    assert "Recipes (2):" in text
    assert "images[1]  build    127.0.0.1:1/tool:1" in text
    assert "Heals in progress (1), 3 requests waiting:" in text
    assert "127.0.0.1:1/app:2  running  12.3s  by images[0] (127.0.0.1:1/app:*)" in text
    assert "    | Step 2/2 : RUN make" in text
    assert "log: /var/lib/docker-heal-proxy/logs/app-2.log" in text
    assert "    cache: reg:5000/heal-cache:app-2-0123456789abcdef" in text
    assert (
        "127.0.0.1:1/app:1  success (recipe)  2023-11-14T22:13:20Z  4.2s  healed by images[0]"
        in text
    )
    assert (
        "127.0.0.1:1/app:3  success (cache)  2023-11-14T22:13:20Z  0.5s  "
        "healed from the cache reg:5000/heal-cache:app-3-0123456789abcdef" in text
    )
    # A multi-line failure keeps its first line on the result's row, the rest indented.
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("  127.0.0.1:1/tool:1  "))
    assert "failure" in lines[row] and "exited with status 2" in lines[row]
    assert lines[row + 1] == "        make: ***"


def test_render_of_an_idle_pass_through_proxy() -> None:
    text = status.render({"recipes": [], "in_progress": [], "waiters": 0, "last_results": {}})
    assert text == (
        "Recipes: none (pass-through only)\n\nHeals in progress: none\n\nLast results: none yet\n"
    )


@given(
    st.dictionaries(
        st.sampled_from(["recipes", "in_progress", "waiters", "last_results"]),
        st.one_of(st.none(), st.just([]), st.just({}), st.integers(0, 5)),
    )
)
def test_render_tolerates_missing_and_empty_keys(data: dict[str, Any]) -> None:
    if not isinstance(data.get("waiters", 0), int | None):
        return
    for key in ("recipes", "in_progress", "last_results"):
        if isinstance(data.get(key), int):
            data[key] = None
    assert status.render(data).endswith("\n")


def test_watch_frame_shows_only_running_heals() -> None:
    frame = status.render_watch(snapshot(), "12:00:00")
    assert frame.startswith("docker-heal-proxy status at 12:00:00")
    assert "Step 1/2 : FROM base" in frame
    assert "Recipes" not in frame and "Last results" not in frame


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "s.sock")


def test_fetch_reads_the_status_path(sock_path: str) -> None:
    body = json.dumps(snapshot()).encode()
    server = OneShotServer(sock_path, http_response("200 OK", body))
    try:
        assert status.fetch(sock_path) == snapshot()
    finally:
        server.close()
    assert server.requests[0].startswith(f"GET {STATUS_PATH} HTTP/1.1\r\n".encode())


def test_fetch_from_the_daemon_itself_says_so(sock_path: str) -> None:
    server = OneShotServer(
        sock_path, http_response("404 Not Found", b'{"message":"page not found"}')
    )
    try:
        with pytest.raises(status.StatusError, match="Docker daemon's socket rather than"):
            status.fetch(sock_path)
    finally:
        server.close()


def test_fetch_without_a_listener(sock_path: str) -> None:
    with pytest.raises(status.StatusError, match="cannot reach the proxy"):
        status.fetch(sock_path)


def test_watch_into_a_pipe_appends_frames_and_survives_errors(sock_path: str) -> None:
    out = io.StringIO()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        status.watch(sock_path, out, clock=lambda: "T", sleep=sleep)
    text = out.getvalue()
    assert status.CLEAR not in text  # not a terminal: no escape codes
    assert text.count("docker-heal-proxy status at T") == 2
    assert text.count("cannot reach the proxy") == 2
    assert naps == [1.0, 1.0]


def test_watch_redraws_in_place_on_a_terminal(sock_path: str) -> None:
    body = json.dumps(snapshot()).encode()
    server = OneShotServer(sock_path, http_response("200 OK", body))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            status.watch(sock_path, out, clock=lambda: time.strftime("%H"), sleep=stop)
    finally:
        server.close()
    assert out.getvalue().startswith(status.CLEAR + "docker-heal-proxy status at ")
    assert "RUN make" in out.getvalue()


def test_render_shows_proactive_state_when_enabled() -> None:
    data = {
        **snapshot(),
        "proactive": {
            "enabled": True,
            "remembered": ["127.0.0.1:1/app:1", "127.0.0.1:1/app:2"],
            "last_reconcile": "2026-11-30T00:00:00Z",
            "reconciles": 3,
            "events": {"up": False, "detail": "reconnecting: refused"},
            "queued": ["127.0.0.1:1/app:2"],
            "blocked": {"min_free": "/d has 1.0GiB free (3%), less than [heal] min_free = 15%"},
        },
    }
    text = status.render(data)
    assert text.endswith(
        "\n".join(
            [
                "",
                "Proactive heals: last reconcile 2026-11-30T00:00:00Z, "
                "image events DOWN (reconnecting: refused)",
                "  blocked by min_free: /d has 1.0GiB free (3%), less than [heal] min_free = 15%",
                "  queued (1): 127.0.0.1:1/app:2",
                "  remembered tags (2):",
                "    127.0.0.1:1/app:1",
                "    127.0.0.1:1/app:2",
                "",
            ]
        )
    )
    data["proactive"]["enabled"] = False
    assert "Proactive" not in status.render(data)


def test_render_lists_cache_pushes_under_way() -> None:
    snapshot = {"in_progress": [], "cache_pushes": ["reg:5000/heal-cache:app-1-0123"]}
    assert "Cache pushes under way: reg:5000/heal-cache:app-1-0123" in status.render(snapshot)


def test_render_lists_stale_tags_adoptions_and_failed_rebuilds() -> None:
    view = {
        "enabled": True,
        "watched": ["a:1", "b:1", "c:1"],
        "stale": {"a:1": "src/msg changed", "c:1": "built before x last changed (adopted stale)"},
        "adopted": {"b:1": "fresh", "c:1": "stale: built before x last changed (adopted stale)"},
        "failed_rebuilds": {"a:1": "docker-heal-proxy: cannot heal a:1: exit 3\nmore"},
        "inputs_problems": {},
    }
    text = status.render({"stale": view})
    assert "Stale mode: 3 tags watched, 2 stale\n" in text
    assert "  stale (rebuilt by the next create):\n    a:1  src/msg changed\n" in text
    assert "    b:1  fresh\n" in text
    assert "  rebuilds that failed (the old image runs):\n    a:1  docker-heal-proxy" in text
    assert "more" not in text and "cannot be hashed" not in text
    assert "Stale mode" not in status.render({"stale": {"enabled": False}})


def test_escape_sequences_from_a_build_are_shown_not_sent_to_the_terminal() -> None:
    """A build's output, its tag and its failure reach whoever runs ``status``:
    an escape sequence in them must arrive as text, and a newline must not make
    a line the reader would take for the proxy's own."""
    data = snapshot()
    data["in_progress"][0]["last_lines"] = ["\x1b]0;owned\x07\x1b[2JStep 3/3", "x\rok"]
    data["in_progress"][0]["image"] = "app:1\nHeals in progress: none"
    data["last_results"]["127.0.0.1:1/tool:1"]["message"] = "exit 2\n\x9b2J\x1b[1A"
    for text in (status.render(data), status.render_watch(data, "T")):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert "    | ^[]0;owned^G^[[2JStep 3/3" in text
        assert "    | x^Mok" in text
        assert "  app:1^JHeals in progress: none  running" in text
        assert "\nHeals in progress: none" not in text
    assert "      <U+009B>2J^[[1A" in status.render(data)
