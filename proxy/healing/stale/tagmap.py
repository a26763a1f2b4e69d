"""Which image id each tag points to, kept from the daemon's image events.

Rules:
- A ``tag`` event names both the tag (``Actor.Attributes.name``) and the
  image id (``Actor.ID``): the map is updated in place. Builds emit it too
  (there is no ``build`` image event), and so does ``docker tag``.
- ``untag`` and ``delete`` name only the image id, and ``docker load``
  moves a tag with only a ``load`` event; ``import`` and ``pull`` name no id
  a tag now has. Each of those makes the map dirty: it is relisted (off the
  loop), and until then ``image_id`` answers None (not known) for every tag,
  so a create of a stale-mode tag does one inspect rather than trust it.
  What that inspect found holds until the next event that dirties the map.
- The map starts dirty: nothing is known before the first listing.
- A listing is a snapshot begun at one moment. Events that arrive while it
  is under way are kept and applied again on top of it, and one that made
  the map dirty keeps it dirty: a relist never rolls a newer event back.
- A heal that made an image, or an inspect, sets its tag directly.

Theory of operation: pure, fed by the tracker with events and listings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...recipes.reference import InvalidReference, normalize

DIRTYING = frozenset({"untag", "delete", "load", "import", "pull"})


def _tag_of(event: Mapping[str, Any]) -> tuple[str, str] | None:
    actor = event.get("Actor")
    if not isinstance(actor, Mapping):
        return None
    attributes = actor.get("Attributes")
    name = attributes.get("name") if isinstance(attributes, Mapping) else None
    image_id = actor.get("ID")
    if not isinstance(name, str) or not isinstance(image_id, str):
        return None
    try:
        return normalize(name), image_id
    except InvalidReference:
        return None


@dataclass
class TagMap:
    ids: dict[str, str] = field(default_factory=dict)
    dirty: bool = True
    generation: int = 0
    """Counts the events that made the map dirty."""
    version: int = 0
    """Counts every change, so a decision drawn from the map can be kept until one."""
    _since_listing: list[tuple[str, str]] = field(default_factory=list)
    _confirmed: set[str] = field(default_factory=set)
    """Tags set since the map was last dirtied: known even while it is."""

    def image_id(self, tag: str) -> str | None:
        """The id ``tag`` points to, "" if none, None while the map is dirty."""
        if self.dirty and tag not in self._confirmed:
            return None
        return self.ids.get(tag, "")

    def event(self, event: Mapping[str, Any]) -> bool:
        """Apply one image event; True if the map must be relisted."""
        if event.get("Type") != "image":
            return False
        action = event.get("Action")
        if action == "tag":
            found = _tag_of(event)
            if found is not None:
                self.ids[found[0]] = found[1]
                self.version += 1
                self._since_listing.append(found)
            return False
        if action in DIRTYING:
            self.dirtied()
            return True
        return False

    def dirtied(self) -> None:
        """Something moved that no event named: nothing is known until relisted."""
        self.dirty = True
        self.generation += 1
        self.version += 1
        self._confirmed.clear()

    def listing(self) -> int:
        """A listing begins: the generation to hand back to ``listed``."""
        self._since_listing.clear()
        return self.generation

    def listed(self, images: Iterable[Mapping[str, Any]], generation: int) -> None:
        """The answer of ``GET /images/json`` asked at ``generation``."""
        ids: dict[str, str] = {}
        for image in images:
            image_id = image.get("Id")
            for tag in image.get("RepoTags") or ():
                try:
                    ids[normalize(tag)] = str(image_id)
                except InvalidReference:
                    continue  # "<none>:<none>" on old daemons
        for tag, image_id in self._since_listing:
            if image_id:
                ids[tag] = image_id
            else:
                ids.pop(tag, None)
        self.ids = ids
        self.dirty = self.generation != generation
        self.version += 1

    def set(self, tag: str, image_id: str) -> None:
        """What a heal made or an inspect found ``tag`` to be now."""
        if image_id:
            self.ids[tag] = image_id
        else:
            self.ids.pop(tag, None)
        self._confirmed.add(tag)
        self._since_listing.append((tag, image_id))
        self.version += 1
