"""Fixtures: a private dockerd per session, the proxy in front of it.

Daemon tests need root and ``dockerd``. Outside CI a machine without them
skips those tests; in CI (``CI=true``) that is a failure, because a green run
that never touched a daemon proves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import BUSYBOX, Dockerd, Proxy, log_problems, private_dockerd, start_proxy

FIRST = "test_aa_"
"""Tests whose name starts so run before all others (they open long-lived streams)."""
LAST = "test_zz_"
"""Tests whose name starts so run after all others (long-lived stream checks)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: (not item.name.startswith(FIRST), item.name.startswith(LAST)))


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if shutil.which("dockerd") is None:
        missing.append("dockerd on PATH")
    if missing:
        reason = "daemon tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI must run them)")
        pytest.skip(reason)
    with private_dockerd("dhp-") as daemon:
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
def make_proxy(dockerd: Dockerd) -> Iterator[Callable[..., Proxy]]:
    """Start proxies of a test's own (a config, extra flags); stopped afterwards.

    ``make(config=None, daemon=None, **kwargs)`` passes ``kwargs`` to
    ``support.start_proxy``; the config text is written next to the socket, so
    relative paths in it resolve against that folder. ``daemon`` is another
    host's dockerd to front instead of the session's.
    """
    started: list[tuple[Proxy, Path]] = []

    def make(config: str | None = None, daemon: Dockerd | None = None, **kwargs: object) -> Proxy:
        workdir = short_dir()
        upstream = (daemon or dockerd).socket
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
