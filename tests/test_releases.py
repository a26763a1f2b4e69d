"""Where the trixie packages come from: the machine's own apt sources, read as apt reads them."""

from __future__ import annotations

import pytest
from releases import Unavailable, find_mirror, is_buildx_default

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
