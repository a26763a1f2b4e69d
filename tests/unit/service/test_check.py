from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from proxy.recipes.config import Config, parse_config
from proxy.recipes.dockerfile import from_images
from proxy.recipes.graph import named_by
from proxy.recipes.recipe import ConcreteRecipe, Recipe
from proxy.service.check import describe

DOCKERFILES = {
    "/cfg/app": "ARG V\nFROM base:${V}\n",
    "/cfg/fixed": "FROM base:1 AS b\nFROM b\nFROM unrelated\n",
}


def text(concrete: ConcreteRecipe) -> str | None:
    assert concrete.build is not None
    return DOCKERFILES.get(str(concrete.build.context))


read = named_by(text, from_images)


def no_cache(concrete: ConcreteRecipe) -> str:
    raise AssertionError(f"{concrete.image} is not cached")


def config() -> Config:
    return parse_config(
        {
            "heal": {"timeout": "1h"},
            "images": [
                {"match": "base:{t}", "pull": True},
                {"match": "app:{v}", "build": {"context": "app", "args": {"V": "{v}"}}},
                {"match": "fixed", "build": {"context": "fixed"}, "depends_on": ["app:7"]},
                {
                    "match": "tool:{t}",
                    "command": ["make", "tool", "T={t}", "HOME=${{HOME}}"],
                    "env": {"MSG": "hello {t}", "TOKEN": "s3cr3t-{t}"},
                    "timeout": 90,
                },
            ],
        },
        base_dir=Path("/cfg"),
    )


def test_lists_every_entry() -> None:
    text = describe(config(), None, read, no_cache)
    assert text.startswith("no config file: built-in defaults\n4 [[images]] entries")
    assert "images[1]  app:{v}\n  matches  docker.io/library/app:{v}\n" in text
    assert "  build    /cfg/app (-f Dockerfile, --build-arg V='{v}')" in text
    assert "  bases    found per image from the Dockerfile; see check IMAGE" in text
    assert "  depends on  app:7\n" in text
    assert "  bases       docker.io/library/base:1\n" in text
    assert "  command  make tool 'T={t}' 'HOME=${{HOME}}'\n  workdir  /cfg\n" in text
    assert "  env      MSG TOKEN\n  timeout  1m30s" in text


def test_env_values_are_never_shown() -> None:
    """The README promises recipes' env values are never shown; names are enough to check."""
    for image in (None, "tool:9"):
        text = describe(config(), image, read, no_cache)
        assert "s3cr3t" not in text
        assert "hello" not in text
    assert "  env      MSG TOKEN\n" in describe(config(), "tool:9", read, no_cache)


def test_without_entries() -> None:
    assert describe(Config(path=Path("/x.toml")), None, read, no_cache) == (
        "config /x.toml\nno [[images]] entries: nothing can be healed"
    )


def test_one_image_with_its_chain() -> None:
    text = describe(config(), "fixed", read, no_cache)
    assert text == "\n".join(
        [
            "no config file: built-in defaults",
            "docker.io/library/fixed:latest is matched by images[2] (fixed)",
            "",
            "recipe, filled in:",
            "  build       /cfg/fixed (-f Dockerfile)",
            "  depends on  docker.io/library/app:7",
            "  timeout     1h",
            "",
            "heal order, bases first (each is skipped if the image already exists):",
            "  1. docker.io/library/base:7  by images[0] (pull)",
            "  2. docker.io/library/app:7  by images[1] (build)",
            "  3. docker.io/library/base:1  by images[0] (pull)",
            "  4. docker.io/library/fixed:latest  by images[2] (build)",
            "",
            "proactive: no (images[2] (fixed) heals only when a create or pull asks)",
        ]
    )


def test_one_image_shows_captures_and_filled_command() -> None:
    text = describe(config(), "tool:2", read, no_cache)
    assert "  captures  t=2\n" in text
    assert "  command  make tool T=2 'HOME=${HOME}'\n" in text
    # What check prints is pasted into a shell: it must parse as one.
    (line,) = [line for line in text.splitlines() if line.startswith("  command  ")]
    command = line.removeprefix("  command  ")
    parsed = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    assert shlex.split(command) == ["make", "tool", "T=2", "HOME=${HOME}"]


