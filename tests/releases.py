"""The dockerd releases the daemon tests run against, and how the newer one is got.

Rules:
- ``TEST_DOCKERD`` (environment) picks them: ``20.10``, ``26`` or ``both``
  (the default). Each daemon test runs once per picked release.
- 20.10 is the machine's own ``dockerd`` (Debian 12's ``docker.io``, on PATH).
- 26 is Debian 13's ``docker.io`` 26.1.5 with its ``containerd`` 1.7 and
  ``tini``, never installed: a private apt configuration (its own source
  list, lists and archives) for the ``trixie`` suite of the Debian mirror the
  machine's own apt sources name, ``apt-get download``, ``dpkg-deb -x`` into
  a cache folder that later runs reuse. The machine's apt sources and state
  stay as they are. The machine's ``runc`` stays: trixie's needs glibc 2.38.
- The CLI plugins of the same fetch (``docker-buildx`` 0.13, ``docker-compose``
  2.26) serve the CLI for both releases, through ``DOCKER_CONFIG/cli-plugins``:
  ``docker build`` is BuildKit and ``docker compose`` is v2, as for a user today.
- The CLI is one for every ``docker`` the tests run: the one on PATH when it is
  23 or newer (whose ``docker build`` is buildx), else the fetch's own
  (``docker-cli`` 26.1.5): Debian 12's ``docker.io`` CLI is 20.10, whose
  ``docker build`` is the classic builder whatever plugins it is given.
- A release that cannot be had fails the run in CI and skips its tests
  elsewhere (see ``conftest``), with the reason.

Theory of operation: ``fetch(cache)`` fills ``cache/trixie-<packages>`` (named
by the package list, so a list that grows gets a folder of its own) once, under a
lock (several test runs may share the cache), in a scratch folder renamed
into place when complete, so a fetch cut short leaves nothing that looks
done. ``Release.path`` is the ``PATH`` a dockerd of that release starts
with: its own binaries first (``dockerd`` finds ``containerd``,
``docker-init`` and the shims there), then the machine's (``runc``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PICKS = {"20.10": ("20.10",), "26": ("26",), "both": ("20.10", "26")}
"""``TEST_DOCKERD`` values and the releases each runs."""

SUITE = "trixie"
PACKAGES = ("docker.io", "docker-cli", "containerd", "tini", "docker-buildx", "docker-compose")
PLUGINS = "usr/libexec/docker/cli-plugins"
"""Where, in the extracted packages, the CLI plugins are."""
CLI = "usr/bin/docker"
"""Where, in the extracted packages, the CLI is."""
CLI_SINCE = 23
"""The first CLI major version whose ``docker build`` is buildx (BuildKit) by default."""

API = {"20.10": "1.41", "26": "1.45"}
"""The Engine API version each release speaks: named in the pytest header,
checked against the daemon's own answer when one starts."""


class Unavailable(Exception):
    """A release that cannot be had on this machine; the message says why."""


@dataclass(frozen=True)
class Release:
    """One dockerd release: its name in ``TEST_DOCKERD`` and how to start it."""

    name: str
    path: str
    """``PATH`` for its dockerd: its own binaries first."""

    @property
    def api(self) -> str:
        return API[self.name]

    @property
    def dockerd(self) -> str:
        found = shutil.which("dockerd", path=self.path)
        if found is None:
            raise Unavailable(f"no dockerd on {self.path}")
        return found

    def version(self) -> str:
        """What ``dockerd --version`` says, without starting one."""
        out = subprocess.run(
            [self.dockerd, "--version"], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"version ([^,\s]+)", out)
        return match.group(1) if match else out.strip()


def picked() -> tuple[str, ...]:
    value = os.environ.get("TEST_DOCKERD", "both")
    if value not in PICKS:
        raise Unavailable(f"TEST_DOCKERD must be one of {', '.join(PICKS)}, not {value!r}")
    return PICKS[value]


