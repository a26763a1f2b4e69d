"""Registry credentials for a pull, taken from the docker CLI's config file.

Rules:
- The proxy pulls with the credentials ``docker login`` stored for the user
  the proxy runs as: ``$DOCKER_CONFIG/config.json``, else
  ``~/.docker/config.json``. A missing or unreadable file means anonymous.
- Only credentials written into the file are used: ``auths[key].auth``
  (base64 of ``user:password``), ``username``/``password`` or
  ``identitytoken``. Credential helpers (``credsStore``, ``credHelpers``)
  would mean running other programs and are not consulted.
- A key may be a bare host or a URL (``https://index.docker.io/v1/`` is how
  the CLI files Docker Hub); keys are compared by host name, as the CLI does
  when no key matches exactly.
- The header is what dockerd expects in ``X-Registry-Auth``: URL-safe base64
  of a JSON object with ``username``, ``password`` and ``serveraddress``.

Theory of operation: ``registry_auth`` is pure (config dict in, header out);
``load_docker_config`` is the only I/O, so callers read the file once, off
the event loop, and tests need no home directory.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


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


def registry_auth(config_json: dict[str, Any], registry_host: str) -> str | None:
    """The ``X-Registry-Auth`` value for ``registry_host``, or None for anonymous."""
    auths = config_json.get("auths")
    if not isinstance(auths, dict):
        return None
    # An exact key wins over one that only has the same host, as in the CLI.
    keys = sorted(auths, key=lambda key: key != registry_host)
    for key in keys:
        entry = auths[key]
        if not isinstance(entry, dict) or not _same_registry(key, registry_host):
            continue
        credentials = _credentials(entry)
        if credentials is not None:
            payload = json.dumps({**credentials, "serveraddress": key}).encode()
            return base64.urlsafe_b64encode(payload).decode("ascii")
    return None
