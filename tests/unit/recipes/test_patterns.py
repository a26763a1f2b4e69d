from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.recipes.patterns import (
    Pattern,
    escape,
    find_recipe,
    instantiate,
    placeholders_in,
    substitute,
)
from proxy.recipes.recipe import BuildSpec, Recipe
from proxy.recipes.reference import InvalidReference, normalize

SHA = "sha256:" + "ab" * 32


def recipe(match: str, index: int = 0, **fields: object) -> Recipe:
    fields.setdefault("kind", "command")
    return Recipe(index=index, match=match, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "normalized"),
    [
        ("foo", "docker.io/library/foo:latest"),
        ("app:{t}", "docker.io/library/app:{t}"),
        (
            "nanoclaw-agent-v2-1a2b3c4d:{group}",
            "docker.io/library/nanoclaw-agent-v2-1a2b3c4d:{group}",
        ),
        ("registry.example.com/team/worker:{tag}", "registry.example.com/team/worker:{tag}"),
        ("repo@{digest}", "docker.io/library/repo@{digest}"),
        ("{user}/app", "docker.io/{user}/app:latest"),
        ("docker.io/{name}", "docker.io/library/{name}:latest"),
        ("index.docker.io/{Name}:{Name}", "docker.io/library/{Name}:{Name}"),
        ("localhost:{port}/x", "localhost:{port}/x:latest"),
        ("{env}.example.com/x:1", "{env}.example.com/x:1"),
    ],
)
def test_patterns_normalise_like_references(match: str, normalized: str) -> None:
    assert Pattern.compile(match).normalized == normalized


@pytest.mark.parametrize(
    ("match", "reference", "captures"),
    [
        ("foo", "foo", {}),
        ("foo", "docker.io/library/foo:latest", {}),
        ("foo", "foo:1", None),
        ("foo", f"foo@{SHA}", None),
        ("app:{t}", "app:anything", {"t": "anything"}),
        ("app:{t}", "docker.io/library/app:V1.2_x-y", {"t": "V1.2_x-y"}),
        ("app:{t}", "other/app:1", None),
        ("app-{v}:latest", "app-1.2", {"v": "1.2"}),
        ("app-{v}:latest", "app-1/x", None),
        (
            "registry.example.com/team/worker:{tag}",
            "registry.example.com/team/worker:7",
            {"tag": "7"},
        ),
        ("repo@{digest}", f"repo@{SHA}", {"digest": SHA}),
        ("repo@{digest}", f"repo:1@{SHA}", None),
        ("{a}/x:{a}", "same/x:same", {"a": "same"}),
        ("{a}/x:{a}", "same/x:other", None),
        ("app:{t}", "App:1", None),
        ("app:{t}", "", None),
    ],
)
def test_match(match: str, reference: str, captures: dict[str, str] | None) -> None:
    assert Pattern.compile(match).match(reference) == captures


