"""Where the trixie packages come from: the machine's own apt sources, read as apt reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import releases
from releases import CLI, Unavailable, cli, find_mirror, folder, is_buildx_default

SECURITY = """Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""
MAIN = """Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_the_main_archive_of_the_release_is_found_in_deb822_past_other_suites() -> None:
    found = find_mirror([("debian.sources", SECURITY + "\n" + MAIN)], "bookworm")
    assert found == (
        "http://mirror.example/debian",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    )


def test_one_line_entries_with_and_without_options() -> None:
    text = (
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\n"
    )
    assert find_mirror([("sources.list", text)], "bookworm") == (
        "http://a.example/debian",
        "/k.gpg",
    )
    plain = "deb http://b.example/debian bookworm main non-free\n"
    assert find_mirror([("x.list", plain)], "bookworm") == ("http://b.example/debian", None)


def test_disabled_stanzas_files_and_inline_keys() -> None:
    disabled = MAIN.replace("Types: deb\n", "Types: deb\nEnabled: no\n")
    inline = MAIN.replace(
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n",
    )
    sources = [
        ("debian.sources", disabled),
        ("other.sources.disabled-by-farm", MAIN),
        ("inline.sources", inline),
    ]
    assert find_mirror(sources, "bookworm") == ("http://mirror.example/debian", None)


def test_no_entry_for_the_release_says_so() -> None:
    with pytest.raises(Unavailable, match="no deb entry for suite 'bookworm'"):
        find_mirror([("debian.sources", SECURITY)], "bookworm")


@pytest.mark.parametrize(
    ("version", "buildx"),
    [("20.10.24+dfsg1", False), ("22.06.0-beta.0", False), ("23.0.0", True), ("28.2.2", True)],
)
def test_a_cli_of_23_or_newer_builds_with_buildx(version: str, buildx: bool) -> None:
    assert is_buildx_default(version) is buildx


def test_a_version_without_a_major_is_not_taken_for_new() -> None:
    assert not is_buildx_default("dev")


def fake_cli(path: Path, says: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache already filled, whose CLI is 26.1.5: nothing is fetched."""
    monkeypatch.setenv("TEST_DOCKERD_CACHE", str(tmp_path / "cache"))
    return fake_cli(folder(tmp_path / "cache") / CLI, "Docker version 26.1.5+dfsg1, build a")


@pytest.mark.parametrize(
    "says", ["Docker version 20.10.24+dfsg1, build 297e128", "docker: cannot execute", ""]
)
def test_the_fetched_cli_serves_when_paths_is_too_old_or_cannot_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fetched: Path, says: str
) -> None:
    fake_cli(tmp_path / "bin/docker", says)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cli() == (fetched, "26.1.5+dfsg1")


def test_paths_cli_serves_when_it_is_23_or_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fetched: Path
) -> None:
    on_path = fake_cli(tmp_path / "bin/docker", "Docker version 28.2.2, build e6534b4")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cli() == (on_path, "28.2.2")


def test_no_cli_on_path_is_the_fetched_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fetched: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli() == (fetched, "26.1.5+dfsg1")


def test_a_failed_fetch_is_tried_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[Path] = []

    def failing(work: Path) -> None:
        tries.append(work)
        raise Unavailable("no deb entry for suite 'trixie'")

    monkeypatch.setattr(releases, "_download_and_extract", failing)
    for _ in range(2):
        with pytest.raises(Unavailable, match="trixie"):
            releases.fetch(tmp_path)
    assert len(tries) == 1
