"""What claims a request: the requests the proxy looks into, and the build bodies it reads.

``intercept`` is the wire's ``Handler``: it picks the container creates,
pulls, builds, status requests and heals asked for from a shell that healing
cares about and lets every
other request pass untouched. ``buildheal`` takes a ``POST /build`` over:
its body goes to a nameless ``spool`` file (all builds' spools within one
budget) while ``contextscan`` finds the
Dockerfile in it, and the managed bases are healed before the build goes on.
``sessionheal`` is the wire's ``BuildSessions``: the verdict on a BuildKit
build's Dockerfile, held on its ``/session``, once its bases are healed.

Pure: ``contextscan`` (bytes in, a Dockerfile out; no I/O of its own).

May import: ``healing.core``, ``healing.sources``, ``proxy.wire`` and
``proxy.recipes``. Never ``healing.background`` (the two kinds of trigger
are independent) nor ``proxy.service``.
"""
