"""The heal itself: one heal per tag, bases first, whoever asked for it.

``healer`` is the single flight every trigger goes through; ``slots``
bounds how many recipes run at once and lets clients ahead of background
heals; ``planner`` works out a heal's plan once, for the heal, its bases and
its cache key; ``runners`` runs one concrete recipe; ``dockerfileparse``
parses Dockerfiles in worker processes, never in the proxy's own, as an
unprivileged user; ``statefiles`` is the one way into ``state_dir`` (private,
never through a link), ``lockfiles`` keeps one builder per tag across
processes and ``retention`` decides which transcripts and lock files stay.

Pure: none; this is where decisions become processes and files.

May import: ``healing.sources`` and ``proxy.recipes``. Never
``healing.stale`` (a heal asks stale mode what is stale, and tells it what
it made, through ``healer.StaleMode``, a protocol the core owns),
``healing.claims`` nor ``healing.background`` (they use the core, not the
other way round), ``proxy.wire`` nor ``proxy.service``.
"""
