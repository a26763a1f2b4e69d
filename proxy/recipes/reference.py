"""Docker image references, read the way Docker reads them.

Everything that decides whether two spellings name the same image lives here.
Clients, recipes and Dockerfiles all spell images their own way (``foo``,
``foo:latest``, ``docker.io/library/foo:latest``); unless the proxy folds them
exactly as dockerd does, a heal would miss an image it has a recipe for, or
build one the client never asked for.

Rules (docker/distribution's grammar plus the Docker Hub defaults):

- A reference is ``[domain/]path[:tag][@digest]``.
- The first ``/`` component is a domain only if it holds ``.`` or ``:``, is
  ``localhost``, or has an uppercase letter (a path component never may, so it
  can only be a registry). Otherwise the domain is ``docker.io``, and the old
  spelling ``index.docker.io`` means ``docker.io`` too.
- On ``docker.io`` a one-component path is an official image: ``library/`` is
  prepended.
- Path components are lowercase alphanumeric runs joined by ``.``, ``_``,
  ``__`` or a run of ``-``; uppercase anywhere in the path is an error, not
  something to fold.
- A tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; ``latest`` is assumed only
  when there is neither tag nor digest, because a digest already pins the image.
- A digest is ``algorithm:hex``; like go-digest, only sha256, sha384 and sha512
  are accepted, with exactly 64, 96 or 128 lowercase hex digits.
- ``domain/path`` is at most 255 characters, counting the added defaults.
- A bare 64-hex string is an image ID, never a repository name.

Theory of operation: ``split`` cuts text into the four fields and applies the
defaults without judging the characters; ``parse`` is ``split`` followed by a
check of each field. Keeping the two apart lets ``patterns`` run ``split`` on a
``match`` template, whose placeholders are not reference text, so templates are
normalised by the very same rules as the references they are matched against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
_NAME_MAX = 255

# Separators are never empty, so each alphanumeric run has exactly one way to
# be matched: Docker's ``[-]*`` accepts the same names but backtracks
# exponentially in Python's engine on a near-miss.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)

PIECE_GRAMMAR = {
    "domain": rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*",
    "path": _COMPONENT,
    "tag": r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
}
"""What text standing alone in a field must be, per field: host labels (or a
port's digits), one path component, the start of a tag. None of them can be
``.`` or ``..`` or start with ``-`` or ``.``. ``patterns`` holds captures to it."""
_DIGEST_RE = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-f]+)")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


class InvalidReference(ValueError):
    """The text is not something dockerd would accept as an image name.

    ``reason`` is kept apart from the text so that ``patterns`` can report it
    against the template the user wrote rather than the text it tested.
    """

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """An image reference with Docker's defaults filled in.

    Only ``parse`` guarantees the fields are valid; ``split`` builds one from
    template text for ``patterns``.
    """

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The repository, which is what the 255-character limit applies to."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """The short spelling ``docker`` prints, for messages meant for people."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path
            official = name.removeprefix(_OFFICIAL_PREFIX)
            if official != name and "/" not in official:
                name = official
        return name + self._suffix

    @property
    def _suffix(self) -> str:
        tag = "" if self.tag is None else f":{self.tag}"
        digest = "" if self.digest is None else f"@{self.digest}"
        return tag + digest

    def __str__(self) -> str:
        return self.name + self._suffix


def split(text: str) -> Reference:
    """Cut ``text`` into fields and apply Docker's defaults, checking nothing.

    The cuts depend only on ``/``, ``:``, ``@``, ``.`` and letter case, so any
    text free of those characters can stand in for a component here.
    """
    name, at, digest_text = text.partition("@")
    digest = digest_text if at else None
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    if tag is None and digest is None:
        tag = _DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse(text: str) -> Reference:
    """Read ``text`` as dockerd would, or say why dockerd would refuse it."""
    if _IMAGE_ID_RE.fullmatch(text):
        raise InvalidReference(text, "that is an image ID, not a name")
    ref = split(text)
    reason = _fault(ref)
    if reason:
        raise InvalidReference(text, reason)
    return ref


def normalize(text: str) -> str:
    """The one spelling the proxy uses to compare and store references."""
    return str(parse(text))


def full_name(text: str) -> str | None:
    """``normalize(text)``, or None for text dockerd would not take as an image name."""
    try:
        return normalize(text)
    except InvalidReference:
        return None


def _fault(ref: Reference) -> str | None:
    if not _DOMAIN_RE.fullmatch(ref.domain):
        return f"bad registry {ref.domain!r}"
    if ref.path != ref.path.lower():
        return "repository name must be lowercase"
    if not _PATH_RE.fullmatch(ref.path):
        return f"bad repository name {ref.path!r}"
    if len(ref.name) > _NAME_MAX:
        return f"repository name longer than {_NAME_MAX} characters"
    if ref.tag is not None and not _TAG_RE.fullmatch(ref.tag):
        return f"bad tag {ref.tag!r}"
    if ref.digest is not None:
        digest = _DIGEST_RE.fullmatch(ref.digest)
        if digest is None:
            return f"bad digest {ref.digest!r}"
        algorithm, hex_digits = digest.groups()
        length = _DIGEST_HEX_LENGTH.get(algorithm)
        if length is None:
            return f"unsupported digest algorithm {algorithm!r}"
        if len(hex_digits) != length:
            return f"a {algorithm} digest has {length} hex digits, not {len(hex_digits)}"
    return None
