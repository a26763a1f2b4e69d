"""Healing: noticing a missing managed image, rebuilding it, replaying the request.

Five parts, by role, each importing only the parts below it:

- ``claims``: what claims a request. ``intercept`` takes the few requests
  the proxy looks into (container create, a pull of a managed tag, a build
  whose base is managed, the status path) through the wire's ``Handler``
  protocol; ``buildheal``, ``contextscan`` and ``spool`` read a build body.
- ``background``: what heals without a request. ``proactive`` puts pruned
  images back, driven by the event ``watcher`` and the pure ``reconcile``
  and ``memory`` decisions.
- ``core``: the heal itself. ``healer`` runs one heal per tag, bases first,
  under a lock file and a parallelism limit (``slots``), from one plan per
  heal (``planner``); ``runners`` runs one concrete recipe;
  ``dockerfileparse`` parses Dockerfiles in worker processes; ``statefiles``
  keeps what a heal leaves on disk private.
- ``stale``: stale mode, above the core. What is stale now (an image whose
  sources or managed bases changed since it was built), from memory: the
  ``decision`` rule, the image ``records``, the ``tagmap`` kept from image
  events, the ``inputwatch`` keeping input hashes current, and the
  ``tracker`` owning them. The tracker answers the core's ``StaleMode``
  protocol (what is stale, what a heal made), so the core never imports
  it; it keeps its records as the core's state files.
- ``sources``: where images and facts come from. ``engine`` (the daemon),
  ``registryauth`` (credentials), ``buildcontext`` (the context tar),
  ``cache`` (the registry cache) and ``inputs`` (the sources' hash).

``claims`` and ``background`` are the two kinds of trigger: both use
``stale`` and ``core``, neither uses the other. ``stale`` uses ``core``,
both use ``sources``; nothing points back up (``pyproject.toml``'s import
contracts).

Pure: ``background.reconcile``, ``background.memory``,
``claims.contextscan`` and ``stale``'s ``decision``, ``records`` and
``tagmap``; this is where the recipe core meets processes,
files and the daemon. Decisions stay in ``recipes``; these modules carry
them out.

May import: ``proxy.recipes`` and ``proxy.wire``. Never ``proxy.service``.
"""