@pytest.mark.parametrize(
    ("match", "reason"),
    [
        ("app:{a}{b}", "side by side"),
        ("repo@sha256:{hex}", "whole digest"),
        ("repo@{d}:1", "whole digest"),
        ("App:{t}", "must be lowercase"),
        ("app:{t", "stray '{'"),
        ("app:t}", "stray '}'"),
        ("app:{{t}}", "braces cannot appear"),
        ("app:{1t}", "stray '{'"),
        ("app:.{t}", "bad tag"),
    ],
)
def test_malformed_patterns_say_why(match: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Pattern.compile(match)


def test_placeholders_and_cache() -> None:
    pattern = Pattern.compile("{a}/x:{b}")
    assert pattern.placeholders == {"a", "b"}
    assert pattern.is_template
    assert not Pattern.compile("x").is_template
    assert Pattern.compile("{a}/x:{b}") is pattern


def test_templates_escape_braces() -> None:
    assert placeholders_in("cd ${{HOME}} && make {target}") == {"target"}
    assert (
        substitute("cd ${{HOME}} && make {target}", {"target": "all"}) == "cd ${HOME} && make all"
    )
    with pytest.raises(ValueError, match="stray"):
        placeholders_in("awk '{print $1}'")


@given(st.text())
def test_escaped_text_substitutes_to_itself(text: str) -> None:
    assert placeholders_in(escape(text)) == set()
    assert substitute(escape(text), {}) == text


# Bounded: a repository name over 255 characters is no reference at all (see below).
_value = st.from_regex(r"\A[a-z0-9]+(?:[._-][a-z0-9]+)*\Z").filter(lambda v: len(v) <= 64)
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\Z")


@given(_value, _tag)
def test_captures_fill_back_into_the_reference(name: str, tag: str) -> None:
    pattern = Pattern.compile("team/{name}:{tag}")
    reference = f"team/{name}:{tag}"
    captures = pattern.match(reference)
    assert captures == {"name": name, "tag": tag}
    assert substitute(pattern.normalized, captures) == normalize(reference)


def test_a_name_too_long_for_docker_matches_nothing() -> None:
    assert Pattern.compile("team/{name}:{tag}").match(f"team/{'0' * 243}:0") is None


@given(st.text(max_size=60))
def test_match_never_raises(reference: str) -> None:
    for match in ("app:{t}", "{a}/{b}:{a}", "repo@{d}", "foo"):
        Pattern.compile(match).match(reference)


def test_first_matching_recipe_wins() -> None:
    recipes = [recipe("app:1", 0), recipe("app:{t}", 1), recipe("app:{t}", 2)]
    assert find_recipe(recipes, "app:1") == (recipes[0], {})
    assert find_recipe(recipes, "docker.io/library/app:2") == (recipes[1], {"t": "2"})
    assert find_recipe(recipes, "other") is None
    assert find_recipe(recipes, "NOT VALID") is None


def test_instantiate_fills_every_field() -> None:
    template = recipe(
        "app-{g}:{t}",
        kind="build",
        command=("make", "{g}-{t}"),
        workdir="/src/{g}",
        env={"G": "{g}", "LITERAL": "${{X}}"},
        build={
            "context": "/src/{g}",
            "dockerfile": "Dockerfile.{t}",
            "args": {"T": "{t}"},
            "target": "stage-{g}",
        },
        depends_on=("base-{g}", "tools"),
        timeout=5.0,
    )
    concrete = instantiate(template, "app-x:1", {"g": "x", "t": "1"})
    assert concrete.image == "docker.io/library/app-x:1"
    assert concrete.command == ("make", "x-1")
    assert concrete.workdir == Path("/src/x")
    assert concrete.env == {"G": "x", "LITERAL": "${X}"}
    assert concrete.build == BuildSpec(Path("/src/x"), "Dockerfile.1", {"T": "1"}, "stage-x")
    assert concrete.depends_on == (
        "docker.io/library/base-x:latest",
        "docker.io/library/tools:latest",
    )
    assert (concrete.recipe, concrete.kind, concrete.timeout) == (template, "build", 5.0)


def test_instantiate_build_defaults_and_load() -> None:
    built = instantiate(recipe("a", kind="build", build={"context": "/c"}), "a", {})
    assert built.build == BuildSpec(Path("/c"))
    loaded = instantiate(recipe("b:{t}", kind="load", load="/tars/b-{t}.tar"), "b:2", {"t": "2"})
    assert loaded.load == Path("/tars/b-2.tar")


def test_pull_true_pulls_the_reference_itself() -> None:
    # Config stores ``pull = true`` as the match string. Filling "{user}/app"
    # with "my.user" would make "my.user" a registry; the reference is right.
    entry = recipe("{user}/app", kind="pull", pull="{user}/app")
    reference = "docker.io/my.user/app"
    captures = Pattern.compile(entry.match).match(reference)
    assert captures == {"user": "my.user"}
    assert instantiate(entry, reference, captures).pull == "docker.io/my.user/app:latest"


def test_pull_template_is_filled_and_normalised() -> None:
    mirror = recipe("app:{t}", kind="pull", pull="mirror.example.com/app:{t}")
    assert instantiate(mirror, "app:3", {"t": "3"}).pull == "mirror.example.com/app:3"


def test_a_capture_that_makes_a_bad_reference_raises() -> None:
    bad = recipe("app:{t}", kind="pull", pull="app-{t}")
    with pytest.raises(InvalidReference):
        instantiate(bad, "app:UPPER", {"t": "UPPER"})


@pytest.mark.parametrize(
    ("match", "reference", "said"),
    [
        ("app:v{x}", "app:v..", "{x} would capture '..', not a tag on its own"),
        ("app-{x}:latest", "app--rf:latest", "{x} would capture '-rf', not a repository path"),
        ("app:{x}", "app:.x", None),  # not a tag dockerd takes: no reference at all
        ("app:v{x}", "app:v.x", "{x} would capture '.x'"),
        ("app-{x}:latest", "app-_x", None),  # not a name dockerd takes either
        ("team/{x}-cache:1", "team/a--cache:1", "{x} would capture 'a-'"),
    ],
)
def test_a_capture_that_is_not_valid_on_its_own_is_no_match(
    match: str, reference: str, said: str | None
) -> None:
    """Captures go into command, workdir, build.context and load: '..' would climb
    out of a folder and '-rf' would be an option. Such a reference is unmanaged."""
    pattern = Pattern.compile(match)
    assert pattern.match(reference) is None
    refusal = pattern.refusal(reference)
    assert refusal is None if said is None else refusal is not None and said in refusal


def test_a_valid_split_is_found_when_a_greedy_one_is_not() -> None:
    """``a-b--c``: ``{x}=a-b-`` would not do, ``{x}=a`` does."""
    assert Pattern.compile("{x}-{y}:1").match("a-b--c:1") == {"x": "a", "y": "b--c"}
    assert Pattern.compile("{x}-{y}:1").refusal("a-b--c:1") is None


def test_captures_hold_to_the_grammar_of_their_field() -> None:
    host = Pattern.compile("registry.{env}.example.com/app:{t}")
    assert host.match("registry.prod-1.example.com/app:_1") == {"env": "prod-1", "t": "_1"}
    assert host.match("registry.-x.example.com/app:1") is None
    assert Pattern.compile("localhost:{port}/app").match("localhost:5000/app") == {"port": "5000"}


TEMPLATES = ("app:{x}", "app:v{x}", "app-{x}:latest", "{x}/app:1", "team/{x}.d:1", "a.{x}.io/b")
FOLDER_TEMPLATES = ("{x}", "{x}.d", ".{x}", "v{x}", "{x}/sub", "a-{x}/..{x}")


@given(
    st.sampled_from(TEMPLATES),
    st.text(alphabet="abc019._-", min_size=1, max_size=12),
    st.sampled_from(FOLDER_TEMPLATES),
)
@example("app:v{x}", "..", "{x}")
@example("app:{x}", "a..", "{x}/sub")
@example("{x}/app:1", "-rf", "{x}")
def test_no_accepted_capture_leaves_the_folder_its_template_names(
    match: str, value: str, folder: str
) -> None:
    """Whatever a client asks for, a capture the pattern accepts, filled into a
    path under /srv/images, names something inside /srv/images."""
    captures = Pattern.compile(match).match(match.replace("{x}", value))
    if captures is None:
        return
    filled = Path("/srv/images") / substitute(folder, captures)
    assert os.path.normpath(filled).startswith("/srv/images/"), (captures, filled)
    assert not any(part.startswith("-") for part in filled.parts)
