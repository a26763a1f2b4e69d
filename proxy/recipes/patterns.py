"""Recipe ``match`` patterns, and the ``{name}`` templates they fill in.

Everything that decides which recipe heals an image, and what that recipe
looks like once bound to the image, lives here.

Rules:

- A placeholder is ``{name}``, ``name`` an identifier. ``{{`` and ``}}`` stand
  for literal braces (so a shell ``${HOME}`` is written ``${{HOME}}``); any
  other brace is an error, so a typo never silently turns into literal text.
- A pattern is normalised the Docker way before matching: ``foo`` matches only
  ``docker.io/library/foo:latest``, ``app:{t}`` matches any tag of
  ``docker.io/library/app``. While normalising, a placeholder counts as plain
  path text: ``{user}/app`` is a Docker Hub user's repository, never a
  registry; registries are written literally.
- A placeholder captures text that is valid on its own in the field it
  stands in (``reference.PIECE_GRAMMAR``): a run of host labels in the
  registry, one path component in the repository, the start of a tag after
  ``:``. So a capture never leaves its component, is never ``.`` or ``..``,
  and never starts with ``-`` or ``.``: captures are filled into ``command``,
  ``workdir``, ``build.context`` and ``load``, where ``..`` would climb out of
  a folder and ``-rf`` would be an option. A reference whose capture would
  break this is not matched (``app:v{x}`` does not match ``app:v..``), so the
  image is unmanaged and the daemon's own answer goes back; ``refusal`` says
  why, for ``check``. After ``@`` a placeholder must be the whole digest and
  captures ``algorithm:hex``.
- A placeholder used twice must capture the same text both times. Two
  placeholders side by side are refused: nothing says where one ends.
- Recipes are tried in file order and the first match wins, so a specific
  entry placed above a general one overrides it.

Theory of operation: compiling tokenises the pattern, then proves it valid by
filling every placeholder with the most permissive value (``0``, or a sha256
digest after ``@``) and parsing the result as a reference. It then normalises
the pattern with ``reference.split``, with each placeholder replaced by an
index marker that holds none of the characters ``split`` cuts on, and turns
the normalised text into an anchored regex: literal text escaped, markers as
named groups holding the grammar of their field, repeats as
back-references. A second, loose regex (any ``[A-Za-z0-9_.-]`` run) finds
the captures a refused reference would have had. A reference is matched by
normalising it and running that regex, so both sides went through the same
rules. Compiled patterns are cached: every create request consults them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .recipe import BuildSpec, ConcreteRecipe, Recipe
from .reference import PIECE_GRAMMAR, InvalidReference, normalize, parse, split

_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_MARKER_RE = re.compile(r"\{(\d+)\}")
_VALUE = "[A-Za-z0-9_.-]+"
_DIGEST_VALUE = "[A-Za-z0-9_+.-]+:[0-9a-f]+"
_FIELD_NAMES = {"domain": "registry host", "path": "repository path component", "tag": "tag"}
_SENTINEL = "0"
_DIGEST_SENTINEL = "sha256:" + "0" * 64


@dataclass(frozen=True)
class _Placeholder:
    name: str


def _tokens(template: str) -> list[str | _Placeholder]:
    """Literal text and placeholders, alternating, starting and ending with text."""
    tokens: list[str | _Placeholder] = []
    literal = ""
    position = 0
    for token in _TOKEN_RE.finditer(template):
        literal += template[position : token.start()]
        position = token.end()
        text = token.group()
        if token.group(1):
            tokens += [literal, _Placeholder(token.group(1))]
            literal = ""
        elif len(text) == 2:
            literal += text[0]
        else:
            raise ValueError(
                f"stray {text!r} at position {token.start()} in {template!r}; "
                f"write {{name}} for a placeholder or {text * 2} for a literal brace"
            )
    tokens.append(literal + template[position:])
    return tokens


def placeholders_in(template: str) -> set[str]:
    """The names a template needs; raises ValueError for a malformed one."""
    return {token.name for token in _tokens(template) if isinstance(token, _Placeholder)}


def substitute(template: str, captures: Mapping[str, str]) -> str:
    """Fill a template; config has already checked every name is captured."""
    return "".join(
        captures[token.name] if isinstance(token, _Placeholder) else token
        for token in _tokens(template)
    )


def escape(text: str) -> str:
    """Make literal text (say, a folder name with braces) safe inside a template."""
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Pattern:
    """A compiled ``match`` string."""

    source: str
    """As written in the config."""
    normalized: str
    """Docker's spelling with placeholders kept, e.g. ``docker.io/library/app:{t}``."""
    placeholders: frozenset[str]
    _regex: re.Pattern[str] = field(repr=False, compare=False)
    _loose: re.Pattern[str] = field(repr=False, compare=False)
    _fields: Mapping[str, str] = field(repr=False, compare=False)
    """The field (``domain``, ``path``, ``tag``) each placeholder stands in; not digests."""

    @staticmethod
    def compile(match: str) -> Pattern:
        """Compile ``match``; raises ValueError saying what is wrong with it."""
        return _compile(match)

    @property
    def is_template(self) -> bool:
        """Whether the pattern names a family of images rather than one."""
        return bool(self.placeholders)

    def match(self, reference: str) -> dict[str, str] | None:
        """The captures if ``reference`` is one of this pattern's images.

        Clients send arbitrary strings; one dockerd would reject is simply no
        match, never an error.
        """
        try:
            normal = normalize(reference)
        except InvalidReference:
            return None
        found = self._regex.fullmatch(normal)
        return None if found is None else found.groupdict()

    def refusal(self, reference: str) -> str | None:
        """Why ``reference``, of this pattern's shape, is still not one of its images:
        a capture that is not valid on its own where it stands. None otherwise."""
        try:
            normal = normalize(reference)
        except InvalidReference:
            return None
        if self._regex.fullmatch(normal):
            return None
        loose = self._loose.fullmatch(normal)
        for name, value in (loose.groupdict() if loose else {}).items():
            place = self._fields.get(name)
            if place is not None and not re.fullmatch(PIECE_GRAMMAR[place], value):
                return (
                    f"{{{name}}} would capture {value!r}, not a {_FIELD_NAMES[place]} on its "
                    "own (a capture is never '.' or '..' and never starts with '-' or '.')"
                )
        return None


