"""The open-files limit: raised for the proxy, given back as it was to what the proxy runs.

Rules:
- Every client costs the proxy two descriptors (its own connection and the
  daemon connection pinned to it), so ``serve`` raises the soft
  ``RLIMIT_NOFILE`` to the hard one at start, as dockerd does: the usual soft
  1024 would refuse the 500th client while the hard limit allows far more.
  A refusal only costs capacity.
- What the proxy runs (a recipe's command, a credential helper) gets the
  soft limit the proxy started with, as Go's runtime gives its children
  theirs after raising its own. Programs are written for the usual 1024:
  some loop over every possible descriptor (``close`` up to the limit),
  and ``select`` cannot watch a descriptor past 1024, so a raised limit
  makes them slow or wrong.
- The limit is set in the child between ``fork`` and ``exec``
  (``preexec_fn``), not by the parent afterwards: that would race the
  program's own start. The function is ``setrlimit`` itself with its
  arguments bound, so the child runs no Python of ours before ``exec``.
  When nothing was raised there is no ``preexec_fn`` at all.
- Not for the Dockerfile parse worker: the Go runtime in the parser raises
  the worker's soft limit again at its start, whatever it is given.

Theory of operation: ``raise_for_the_proxy`` remembers what it raised from,
once per process; ``for_children`` turns that into a ``preexec_fn``.
"""

from __future__ import annotations

import functools
import logging
import resource
from collections.abc import Callable

log = logging.getLogger(__name__)

_started_with: list[int] = []
"""The soft limit before ``raise_for_the_proxy`` raised it; empty when it did not."""


def raise_for_the_proxy() -> None:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit; what it was is kept for children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("open files stay limited to %d (hard limit %d): %s", soft, hard, exc)
        return
    _started_with[:] = [soft]
    log.debug("open files limit raised from %d to %d", soft, hard)


def for_children() -> Callable[[], None] | None:
    """The ``preexec_fn`` that gives a child the soft limit the proxy started
    with; None when the proxy's is still that one."""
    if not _started_with:
        return None
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return functools.partial(
        resource.setrlimit, resource.RLIMIT_NOFILE, (min(_started_with[0], hard), hard)
    )
