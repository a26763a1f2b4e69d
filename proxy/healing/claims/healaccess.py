"""Whether a caller may start a heal: its policy must allow what every step of the heal does.

Rules:
- A heal is an action the caller asks for. Where its listener has a policy,
  a heal starts only if that policy also allows what the heal does
  (``HEAL_NEEDS``: a pull heal ``POST /images/create``, a build heal
  ``POST /build``, or ``/session`` and ``/grpc`` for BuildKit, a load heal
  ``POST /images/load``); otherwise the refusal names the route it lacks.
- What the heal does is its whole plan, not the image asked for alone: a
  command recipe needs no route, yet its managed bases may be built, pulled
  or loaded on the way, and a stale rebuild rebuilds stale bases too. Every
  step of the plan is judged, bases first, whether or not that base turns
  out to be missing: which ones are is only known once the heal runs.
- Every trigger asks here: a create, a pull, a stale rebuild before a
  create, a classic build's and a BuildKit build's managed bases.
- Cheap where nothing can be refused: with no policy, or one allowing every
  kind of heal, no plan is worked out.
- A plan that cannot be worked out (a bad reference, a cycle) is no reason
  here: the heal fails on that very plan and says why.

Theory of operation: ``heal_refused`` first asks the caller's policy, through
``refusal`` (the connection's ``Gate.refuses``), for each kind's routes
(``kind_refused``); only if some kind is refused does it work out the plan
(``Healer.plan``) and walk its steps, bases first, for the first step of a
refused kind. The heal then works the plan out again itself: a policed
caller's heal pays one plan more, a caller without a policy none.
"""

from __future__ import annotations

from collections.abc import Callable

from ...recipes.graph import DependencyCycle
from ...recipes.recipe import Kind
from ...recipes.reference import InvalidReference
from ..core.healer import Healer

HEAL_NEEDS: dict[Kind, tuple[tuple[str, ...], ...]] = {
    "pull": (("POST /images/create",),),
    "build": (("POST /build",), ("POST /session", "POST /grpc")),
    "load": (("POST /images/load",),),
    "command": ((),),
}
"""What a caller's policy must allow for a heal of each kind: any one of the route sets."""

Refusal = Callable[[str, str], "str | None"]
"""Why the caller's policy refuses ``METHOD``, ``/route`` outright, or None
(``Exchange.refusal``, ``Gate.refuses``)."""


def kind_refused(refusal: Refusal, kind: Kind) -> str | None:
    """The first route a heal of ``kind`` lacks, or None when one of its route sets is allowed."""
    first = None
    for routes in HEAL_NEEDS[kind]:
        lacking = [
            reason
            for method, _, path in (route.partition(" ") for route in routes)
            if (reason := refusal(method, path)) is not None
        ]
        if not lacking:
            return None
        first = first or lacking[0]
    return first


async def heal_refused(refusal: Refusal, healer: Healer, image: str) -> str | None:
    """Why the caller may not start a heal of ``image`` (the first step of its
    plan whose kind its policy refuses), or None when it may."""
    lacking = {kind: kind_refused(refusal, kind) for kind in HEAL_NEEDS}
    if not any(lacking.values()):
        return None
    try:
        plan = await healer.plan(image)
    except (InvalidReference, DependencyCycle):
        return None
    for step in plan.steps:
        reason = lacking[step.kind]
        if reason is not None:
            what = image if step.image == plan.image else f"{step.image} (for {image})"
            return f"{reason}, which a {step.kind} heal of {what} needs"
    return None
