"""Where a heal's image lives in the shared registry cache: the cache key.

A fleet of hosts shares one repository (``[heal] cache``). Whichever host
builds an image first pushes it under a tag that names exactly what was
built; every other host computes the same tag and pulls instead of building.

Rules:
- The tag is ``<readable prefix>-<16 hex>``. The prefix is the image's
  repository path and tag, so a person listing the repository can tell the
  entries apart; the hex is what makes the key exact.
- The hex is the start of a sha256 over, NUL-separated: the normalised
  reference, the key material and the daemon's ``os/arch``. The material is
  canonical JSON of each recipe in the heal plan (its managed bases, deepest
  first, then the image's own): its image, definition and inputs hash. A
  changed recipe, changed sources or a changed base's recipe or sources
  therefore never pull an old build, and a mixed-architecture fleet never
  pulls the wrong platform.
- The recipe definition is the filled-in recipe as canonical JSON: what it
  runs and with what (command, workdir, env, build table, dependencies,
  input globs). The timeout is left out: it does not change the image.
- Paths (workdir, build context) count as written: relative to the config
  file's folder. A fleet shares one config, but each host may keep it in a
  folder of its own; absolute paths would give each host its own key.
- Without ``inputs`` the inputs hash is empty, and the key changes only when
  the definition does: the cache serves the old build until the recipe
  changes.
- A tag is at most 128 characters of ``[A-Za-z0-9_.-]``, starting with a
  letter, digit or ``_``. The prefix is cut to fit; the hex never is.

Theory of operation: ``recipe_definition`` turns one filled-in recipe into
canonical JSON; ``cache_reference`` lines the plan's recipes up with their
inputs hashes into the key material and ``cache_tag`` digests it with the
image and platform into a tag. Pure: the plan (``graph.heal_plan``) and the
inputs hashes (``healing.inputs``, off the event loop) are computed
elsewhere and passed in, and so is the platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .recipe import ConcreteRecipe
from .reference import split

KEY_HEX = 16
_TAG_MAX = 128
_NOT_TAG_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def recipe_definition(recipe: ConcreteRecipe, config_dir: Path | None = None) -> str:
    """What the recipe runs, as canonical JSON: equal text means the same build.

    Paths are relative to ``config_dir`` (None: as they are).
    """

    def written(path: Path) -> str:
        # Both paths are absolute, so relpath is string work, not a look at the disk.
        return str(path) if config_dir is None else os.path.relpath(path, config_dir)

    build = recipe.build
    definition = {
        "kind": recipe.kind,
        "command": list(recipe.command),
        "workdir": written(recipe.workdir),
        "env": dict(recipe.env),
        "build": None
        if build is None
        else {
            "context": written(build.context),
            "dockerfile": build.dockerfile,
            "args": dict(build.args),
            "target": build.target,
        },
        "depends_on": list(recipe.depends_on),
        "inputs": list(recipe.inputs),
    }
    return json.dumps(definition, sort_keys=True, separators=(",", ":"))


def readable_prefix(image: str) -> str:
    """The image's path and tag spelled as tag characters, e.g. ``team_app-v1``."""
    reference = split(image)
    text = f"{reference.path.removeprefix('library/')}-{reference.tag or 'latest'}"
    prefix = _NOT_TAG_RE.sub("_", text).lstrip(".-")
    return prefix[: _TAG_MAX - KEY_HEX - 1] or "image"


def cache_tag(image: str, material: str, platform: str) -> str:
    """The tag under which ``image``, built as ``material`` says, is cached."""
    digest = hashlib.sha256("\0".join((image, material, platform)).encode()).hexdigest()
    return f"{readable_prefix(image)}-{digest[:KEY_HEX]}"


def cache_reference(
    repository: str,
    plan: Sequence[ConcreteRecipe],
    inputs_hashes: Sequence[str],
    platform: str,
    config_dir: Path | None,
) -> str:
    """The full reference (``repository:tag``) a heal of ``plan[-1]`` pulls and pushes.

    ``plan`` is the heal plan, bases first and the image itself last;
    ``inputs_hashes`` has each one's inputs hash, in the same order.
    """
    material = json.dumps(
        [
            [recipe.image, recipe_definition(recipe, config_dir), digest]
            for recipe, digest in zip(plan, inputs_hashes, strict=True)
        ],
        separators=(",", ":"),
    )
    return f"{repository}:{cache_tag(plan[-1].image, material, platform)}"
