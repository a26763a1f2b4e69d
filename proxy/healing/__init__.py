"""Healing: noticing a missing managed image, rebuilding it, replaying the request.

``intercept`` claims the few requests the proxy looks into (container create,
a pull of a managed tag, the status path) through the wire's ``Handler``
protocol. ``healer`` runs one heal per tag, bases first, under a lock file
and a parallelism limit; ``runners`` runs one concrete recipe (a command, a
build, a pull or a load) and ``engine``, ``buildcontext`` and
``registryauth`` are the daemon calls, the context tar and the credentials
those recipes need.

Pure: none; this is where the recipe core meets processes, files and the
daemon. Decisions stay in ``recipes``; these modules carry them out.

May import: ``proxy.recipes`` and ``proxy.wire``. Never ``proxy.service``.
"""
