"""Where images and facts come from: the daemon, registries and the disk.

``engine`` is the proxy's own client of dockerd; ``registryauth`` finds
credentials as the CLI does; ``cache`` pulls from and pushes to the shared
registry cache; ``buildcontext`` reads a build context (its tar stream, its
Dockerfile); ``inputs`` hashes a recipe's sources for the cache key.

Pure: none; each wraps one kind of I/O.

May import: ``proxy.recipes`` and each other. Never the rest of
``healing``, ``proxy.wire`` nor ``proxy.service``.
"""
