"""The shapes of a recipe: what the config declares and what a heal runs.

Rules:
- Everything here is plain data. Parsing lives in ``config``, matching in
  ``patterns``, ordering in ``graph``, execution in ``runners``.
- A ``Recipe`` is what one ``[[images]]`` entry declares, placeholders and all.
  A ``ConcreteRecipe`` is that entry bound to one image reference: every
  ``{name}`` has been substituted, so the runner never sees a template.
- Paths are absolute by the time they get here; ``config`` resolves them
  against the config file's folder.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["command", "build", "pull", "load"]
RebuildWhen = Literal["missing", "stale"]
OnStale = Literal["rebuild", "strict", "background"]


@dataclass(frozen=True)
class BuildSpec:
    """A Dockerfile build through the Engine API (``POST /build``)."""

    context: Path
    dockerfile: str = "Dockerfile"
    """Relative to ``context``, as ``docker build -f`` takes it."""
    args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None


@dataclass(frozen=True)
class Recipe:
    """One ``[[images]]`` entry as written, with its placeholders intact."""

    index: int
    """Position in ``[[images]]``; errors name the entry as ``images[index]``."""
    match: str
    """The ``match`` string as written; also the bounded metrics label."""
    kind: Kind
    command: tuple[str, ...] = ()
    workdir: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    build: Mapping[str, object] | None = None
    """The raw ``build`` table (strings may hold placeholders)."""
    pull: str | None = None
    """The reference to pull; ``pull = true`` stores the match string itself."""
    load: str | None = None
    depends_on: tuple[str, ...] = ()
    timeout: float = 1800.0
    proactive: bool = False
    """Heal this entry's tags right after a prune, not only when asked for."""
    cache: bool = False
    """Whether heals of this entry go through ``[heal] cache`` first."""
    inputs: tuple[str, ...] = ()
    """Globs, relative to the workdir or build context, whose files go into the cache key."""
    rebuild_when: RebuildWhen = "missing"
    """``stale``: an image whose inputs or managed bases changed since it was built
    is rebuilt too, not only a missing one."""
    on_stale: OnStale = "rebuild"
    """What a create of a stale image does: wait for the rebuild (falling back to
    the old image if it fails), fail if it fails, or run the old image at once."""

    @property
    def name(self) -> str:
        """How logs and error messages name this entry."""
        return f"images[{self.index}] ({self.match})"


@dataclass(frozen=True)
class ConcreteRecipe:
    """A recipe bound to one normalised image reference, ready to run."""

    recipe: Recipe
    image: str
    """The normalised reference this heal must produce (``docker.io/library/x:tag``)."""
    kind: Kind
    command: tuple[str, ...] = ()
    workdir: Path = Path("/")
    env: Mapping[str, str] = field(default_factory=dict)
    build: BuildSpec | None = None
    pull: str | None = None
    load: Path | None = None
    depends_on: tuple[str, ...] = ()
    """Normalised references of the explicit dependencies."""
    timeout: float = 1800.0
    cache: bool = False
    inputs: tuple[str, ...] = ()

    @property
    def inputs_root(self) -> Path:
        """Where ``inputs`` globs start: the build context, else the workdir."""
        return self.build.context if self.build is not None else self.workdir

    @property
    def sources(self) -> tuple[Path, tuple[str, ...]]:
        """The folder and globs whose files an image of this recipe is made from:
        a ``load`` entry's archive, else its ``inputs``."""
        if self.load is not None:
            return self.load.parent, (glob.escape(self.load.name),)
        return self.inputs_root, self.inputs
