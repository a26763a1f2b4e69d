"""Stale mode: rebuild a managed image whose sources changed, not only a missing one.

An entry with ``rebuild_when = "stale"`` names its sources (``inputs``, or a
``load`` archive). The image a tag points to is stale when the sources'
hash differs from the one recorded for that image id when the proxy made
it, or when one of its managed bases was rebuilt (or is stale) since.

``decision`` is the rule, pure: from the tag's image id, the record of that
id, the sources' current state and the same facts about its bases, it says
fresh, stale (and why), or what it still needs to know. ``records`` is the
image id -> (inputs hash, base ids) memory, ``tagmap`` the tag -> image id
map kept from the daemon's image events, and ``inputwatch`` keeps each
watched tag's input files hashed, file by file, from ``watchfiles`` events
and a periodic rescan. ``tracker`` owns them all for the life of the
process and is what the create path and the healer ask (the healer
through its ``StaleMode`` protocol, so the core never imports stale mode):
its answers come
from memory, so a create of a fresh image costs no daemon round trip and no
file I/O.

Pure: ``decision``, ``records``, ``tagmap``.

May import: ``healing.sources`` (``inputs``, ``engine``), ``healing.core``
(its state files) and ``proxy.recipes``. Never ``healing.claims`` nor
``healing.background``, ``proxy.wire`` nor ``proxy.service``.
"""
