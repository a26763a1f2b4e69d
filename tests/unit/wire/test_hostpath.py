"""hostpath: symlinks followed as the kernel follows them, in a root given by readlink."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.hostpath import MAX_LINKS, Loop, resolve


@pytest.mark.parametrize(
    ("path", "table", "resolved"),
    [
        ("/srv/agents/x", {}, "/srv/agents/x"),
        ("/srv/agents/x", {"/srv/agents/x": "/etc"}, "/etc"),
        ("/srv/agents/x/passwd", {"/srv/agents/x": "/etc"}, "/etc/passwd"),
        ("/srv/agents/x", {"/srv/agents/x": "y"}, "/srv/agents/y"),
        ("/srv/agents/x", {"/srv/agents/x": "../../etc"}, "/etc"),
        ("/srv/agents/x/..", {"/srv/agents/x": "/etc/ssl"}, "/etc"),  # from where it led
        ("/srv/agents/x", {"/srv/agents/x": "/a", "/a": "/b/c", "/b": "/d"}, "/d/c"),
        ("/srv/agents/x/new/dir", {"/srv": "/data/srv"}, "/data/srv/agents/x/new/dir"),
        ("/", {}, "/"),
        ("/a", {"/a": "/"}, "/"),
    ],
)
def test_symlinks_are_followed(path: str, table: dict[str, str], resolved: str) -> None:
    assert resolve(path, table.get) == resolved


def test_a_loop_is_an_error() -> None:
    with pytest.raises(Loop):
        resolve("/a", {"/a": "/b", "/b": "/a"}.get)
    chain = {f"/l{n}": f"/l{n + 1}" for n in range(MAX_LINKS)}
    assert resolve("/l0", chain.get) == f"/l{MAX_LINKS}"
    chain[f"/l{MAX_LINKS}"] = "/end"
    with pytest.raises(Loop):
        resolve("/l0", chain.get)


def in_root(root: Path) -> Callable[[str], str | None]:
    """readlink of a path inside ``root``, as the wiring reads the daemon's root."""

    def readlink(path: str) -> str | None:
        try:
            return os.readlink(str(root) + path)
        except OSError:
            return None

    return readlink


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tree whose symlinks are relative: the kernel's walk here and
    ``resolve`` inside it must agree."""
    root = tmp_path_factory.mktemp("root")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "l").symlink_to("b")
    (root / "a" / "b" / "m").symlink_to("../../a")
    return root


@given(st.lists(st.sampled_from(["a", "b", "l", "m", "..", "x"]), min_size=1, max_size=6))
def test_the_same_as_the_kernel_in_a_real_tree(tree: Path, parts: list[str]) -> None:
    path = "/a/" + "/".join(parts)
    expected = os.path.realpath(str(tree) + path)
    if not expected.startswith(str(tree)):
        return  # climbed above the tree: the root stops resolve, not realpath
    assert str(tree) + resolve(path, in_root(tree)).rstrip("/") == expected
