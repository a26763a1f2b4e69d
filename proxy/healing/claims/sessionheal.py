"""A BuildKit build FROM a pruned managed base: the verdict on its held Dockerfile.

Rules:
- ``docker build`` on a current host is buildx: the Dockerfile travels over
  the build's ``/session``, where the wire's ``buildsession`` holds its end
  back and asks ``held`` for a verdict. Nothing of the build waits but the
  Dockerfile: BuildKit resolves the bases only once the file is complete.
- The text is parsed in the parse process (``dockerfileparse``), with the
  build args unknown (they travel on ``/grpc``, apart from the Dockerfile):
  every managed image the file names is made sure of, whichever stage
  uses it, since the target is unknown too; a FROM that needs an ARG with
  no default is left unhealed (``recipes.dockerfile``, ``open_args``).
  Stage names are stages, not images.
- The images are healed in file order through the healer's single flight,
  with ``trigger="build"``: twenty builds of one pruned base heal it once,
  and share a heal with a create of the same base.
- A failed heal fails the build with the heal's reason, the text a failed
  create heal answers with. So does a heal the caller's policy does not
  allow (``healaccess``: a base a pull or load recipe makes, on a listener
  allowing only BuildKit's routes); nothing is healed then. A parse that
  fails (too long, too slow, the worker crashed) raises, and the wire
  splices the session as it is: the build goes on as it would without the
  proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...recipes.config import Config
from ..core.dockerfileparse import MAX_PARSED, dockerfile_images
from ..core.healer import Healer, HealFailed
from .buildheal import managed
from .healaccess import Refusal, heal_refused

log = logging.getLogger(__name__)


class SessionHeal:
    """The wire's ``BuildSessions``: heal what a held Dockerfile needs, or say why not."""

    limit = MAX_PARSED

    def __init__(self, config: Callable[[], Config], healer: Healer) -> None:
        self._config = config
        self._healer = healer

    async def held(self, text: bytes, refusal: Refusal) -> str | None:
        recipes = self._config().recipes
        if not recipes:
            return None
        dockerfile = text.decode("utf-8", "surrogateescape")
        images = await dockerfile_images(self._healer.parser, dockerfile, {}, None, open_args=True)
        needed = managed(recipes, images)
        log.debug("a BuildKit build's Dockerfile is held; managed images: %s", needed or "none")
        for image in needed:
            refused = await heal_refused(refusal, self._healer, image)
            if refused is not None:
                log.info("BuildKit build FROM %s refused: %s", image, refused)
                return refused
            try:
                await self._healer.ensure(image, trigger="build")
            except HealFailed as failure:
                log.info("BuildKit build FROM %s failed: %s", image, failure)
                return str(failure)
        return None
