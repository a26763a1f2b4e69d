"""The concrete tags of pattern recipes the proxy has seen exist, kept in ``state_dir``.

A static ``match`` names its one tag, but ``app:{group}`` names none: after a
prune nothing in the config says which groups existed. This memory does.

Rules:
- Only evidence that a tag existed puts it here: a heal that produced it, a
  create through the proxy that the daemon accepted, or the image listed at
  start. A create of a tag that never existed (a typo) fails and is never
  remembered, so a prune cannot make the proxy build typos.
- Only tags a template recipe matches are kept; a static ``match`` is known
  from the config and needs no memory.
- Each tag carries when it was last used (wall-clock seconds). Only a use
  by someone refreshes it: a create through the proxy, a pull or an
  on-demand heal. A proactive heal, or the tag found present at start, only
  adds a tag not known yet (``refresh=False``); otherwise a host that prunes
  nightly would rebuild a group nobody runs every night, forever. A tag unused
  for ``forget_after`` is dropped, and the list is capped at ``CAP`` tags,
  the least recently used going first.
- It is saved as one JSON object (``dumps``); ``memoryfile`` writes and
  reads it.

Theory of operation: pure (no clock, no disk: the time is passed in), so
the rules are tested without I/O; the caller decides when a dirty memory is
written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...recipes.patterns import Pattern, find_recipe
from ...recipes.recipe import Recipe

CAP = 1000


def worth_remembering(recipes: Sequence[Recipe], image: str) -> bool:
    """Is ``image`` (normalised) matched first by a template recipe?"""
    found = find_recipe(recipes, image)
    return found is not None and Pattern.compile(found[0].match).is_template


@dataclass
class TagMemory:
    """Tags and when each was last used; ``dirty`` until saved."""

    last_used: dict[str, float] = field(default_factory=dict)
    cap: int = CAP
    dirty: bool = False

    def remember(self, image: str, now: float, *, refresh: bool = True) -> None:
        """Note that ``image`` exists; ``refresh`` says someone used it ``now``."""
        if not refresh and image in self.last_used:
            return
        self.last_used.pop(image, None)  # re-inserted last: dicts keep order of use
        self.last_used[image] = now
        while len(self.last_used) > self.cap:
            del self.last_used[next(iter(self.last_used))]
        self.dirty = True

    def forget_stale(self, now: float, forget_after: float) -> list[str]:
        """Drop tags unused for ``forget_after`` seconds; return them."""
        stale = [image for image, used in self.last_used.items() if now - used > forget_after]
        for image in stale:
            del self.last_used[image]
        self.dirty = self.dirty or bool(stale)
        return stale

    def tags(self) -> list[str]:
        return sorted(self.last_used)

    def dumps(self) -> str:
        return json.dumps({"version": 1, "last_used": self.last_used}, indent=1) + "\n"

    @classmethod
    def loads(cls, text: str, cap: int = CAP) -> TagMemory:
        """Read what ``dumps`` wrote; anything malformed raises ValueError."""
        data = json.loads(text)
        entries = data.get("last_used") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(
            isinstance(image, str) and isinstance(used, int | float) and not isinstance(used, bool)
            for image, used in entries.items()
        ):
            raise ValueError("expected {'last_used': {tag: seconds}}")
        memory = cls(cap=cap)
        for image, used in sorted(entries.items(), key=lambda item: item[1]):
            memory.remember(image, float(used))
        memory.dirty = False
        return memory
