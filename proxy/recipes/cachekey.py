"""Where a heal's image lives in the shared registry cache: the cache key.

A fleet of hosts shares one repository (``[heal] cache``). Whichever host
builds an image first pushes it under a tag that names exactly what was
built; every other host computes the same tag and pulls instead of building.

Rules:
- The tag is ``<readable prefix>-<16 hex>``. The prefix is the image's
  repository path and tag, so a person listing the repository can tell the
  entries apart; the hex is what makes the key exact.
- The hex is the start of a sha256 over, in order and NUL-separated: the
  normalised reference, the recipe definition, the inputs hash and the
  daemon's ``os/arch``. A changed recipe or changed sources therefore never
  pull an old build, and a mixed-architecture fleet never pulls the wrong
  platform.
- The recipe definition is the filled-in recipe as canonical JSON: what it
  runs and with what (command, workdir, env, build table, dependencies,
  input globs). The timeout is left out: it does not change the image.
- Without ``inputs`` the inputs hash is empty, and the key changes only when
  the definition does: the cache serves the old build until the recipe
  changes.
- A tag is at most 128 characters of ``[A-Za-z0-9_.-]``, starting with a
  letter, digit or ``_``. The prefix is cut to fit; the hex never is.

Pure: the inputs hash is computed elsewhere (``healing.inputs``, off the
event loop) and passed in as text, and so is the platform.
"""

from __future__ import annotations

import hashlib
import json
import re

from .recipe import ConcreteRecipe
from .reference import split

KEY_HEX = 16
_TAG_MAX = 128
_NOT_TAG_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def recipe_definition(recipe: ConcreteRecipe) -> str:
    """What the recipe runs, as canonical JSON: equal text means the same build."""
    build = recipe.build
    definition = {
        "kind": recipe.kind,
        "command": list(recipe.command),
        "workdir": str(recipe.workdir),
        "env": dict(recipe.env),
        "build": None
        if build is None
        else {
            "context": str(build.context),
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


def cache_tag(image: str, definition: str, inputs_hash: str, platform: str) -> str:
    """The tag under which ``image``, built by ``definition``, is cached."""
    material = "\0".join((image, definition, inputs_hash, platform)).encode()
    digest = hashlib.sha256(material).hexdigest()[:KEY_HEX]
    return f"{readable_prefix(image)}-{digest}"


def cache_reference(
    repository: str, recipe: ConcreteRecipe, inputs_hash: str, platform: str
) -> str:
    """The full reference (``repository:tag``) a heal of ``recipe`` pulls and pushes."""
    tag = cache_tag(recipe.image, recipe_definition(recipe), inputs_hash, platform)
    return f"{repository}:{tag}"
