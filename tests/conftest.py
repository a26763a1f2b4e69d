"""Fixtures: a private dockerd per release and session, the proxy in front of it.

Daemon tests run once per release ``TEST_DOCKERD`` picks (see ``releases``):
the session's ``dockerd`` fixture is parametrized by release, so pytest runs
the tests of one daemon, stops it, then those of the next. They need root,
the release's ``dockerd``, a CLI of 23 or newer and its plugins (buildx,
compose v2; ``docker_cli``). Outside CI a machine without them skips those
tests; in CI (``CI=true``) that is a failure, because a green run that never
touched a daemon proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import releases
from releases import Unavailable
from support import (
    BUSYBOX,
    LONG_STREAM_SECONDS,
    Dockerd,
    LongStream,
    Proxy,
    SilentDaemon,
    User,
    docker,
    label_filter,
    log_problems,
    open_events_with_head,
    private_dockerd,
    require,
    start_proxy,
)

try:
    RELEASES = releases.picked()
except Unavailable as bad:
    raise pytest.UsageError(str(bad)) from bad


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``daemon`` exactly the tests that reach the ``dockerd`` fixture, so
    ``-m "not daemon"`` selects what runs without root."""
    for item in items:
        if "dockerd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.daemon)


def pytest_report_collectionfinish(items: list[pytest.Item]) -> list[str]:
    """The header: the docker CLI, and each daemon the selected tests run
    against by version and API version (checked against the daemon's own
    answer when it starts).
    Printed after collection, so a run without daemon tests fetches nothing,
    and at any verbosity, ``-q`` included."""
    used = {_release_of(item) for item in items} - {None}
    lines = []
    if used:
        try:
            cli, version = releases.cli()
            lines.append(f"docker CLI: {version} ({cli})")
        except Unavailable as error:
            lines.append(f"docker CLI: unavailable: {error}")
    for name in RELEASES:
        if name not in used:
            continue
        try:
            found = releases.release(name)
            lines.append(f"dockerd {name}: {found.version()} (API {found.api})")
        except (Unavailable, OSError, subprocess.CalledProcessError) as error:
            lines.append(f"dockerd {name}: unavailable: {error}")
    return lines


def _release_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("dockerd")