@functools.cache
def _compile(match: str) -> Pattern:
    tokens = _tokens(match)
    names = {i: token.name for i, token in enumerate(tokens) if isinstance(token, _Placeholder)}
    literals = [token for token in tokens if isinstance(token, str)]
    if any("{" in text or "}" in text for text in literals):
        raise ValueError(f"{match!r}: braces cannot appear in an image reference")
    if "" in literals[1:-1]:
        raise ValueError(f"{match!r}: two placeholders side by side; put literal text between")
    marked = "".join(f"{{{i}}}" if i in names else str(token) for i, token in enumerate(tokens))
    _, at, digest = marked.partition("@")
    in_digest = {int(index) for index in _MARKER_RE.findall(digest)} if at else set()
    if in_digest and not _MARKER_RE.fullmatch(digest):
        raise ValueError(f"{match!r}: after '@' a placeholder must be the whole digest")
    try:
        parse(
            _MARKER_RE.sub(
                lambda m: _DIGEST_SENTINEL if int(m[1]) in in_digest else _SENTINEL, marked
            )
        )
    except InvalidReference as error:
        raise ValueError(f"{match!r} is not a valid image reference: {error.reason}") from None

    reference = split(marked)
    texts = {"domain": reference.domain, "path": reference.path, "tag": reference.tag or ""}
    place_of = {int(i): place for place, text in texts.items() for i in _MARKER_RE.findall(text)}
    regex: list[str] = []
    loose: list[str] = []
    normalized: list[str] = []
    fields: dict[str, str] = {}
    for position, piece in enumerate(_MARKER_RE.split(str(reference))):
        if position % 2 == 0:
            regex.append(re.escape(piece))
            loose.append(re.escape(piece))
            normalized.append(piece)
            continue
        index = int(piece)
        name = names[index]
        if f"{{{name}}}" in normalized:
            regex.append(f"(?P={name})")
            loose.append(f"(?P={name})")
        elif index in in_digest:
            regex.append(f"(?P<{name}>{_DIGEST_VALUE})")
            loose.append(f"(?P<{name}>{_DIGEST_VALUE})")
        else:
            fields[name] = place_of[index]
            regex.append(f"(?P<{name}>{PIECE_GRAMMAR[fields[name]]})")
            loose.append(f"(?P<{name}>{_VALUE})")
        normalized.append(f"{{{name}}}")
    placeholders = frozenset(names.values())
    return Pattern(
        match,
        "".join(normalized),
        placeholders,
        re.compile("".join(regex)),
        re.compile("".join(loose)),
        fields,
    )


def find_recipe(recipes: Sequence[Recipe], reference: str) -> tuple[Recipe, dict[str, str]] | None:
    """The first recipe whose pattern matches ``reference``, with its captures."""
    for recipe in recipes:
        captures = Pattern.compile(recipe.match).match(reference)
        if captures is not None:
            return recipe, captures
    return None


def instantiate(recipe: Recipe, reference: str, captures: Mapping[str, str]) -> ConcreteRecipe:
    """Bind ``recipe`` to one image.

    Raises InvalidReference when a filled-in ``pull`` or ``depends_on`` is not
    a valid reference, which only a capture can cause, so only now can it show.
    """
    image = normalize(reference)

    def fill(template: str) -> str:
        return substitute(template, captures)

    pull = None
    if recipe.pull is not None:
        # ``pull = true`` pulls the very image asked for; re-filling the match
        # string could normalise differently (a capture with a '.' in the
        # first component would turn it into a registry).
        pull = image if recipe.pull == recipe.match else normalize(fill(recipe.pull))
    return ConcreteRecipe(
        recipe=recipe,
        image=image,
        kind=recipe.kind,
        command=tuple(fill(arg) for arg in recipe.command),
        workdir=Path(fill(recipe.workdir)),
        env={key: fill(value) for key, value in recipe.env.items()},
        build=build_spec(recipe, captures),
        pull=pull,
        load=None if recipe.load is None else Path(fill(recipe.load)),
        depends_on=tuple(normalize(fill(dependency)) for dependency in recipe.depends_on),
        timeout=recipe.timeout,
        cache=recipe.cache,
        inputs=tuple(fill(pattern) for pattern in recipe.inputs),
    )


def build_spec(recipe: Recipe, captures: Mapping[str, str]) -> BuildSpec | None:
    """The recipe's ``build`` table, filled in and typed (None if not a build)."""
    if recipe.build is None:
        return None
    table = recipe.build
    context, dockerfile = table.get("context"), table.get("dockerfile", "Dockerfile")
    args, target = table.get("args", {}), table.get("target")
    if not (
        isinstance(context, str)
        and isinstance(dockerfile, str)
        and isinstance(args, Mapping)
        and (target is None or isinstance(target, str))
    ):
        raise TypeError(f"{recipe.name}: build table was not validated by config")
    return BuildSpec(
        context=Path(substitute(context, captures)),
        dockerfile=substitute(dockerfile, captures),
        args={str(key): substitute(str(value), captures) for key, value in args.items()},
        target=None if target is None else substitute(target, captures),
    )