def cache_root() -> Path:
    """``TEST_DOCKERD_CACHE``, else ``~/.cache/docker-heal-proxy``: shared by worktrees."""
    given = os.environ.get("TEST_DOCKERD_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "docker-heal-proxy"


def release(name: str) -> Release:
    """The release ``name``, fetched first if it has to be."""
    host = os.environ.get("PATH", os.defpath)
    if name == "20.10":
        if shutil.which("dockerd") is None:
            raise Unavailable("dockerd on PATH (Debian 12's docker.io)")
        return Release(name, host)
    root = fetch(cache_root())
    return Release(name, f"{root / 'usr/sbin'}:{root / 'usr/bin'}:{host}")


def plugins() -> Path:
    """The folder holding ``docker-buildx`` and ``docker-compose``, fetched first if need be."""
    return fetch(cache_root()) / PLUGINS


def cli() -> tuple[Path, str]:
    """The docker CLI every test runs, and its version: PATH's when new enough, else the fetch's."""
    found = shutil.which("docker")
    if found is not None:
        try:
            version = cli_version(found)
        except Unavailable:
            version = ""  # one that cannot say is not taken
        if is_buildx_default(version):
            return Path(found), version
    fetched = fetch(cache_root()) / CLI
    return fetched, cli_version(str(fetched))


def cli_version(path: str) -> str:
    """What ``docker --version`` says its version is (it needs no daemon)."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"{path} --version: {error}") from error
    match = re.search(r"version ([^,\s]+)", out)
    if match is None:
        raise Unavailable(f"{path} --version said {out.strip()!r}")
    return match.group(1)


def is_buildx_default(version: str) -> bool:
    """Whether a CLI of ``version`` (``20.10.24+dfsg1``, ``28.2.2``) builds with buildx."""
    major = re.match(r"(\d+)\.", version)
    return major is not None and int(major.group(1)) >= CLI_SINCE


_FAILED: dict[Path, Unavailable] = {}
"""A fetch that failed, by cache: the run's later asks get the same answer at
once, rather than a second download that fails the same way minutes later."""


def fetch(cache: Path) -> Path:
    """The extracted trixie packages under ``cache``, fetched once, tried once."""
    if cache in _FAILED:
        raise _FAILED[cache]
    try:
        return _fetch(cache)
    except OSError as error:
        _FAILED[cache] = Unavailable(f"cannot fill {cache}: {error}")
    except Unavailable as error:
        _FAILED[cache] = error
    raise _FAILED[cache]


def folder(cache: Path) -> Path:
    """Where in ``cache`` the extracted packages are: named by the package list."""
    return cache / f"{SUITE}-{hashlib.sha256(' '.join(PACKAGES).encode()).hexdigest()[:12]}"


def _fetch(cache: Path) -> Path:
    done = folder(cache)
    if done.exists():
        return done
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{SUITE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return done
        work = Path(tempfile.mkdtemp(prefix=f"{SUITE}-", dir=cache))
        try:
            _download_and_extract(work)
            (work / "root").rename(done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return done


def _download_and_extract(work: Path) -> None:
    uri, signed_by = host_mirror()
    option = f"[signed-by={signed_by}] " if signed_by else ""
    (work / "sources.list").write_text(f"deb {option}{uri} {SUITE} main\n")
    for folder in ("lists/partial", "archives/partial", "debs", "root"):
        (work / folder).mkdir(parents=True)
    apt = [
        f"-oDir::Etc::SourceList={work / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={work / 'lists'}",
        f"-oDir::Cache::Archives={work / 'archives'}",
        # No package cache files either: the machine's apt state stays its own.
        "-oDir::Cache::pkgcache=",
        "-oDir::Cache::srcpkgcache=",
        # Root writes into root's folders; apt's own user could not.
        "-oAPT::Sandbox::User=root",
    ]
    # An index that could not be fetched is an error, not a warning: else the
    # download after it says only that the packages cannot be located.
    _run(["apt-get", "-q", *apt, "--error-on=any", "update"], work)
    _run(["apt-get", "-q", *apt, "download", *PACKAGES], work / "debs")
    debs = sorted((work / "debs").glob("*.deb"))
    if len(debs) != len(PACKAGES):
        raise Unavailable(f"apt-get download gave {[d.name for d in debs]}, not {PACKAGES}")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(work / "root")], work)


def _run(argv: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{argv[0]}: {error}") from error
    if result.returncode != 0:
        verb = " ".join(word for word in argv if not word.startswith("-"))
        raise Unavailable(f"{verb} exited {result.returncode}: {result.stderr.strip()}")


def host_mirror() -> tuple[str, str | None]:
    """The Debian mirror of the machine's own apt sources, and its keyring if one is named."""
    paths = [Path("/etc/apt/sources.list")]
    if Path("/etc/apt/sources.list.d").is_dir():
        paths += sorted(Path("/etc/apt/sources.list.d").iterdir())
    sources = [(p.name, p.read_text(errors="replace")) for p in paths if p.is_file()]
    return find_mirror(sources, _os_release().get("VERSION_CODENAME", ""))


def find_mirror(sources: list[tuple[str, str]], codename: str) -> tuple[str, str | None]:
    """The first ``deb`` entry for suite ``codename`` with ``main`` among apt
    source files (name, text): the main archive (``bookworm``, not
    ``bookworm-security``), whose ``trixie`` is beside it. Files named
    otherwise than apt reads them (``.disabled``, say) are passed over."""
    for name, text in sources:
        if name.endswith(".sources"):
            entries = _deb822(text)
        elif name.endswith(".list"):
            entries = _one_line(text)
        else:
            continue
        for types, uris, suites, components, signed_by in entries:
            if "deb" in types and codename in suites and "main" in components and uris:
                # A key written inline (deb822 allows it) is not a file to name.
                return uris[0], signed_by if signed_by and signed_by.startswith("/") else None
    raise Unavailable(
        f"no deb entry for suite {codename!r} with main in /etc/apt/sources.list*:"
        " the trixie packages come from the machine's own Debian mirror"
    )


Entry = tuple[list[str], list[str], list[str], list[str], str | None]


def _deb822(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries.append(
            (
                fields.get("types", "").split(),
                fields.get("uris", "").split(),
                fields.get("suites", "").split(),
                fields.get("components", "").split(),
                fields.get("signed-by") or None,
            )
        )
    return entries


def _one_line(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        options: dict[str, str] = {}
        bracket = re.match(r"(\S+)\s+\[([^\]]*)\]\s*(.*)", line)
        if bracket:
            kind, opts, rest = bracket.groups()
            options = dict(o.partition("=")[::2] for o in opts.split())
            words = [kind, *rest.split()]
        else:
            words = line.split()
        if len(words) < 4:
            continue
        kind, uri, suite, *components = words
        entries.append(([kind], [uri], [suite], components, options.get("signed-by")))
    return entries


def _os_release() -> dict[str, str]:
    values = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip().strip('"')
    return values
