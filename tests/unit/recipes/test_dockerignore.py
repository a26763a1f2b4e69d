"""Pure checks of .dockerignore decisions against what docker decides."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.recipes.dockerignore import IgnoreRules, IgnoreSyntaxError, clean


def rules(text: str) -> IgnoreRules:
    return IgnoreRules.from_text(text)


@pytest.mark.parametrize(
    ("text", "excluded", "kept"),
    [
        ("*.log", ["a.log"], ["a/b.log", "a.txt", "log"]),
        ("**/*.log", ["a.log", "a/b.log", "a/b/c.log"], ["a.txt", "a/log"]),
        ("**/tmp", ["tmp", "a/tmp", "a/b/tmp", "a/tmp/x"], ["notmp", "a/notmp", "tmpx"]),
        ("**.log", ["a.log", "a/b.log"], ["a.txt"]),
        ("build/**", ["build/x", "build/a/b"], ["build", "builder/x"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b", "a/b/c"], ["a/xb", "b"]),
        ("**", ["a", "a/b", ".dockerignorex"], []),
        ("?.txt", ["a.txt"], ["ab.txt", "/.txt"]),
        ("[ab].txt", ["a.txt", "b.txt"], ["c.txt"]),
        ("[^a].txt", ["b.txt"], ["a.txt"]),
        ("a.b", ["a.b"], ["axb"]),
        ("a*(b)", ["a(b)", "ax(b)"], ["ab"]),
        ("f\\*", ["f*"], ["fx"]),
        ("secret", ["secret", "secret/a/b"], ["a/secret", "secrets"]),
        ("/abs/path/", ["abs/path", "abs/path/f"], ["abs"]),
        ("a//b/../c/./", ["a/c", "a/c/d"], ["a/b"]),
        ("  spaced  ", ["spaced"], []),
        ("# comment\n\n*.tmp", ["x.tmp"], ["# comment"]),
        (" # not a comment", ["# not a comment"], []),
        ("*.log\r\n!keep.log\r\n", ["a.log"], ["keep.log"]),
        ("\ufeff*.bom", ["x.bom"], []),
    ],
)
def test_patterns(text: str, excluded: list[str], kept: list[str]) -> None:
    parsed = rules(text)
    for path in excluded:
        assert parsed.excludes(path), path
    for path in kept:
        assert not parsed.excludes(path), path


def test_last_match_wins() -> None:
    parsed = rules("*.log\n!keep*.log\nkeep-not.log")
    assert parsed.excludes("a.log")
    assert not parsed.excludes("keep.log")
    assert not parsed.excludes("keep-1.log")
    assert parsed.excludes("keep-not.log")


def test_exception_under_excluded_directory() -> None:
    parsed = rules("docs\n!docs/README.md")
    assert parsed.excludes("docs")
    assert parsed.excludes("docs/other.md")
    assert not parsed.excludes("docs/README.md")


def test_directory_exclusion_reaches_everything_below() -> None:
    parsed = rules("node_modules\n!keep")
    assert parsed.excludes("node_modules/a/b/c.js")
    assert parsed.excludes("node_modules/keep")


def test_exception_of_a_parent_reincludes_the_children() -> None:
    parsed = rules("a/b\n!a")
    assert not parsed.excludes("a/b")
    assert not parsed.excludes("a/b/c")


def test_root_is_never_excluded() -> None:
    assert not rules("**\n*").excludes(".")


def test_kept_paths_survive_any_pattern() -> None:
    parsed = rules("*\n[x]").keeping(["Dockerfile", ".dockerignore", "[x]"])
    assert parsed.excludes("other")
    assert not parsed.excludes("Dockerfile")
    assert not parsed.excludes(".dockerignore")
    assert not parsed.excludes("[x]")


def test_prunes_only_when_nothing_below_can_come_back() -> None:
    assert rules("docs").prunes("docs")
    assert not rules("docs").prunes("src")
    assert not rules("docs\n!docs/keep").prunes("docs")
    assert rules("docs\n!src/keep").prunes("docs")
    assert not rules("docs\n!**/keep").prunes("docs")
    assert not rules("d*\n!d*/keep").prunes("docs")
    # Over-cautious, by design: the check stops at the first wildcard.
    assert not rules("docs\n!*.md").prunes("docs")
    assert not rules("sub").keeping(["sub/Dockerfile"]).prunes("sub")


@pytest.mark.parametrize("text", ["!", "  !  ", "[a", "a\\"])
def test_malformed_patterns_are_errors(text: str) -> None:
    with pytest.raises(IgnoreSyntaxError):
        rules(text)


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [("", "."), ("a//b", "a/b"), ("//a", "/a"), ("a/./b/../c/", "a/c"), ("../a", "../a")],
)
def test_clean_is_go_filepath_clean(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


_NAMES = st.text(alphabet="abc.", min_size=1, max_size=4).filter(lambda n: n not in {".", ".."})
_PATHS = st.lists(_NAMES, min_size=1, max_size=4).map("/".join)


@given(_PATHS, _PATHS)
def test_exclusion_is_inherited_by_descendants(directory: str, rest: str) -> None:
    parsed = rules(directory)
    assert parsed.excludes(directory)
    assert parsed.excludes(f"{directory}/{rest}")


@given(st.lists(_PATHS, max_size=4), _PATHS, _PATHS)
def test_pruning_never_hides_an_included_path(
    patterns: list[str], directory: str, rest: str
) -> None:
    text = "\n".join([directory, *(f"!{p}" for p in patterns)])
    parsed = rules(text)
    if parsed.prunes(directory):
        assert parsed.excludes(f"{directory}/{rest}")
