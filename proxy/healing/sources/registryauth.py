"""Registry credentials for a pull or push, found as the docker CLI finds them.

Rules:
- The proxy uses the credentials ``docker login`` stored for the user the
  proxy runs as: ``$DOCKER_CONFIG/config.json``, else
  ``~/.docker/config.json``. A missing or unreadable file means anonymous.
- As in the CLI, a ``credHelpers`` entry for the registry wins, then
  ``credsStore``, then what is written in ``auths``: ``auths[key].auth``
  (base64 of ``user:password``), ``username``/``password`` or
  ``identitytoken``.
- A helper is the program ``docker-credential-<name>`` on PATH, run as
  ``get`` with the server address on stdin. It answers JSON with
  ``Username`` and ``Secret``; a ``Username`` of ``<token>`` makes the
  secret an identity token. A name outside ``[A-Za-z0-9._-]+`` is refused,
  since it becomes part of a program name.
- A helper that says "credentials not found" means anonymous. One that
  fails, answers nonsense or runs past ``HELPER_TIMEOUT`` (secretservice
  under systemd has no session bus and may wait forever) also means
  anonymous, with a warning: a pull that needs no credentials still works,
  and one that does fails with the registry's own reason. Its process group
  is killed on the way out.
- The helper's output and the credentials are never logged, not even at
  debug level; warnings name the helper and how it ended, nothing more.
- A key may be a bare host or a URL (``https://index.docker.io/v1/`` is how
  the CLI files Docker Hub); keys are compared by host name, as the CLI does
  when no key matches exactly.
- The header is what dockerd expects in ``X-Registry-Auth``: URL-safe base64
  of a JSON object with ``username``, ``password`` (or ``identitytoken``)
  and ``serveraddress``.

Theory of operation: ``registry_auth`` and ``helper_for`` are pure (config
dict in, header or helper name out) and ``helper_credentials`` reads a
helper's answer. ``resolve_auth`` is the blocking whole (read the file, run
the helper, build the header); ``auth_for`` runs it off the event loop,
bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from . import openfiles

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 10.0
"""Seconds a credential helper may take before the proxy goes on without it."""

_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_HELPER_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_NOT_FOUND = b"credentials not found"


def config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) if folder else Path.home() / ".docker"


def load_docker_config() -> dict[str, Any]:
    """The parsed config.json, or an empty dict when there is none to use."""
    try:
        loaded = json.loads((config_path() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _host_of(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def _same_registry(key: str, registry_host: str) -> bool:
    host = _host_of(key)
    if host in _DOCKER_HUB_HOSTS:
        return registry_host in _DOCKER_HUB_HOSTS
    return host == registry_host


def _credentials(entry: dict[str, Any]) -> dict[str, str] | None:
    if entry.get("identitytoken"):
        return {"identitytoken": str(entry["identitytoken"])}
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, colon, password = decoded.partition(":")
        return {"username": username, "password": password} if colon else None
    if entry.get("username"):
        return {"username": str(entry["username"]), "password": str(entry.get("password", ""))}
    return None


def _header(credentials: dict[str, str], server: str) -> str:
    payload = json.dumps({**credentials, "serveraddress": server}).encode()
    return base64.urlsafe_b64encode(payload).decode("ascii")


def _keys_for(table: dict[Any, Any], registry_host: str) -> list[str]:
    """The keys filed for ``registry_host``; an exact key first, as in the CLI."""
    keys = [key for key in table if isinstance(key, str) and _same_registry(key, registry_host)]
    return sorted(keys, key=lambda key: key != registry_host)


def registry_auth(config_json: dict[str, Any], registry_host: str) -> str | None:
    """The ``X-Registry-Auth`` value written in ``auths``, or None for anonymous."""
    auths = config_json.get("auths")
    if not isinstance(auths, dict):
        return None
    for key in _keys_for(auths, registry_host):
        entry = auths[key]
        credentials = _credentials(entry) if isinstance(entry, dict) else None
        if credentials is not None:
            return _header(credentials, key)
    return None


def helper_for(config_json: dict[str, Any], registry_host: str) -> str | None:
    """The credential helper the CLI would ask for ``registry_host``, if any."""
    helpers = config_json.get("credHelpers")
    if isinstance(helpers, dict):
        for key in _keys_for(helpers, registry_host):
            if isinstance(helpers[key], str) and helpers[key]:
                return str(helpers[key])
    store = config_json.get("credsStore")
    return store if isinstance(store, str) and store else None


def server_address(registry_host: str) -> str:
    """What a helper is asked for: the CLI files Docker Hub under its index URL."""
    return _DOCKER_HUB_SERVER if registry_host in _DOCKER_HUB_HOSTS else registry_host


def helper_credentials(output: bytes) -> dict[str, str] | None:
    """The credentials in a helper's ``get`` answer; None if it has none."""
    try:
        answer = json.loads(output)
    except ValueError:
        raise ValueError("its answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ValueError("its answer is not a JSON object")
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ValueError("its answer lacks Username or Secret")
    if not secret:
        return None
    if username == "<token>":
        return {"identitytoken": secret}
    return {"username": username, "password": secret}


def _run_helper(name: str, server: str) -> subprocess.CompletedProcess[bytes]:
    """``docker-credential-<name> get``, bounded by ``HELPER_TIMEOUT``.

    Past the bound its process group is killed whether or not the helper
    itself has exited: a child it left behind may hold stdout open, and a
    second ``communicate`` would wait for that child. What was written is
    kept; it counts if the helper had exited by itself with status 0.
    """
    proc = subprocess.Popen(
        [f"docker-credential-{name}", "get"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=openfiles.for_children(),  # the limit the proxy started with
    )
    try:
        stdout, stderr = proc.communicate(server.encode(), timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        # SIGKILL cannot be ignored; the bound only guards an unkillable (D-state) helper.
        if proc.wait(timeout=HELPER_TIMEOUT) != 0:
            raise
        stdout, stderr = expired.output or b"", expired.stderr or b""
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def helper_auth(name: str, registry_host: str) -> str | None:
    """The header from helper ``name``; None (anonymous) if it has nothing usable."""
    if not _HELPER_NAME_RE.fullmatch(name):
        log.warning("credential helper %r: not a valid helper name; going anonymous", name)
        return None
    server = server_address(registry_host)
    program = f"docker-credential-{name}"
    try:
        result = _run_helper(name, server)
    except subprocess.TimeoutExpired:
        log.warning("%s: no answer within %gs; going anonymous", program, HELPER_TIMEOUT)
        return None
    except OSError as error:
        log.warning("%s: cannot run: %s; going anonymous", program, error.strerror)
        return None
    if result.returncode != 0:
        if _NOT_FOUND in result.stdout or _NOT_FOUND in result.stderr:
            return None
        log.warning("%s: exited with status %d; going anonymous", program, result.returncode)
        return None
    try:
        credentials = helper_credentials(result.stdout)
    except ValueError as error:
        log.warning("%s: %s; going anonymous", program, error)
        return None
    return None if credentials is None else _header(credentials, server)


def resolve_auth(registry_host: str) -> str | None:
    """The ``X-Registry-Auth`` value for ``registry_host`` as the CLI would find it.

    Blocking (it reads a file and may run a helper): run it off the event loop.
    """
    config = load_docker_config()
    helper = helper_for(config, registry_host)
    if helper is not None:
        return helper_auth(helper, registry_host)
    return registry_auth(config, registry_host)


async def auth_for(registry_host: str) -> str | None:
    """``resolve_auth`` off the event loop, bounded even if the helper's bound fails.

    Every caller holds a heal's lock and a slot while it waits: anonymous
    after ``HELPER_TIMEOUT`` plus a margin is better than a heal that hangs.
    """
    try:
        async with asyncio.timeout(HELPER_TIMEOUT + 5):
            return await asyncio.to_thread(resolve_auth, registry_host)
    except TimeoutError:
        log.warning("credentials for %s: no answer; going anonymous", registry_host)
        return None