def need(what: str) -> NoReturn:
    """A daemon test cannot run here: skipped on a developer's machine, failed in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"daemon tests need {what} (CI must run them)")
    pytest.skip(f"daemon tests need {what}")


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[str]:
    """The socket path of a daemon that never answers."""
    path = str(tmp_path / "silent.sock")
    daemon = SilentDaemon(path)
    yield path
    daemon.close()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A short folder every user can enter (a socket path must be short, and a
    user's access to what is inside must not be blocked above it)."""
    path = Path(tempfile.mkdtemp(prefix="o-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_user() -> Iterator[Callable[..., User]]:
    """``make(*groups)``: a fresh user with a private group, in ``groups`` too; removed after."""
    if os.geteuid() != 0:
        pytest.skip("making users needs root")
    require("useradd")
    made: list[str] = []

    def make(*groups: str) -> User:
        name = f"dhpt{uuid.uuid4().hex[:8]}"
        extra = ["--groups", ",".join(groups)] if groups else []
        subprocess.run(
            ["useradd", "--no-create-home", "--user-group", *extra, name], check=True, timeout=30
        )
        made.append(name)
        account = pwd.getpwnam(name)
        return User(name, account.pw_uid, account.pw_gid)

    yield make
    for name in made:
        subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture(scope="session")
def docker_cli() -> Iterator[Path]:
    """The session's docker CLI, as a user of today has it: 23 or newer (see
    ``releases.cli``) first on ``PATH``, so every ``docker`` a test, compose v2 or
    a recipe runs is that one, and a ``DOCKER_CONFIG`` whose ``cli-plugins`` are
    buildx and compose v2. ``~/.docker`` and the machine's PATH stay untouched."""
    if os.geteuid() != 0:
        need("root")
    try:
        plugins = releases.plugins()
        cli, _ = releases.cli()
    except Unavailable as error:
        need(f"the docker CLI and its plugins: {error}")
    folder = Path(tempfile.mkdtemp(prefix="dhp-cli-"))
    (folder / "cli-plugins").symlink_to(plugins)
    (folder / "bin").mkdir()
    (folder / "bin/docker").symlink_to(cli)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_CONFIG", str(folder))
        patch.setenv("PATH", f"{folder / 'bin'}:{os.environ.get('PATH', os.defpath)}")
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", params=RELEASES)
def dockerd(request: pytest.FixtureRequest, docker_cli: Path) -> Iterator[Dockerd]:
    """The session's daemon of one release (the parameter)."""
    try:
        release = releases.release(request.param)
    except Unavailable as error:
        need(f"dockerd {request.param}: {error}")
    with private_dockerd("dhp-", release) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def busybox(dockerd: Dockerd) -> str:
    return BUSYBOX


def short_dir() -> Path:
    """A fresh folder with a short path: a Unix socket path must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="p-", dir="/tmp"))


@pytest.fixture(scope="session")
def proxy(dockerd: Dockerd) -> Iterator[Proxy]:
    """One shared pass-through proxy (no recipes) for tests that only read."""
    workdir = short_dir()
    p = start_proxy(workdir, dockerd.socket)
    yield p
    p.stop()
    assert log_problems(p.log()) == [], p.log()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def make_proxy_to() -> Iterator[Callable[..., Proxy]]:
    """Start proxies in front of an upstream of the test's choosing; stopped afterwards.

    ``make(upstream, config=None, **kwargs)`` passes ``kwargs`` to
    ``support.start_proxy``; the config text is written next to the socket, so
    relative paths in it resolve against that folder. Needs no daemon (a fake
    upstream that does not answer ``/_ping`` wants ``wait=False``).
    """
    started: list[tuple[Proxy, Path]] = []

    def make(upstream: str, config: str | None = None, **kwargs: object) -> Proxy:
        workdir = short_dir()
        p = start_proxy(workdir, upstream, config=config, **kwargs)  # type: ignore[arg-type]
        started.append((p, workdir))
        return p

    yield make
    for p, _ in started:
        p.stop()
    try:
        for p, _ in started:
            # Whatever a test did to it, the proxy must not have failed by a bug.
            assert log_problems(p.log()) == [], p.log()
    finally:
        for _, workdir in started:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def make_proxy(dockerd: Dockerd, make_proxy_to: Callable[..., Proxy]) -> Callable[..., Proxy]:
    """``make_proxy_to`` in front of the session's dockerd: ``make(config=None,
    daemon=None, **kwargs)``; ``daemon`` is another host's dockerd to front instead."""

    def make(config: str | None = None, daemon: Dockerd | None = None, **kwargs: object) -> Proxy:
        return make_proxy_to((daemon or dockerd).socket, config, **kwargs)

    return make


@pytest.fixture(scope="session")
def long_events(proxy: Proxy, dockerd: Dockerd) -> Iterator[LongStream]:
    """One events stream through the shared proxy, open for the whole session and
    checked at its end: after ``LONG_STREAM_SECONDS`` of silence (waiting out
    the rest, if the session was shorter) it must still deliver a new event.

    It filters on a label nothing else uses, so it stays silent: the longest
    possible idle period, ended only by the event the teardown causes.
    """
    label = f"dhp-long={uuid.uuid4().hex}"
    sock, head, rest = open_events_with_head(proxy.socket, label_filter(label))
    stream = LongStream(sock, time.monotonic(), label, head, rest)
    try:
        yield stream
        while (left := LONG_STREAM_SECONDS - (time.monotonic() - stream.opened)) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            assert data, "the proxy closed an idle events stream"
            stream.received += data
        name = f"dhp-long-{uuid.uuid4().hex[:8]}"
        docker(["create", "--label", label, "--name", name, BUSYBOX, "true"], env=dockerd.env)
        try:
            sock.settimeout(30)
            while name.encode() not in stream.received:
                data = sock.recv(65536)
                assert data, "the events stream ended instead of delivering the event"
                stream.received += data
        finally:
            docker(["rm", "-f", name], env=dockerd.env, check=False)
    finally:
        sock.close()


OPENED_LONG_STREAMS: set[str] = set()
"""The releases whose ``long_events`` ``open_long_streams_first`` has seen to."""


@pytest.fixture(autouse=True)
def open_long_streams_first(request: pytest.FixtureRequest) -> None:
    """Open ``long_events`` at the first daemon test of each release when a
    selected test of that release uses it, so its wait overlaps the release's
    tests instead of extending them. No test moves: ``-k`` and any order still
    work; a session that is shorter just waits at the end. If the daemon is
    missing or broken this does nothing: the error is kept for the tests that
    use it, and every other test still runs."""
    name = _release_of(request.node)
    if name is None or name in OPENED_LONG_STREAMS:
        return
    OPENED_LONG_STREAMS.add(name)
    if any(
        "long_events" in getattr(item, "fixturenames", ()) and _release_of(item) == name
        for item in request.session.items
    ):
        with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
            request.getfixturevalue("long_events")