def test_check_image_says_which_capture_kept_an_entry_from_matching() -> None:
    """``app:v..`` and ``app--rf`` are unmanaged: the daemon answers them."""
    guarded = parse_config(
        {
            "images": [
                {"match": "app:v{x}", "command": ["./build.sh", "{x}"]},
                {"match": "app-{x}:latest", "command": ["./build.sh", "{x}"]},
                {"match": "app{rest}:latest", "command": ["./any.sh"]},
            ]
        },
        base_dir=Path("/cfg"),
    )
    assert describe(guarded, "app:v..", read, no_cache).splitlines()[1:] == [
        "no recipe matches app:v.. (docker.io/library/app:v..)",
        "  images[0] (app:v{x}) does not match: {x} would capture '..', not a tag on its own "
        "(a capture is never '.' or '..' and never starts with '-' or '.')",
    ]
    text = describe(guarded, "app--rf", read, no_cache)
    assert "no recipe matches app--rf" in text
    assert "  images[1] (app-{x}:latest) does not match: {x} would capture '-rf'" in text
    assert "  images[2] (app{rest}:latest) does not match: {rest} would capture '--rf'" in text


def test_check_image_names_an_entry_above_the_match_that_a_capture_skipped() -> None:
    two = parse_config(
        {"images": [{"match": "app:v{x}", "pull": True}, {"match": "app:{t}", "pull": True}]},
        base_dir=Path("/cfg"),
    )
    assert describe(two, "app:v..", read, no_cache).splitlines()[1:3] == [
        "docker.io/library/app:v.. is matched by images[1] (app:{t})",
        "  captures  t=v..",
    ]
    assert "  images[0] (app:v{x}) does not match: {x} would capture '..'" in describe(
        two, "app:v..", read, no_cache
    )


def test_problems_are_reported_in_the_text() -> None:
    assert describe(config(), "nope", read, no_cache).endswith(
        "no recipe matches nope (docker.io/library/nope:latest)"
    )
    assert describe(config(), "Nope", read, no_cache).endswith(
        "Nope: cannot heal: invalid image reference 'Nope': repository name must be lowercase"
    )
    looping = Config(
        recipes=(
            Recipe(index=0, match="a", kind="pull", pull="a", depends_on=("b",)),
            Recipe(index=1, match="b", kind="pull", pull="b", depends_on=("a",)),
        )
    )
    assert describe(looping, "a", read, no_cache).endswith(
        "a: cannot heal: docker.io/library/a:latest -> "
        "docker.io/library/b:latest -> docker.io/library/a:latest: dependency cycle"
    )


def proactive_config() -> Config:
    return parse_config(
        {
            "images": [
                {"match": "base", "command": ["b"], "proactive": True},
                {"match": "agent:{g}", "command": ["a"], "proactive": True},
            ]
        },
        base_dir=Path("/cfg"),
    )


def test_check_image_says_whether_proactive_applies() -> None:
    assert describe(proactive_config(), "base", read, no_cache).endswith(
        "proactive: yes, docker.io/library/base:latest is healed right after a prune"
    )
    assert describe(proactive_config(), "agent:g1", read, no_cache).endswith(
        "proactive: yes, once the proxy has seen docker.io/library/agent:g1 exist (a heal, "
        "a create through the proxy, or present at start); forgotten after [heal] "
        "forget_after unused"
    )
    assert "  proactive  yes: healed right after a prune" in describe(
        proactive_config(), None, read, no_cache
    )


def test_an_unverifiable_min_free_is_a_warning_only_with_proactive_recipes() -> None:
    disk = "the daemon's root folder /d is not visible from here: [heal] min_free is ignored"
    assert f"\nwarning: {disk}\n" in describe(proactive_config(), None, read, no_cache, disk)
    assert "warning" not in describe(config(), None, read, no_cache, disk)


def test_a_cached_entry_shows_its_inputs_and_the_cache_reference_tried_first() -> None:
    cached = parse_config(
        {
            "heal": {"cache": "reg:5000/heal-cache"},
            "images": [
                {"match": "app:{v}", "command": ["./b"], "cache": True, "inputs": ["src/**"]}
            ],
        },
        base_dir=Path("/cfg"),
    )

    def reference(concrete: ConcreteRecipe) -> str:
        return f"reg:5000/heal-cache:key-of-{concrete.image.rsplit(':', 1)[1]}"

    listing = describe(cached, None, read, reference)
    assert "  inputs   src/**\n  cached   yes: tries [heal] cache before running\n" in listing
    text = describe(cached, "app:3", read, reference)
    assert "\n  cache key  reg:5000/heal-cache:key-of-3\n" in text


def test_a_stale_mode_entry_says_when_and_how_it_is_rebuilt() -> None:
    stale = parse_config(
        {
            "images": [
                {
                    "match": "agent",
                    "build": {"context": "agent"},
                    "inputs": ["src"],
                    "rebuild_when": "stale",
                    "on_stale": "strict",
                },
                {"match": "other", "command": ["x"]},
            ]
        },
        base_dir=Path("/cfg"),
    )
    text = describe(stale, None, lambda concrete: None, no_cache)
    assert "  rebuilt   when stale: its inputs or a managed base changed\n" in text
    assert "  on stale  rebuild first; if that fails, the create fails\n" in text
    assert text.count("when stale") == 1
