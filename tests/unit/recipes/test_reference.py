from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.recipes.reference import InvalidReference, Reference, full_name, normalize, parse

SHA = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo", Reference("docker.io", "library/foo", "latest", None)),
        ("user/foo:1", Reference("docker.io", "user/foo", "1", None)),
        ("index.docker.io/foo", Reference("docker.io", "library/foo", "latest", None)),
        ("docker.io/a/b/c", Reference("docker.io", "a/b/c", "latest", None)),
        ("localhost/foo", Reference("localhost", "foo", "latest", None)),
        ("127.0.0.1:1/ghost:1", Reference("127.0.0.1:1", "ghost", "1", None)),
        ("[::1]:5000/x", Reference("[::1]:5000", "x", "latest", None)),
        ("Registry/foo", Reference("Registry", "foo", "latest", None)),
        ("localhost:5000", Reference("docker.io", "library/localhost", "5000", None)),
        (f"repo@{SHA}", Reference("docker.io", "library/repo", None, SHA)),
        (f"repo:v2@{SHA}", Reference("docker.io", "library/repo", "v2", SHA)),
        (
            "a__b_c-d---e/f.g:Tag_1.x-y",
            Reference("docker.io", "a__b_c-d---e/f.g", "Tag_1.x-y", None),
        ),
    ],
)
def test_parse_fills_in_dockers_defaults(text: str, expected: Reference) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("foo", "docker.io/library/foo:latest", "foo:latest"),
        ("user/foo:1", "docker.io/user/foo:1", "user/foo:1"),
        ("library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
        ("127.0.0.1:1/ghost:1", "127.0.0.1:1/ghost:1", "127.0.0.1:1/ghost:1"),
        (f"repo@{SHA}", f"docker.io/library/repo@{SHA}", f"repo@{SHA}"),
        (f"repo:t@{SHA}", f"docker.io/library/repo:t@{SHA}", f"repo:t@{SHA}"),
    ],
)
def test_full_and_familiar_spellings(text: str, full: str, familiar: str) -> None:
    assert str(parse(text)) == normalize(text) == full
    assert parse(text).familiar == familiar


def test_spellings_of_one_image_normalise_alike() -> None:
    spellings = ["foo", "foo:latest", "library/foo", "docker.io/foo", "index.docker.io/library/foo"]
    assert {normalize(text) for text in spellings} == {"docker.io/library/foo:latest"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad repository name"),
        ("Foo", "lowercase"),
        ("example.com/Foo", "lowercase"),
        ("foo:", "bad tag"),
        ("foo:-x", "bad tag"),
        ("foo:" + "a" * 129, "bad tag"),
        ("foo@", "bad digest"),
        ("foo@sha256:abc", "64 hex digits, not 3"),
        ("foo@sha256:" + "A" * 64, "bad digest"),
        ("foo@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("foo//bar", "bad repository name"),
        ("-foo", "bad repository name"),
        ("foo__-bar", "bad repository name"),
        ("foo/", "bad repository name"),
        ("-bad-.com/foo", "bad registry"),
        ("x/" + "a" * 250, "longer than 255"),
        ("0123456789abcdef" * 4, "image ID"),
    ],
)
def test_invalid_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason):
        parse(text)


def test_limits_are_inclusive() -> None:
    assert parse("foo:" + "a" * 128).tag == "a" * 128
    assert len(parse("x/" + "a" * 243).name) == 255


def test_near_miss_names_fail_fast() -> None:
    # A backtracking separator rule would take ages here.
    with pytest.raises(InvalidReference):
        parse("a" * 5000 + "!")


def _components(separators: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda parts, seps: (
            parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=False))
        ),
        st.lists(
            st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6),
            min_size=1,
            max_size=3,
        ),
        st.lists(st.sampled_from(separators), min_size=2, max_size=2),
    )


# A '.' in the first component would make it a registry (see the test below).
_first = _components(["_", "__", "-", "--"])
_component = _components([".", "_", "__", "-", "--"])
_domain = st.sampled_from(
    ["", "docker.io/", "index.docker.io/", "localhost/", "localhost:5000/", "ghcr.io/", "a.b:1/"]
)
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.text("0123456789abcdef", min_size=64, max_size=64).map("sha256:".__add__)
_references = st.builds(
    lambda domain, path, tag, digest: (
        domain + "/".join(path) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ),
    _domain,
    st.builds(lambda first, rest: [first, *rest], _first, st.lists(_component, max_size=2)),
    st.none() | _tag,
    st.none() | _digest,
)


@given(_references)
def test_normalising_is_idempotent_and_lossless(text: str) -> None:
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert normalize(normalize(text)) == normalize(text)
    assert normalize(ref.familiar) == str(ref)


@given(_first, st.none() | _tag, st.none() | _digest)
def test_latest_is_assumed_only_without_a_digest(
    name: str, tag: str | None, digest: str | None
) -> None:
    text = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    assert parse(text).tag == (tag or (None if digest else "latest"))
    assert parse(text).digest == digest


def test_familiar_form_is_dockers_even_where_it_reads_back_differently() -> None:
    # Docker drops "docker.io/" whatever follows; a dotted first component
    # then reads back as a registry. Hub names cannot contain dots.
    assert parse("docker.io/a.b/c").familiar == "a.b/c:latest"


@given(st.text(max_size=40))
def test_any_text_parses_or_is_invalid(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert normalize(str(ref)) == str(ref)


def test_full_name_is_normalize_or_none() -> None:
    assert full_name("app") == "docker.io/library/app:latest"
    assert full_name("App") is None
    assert full_name("a" * 64) is None
