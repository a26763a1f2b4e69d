"""Asking a running proxy over its own Unix socket: the status, and heals.

Rules:
- ``status`` and ``heal`` find the socket the same way (``socket_path``):
  ``--listen`` first, then ``DOCKER_HOST`` (a host pointed at the proxy has it
  set), then the config's ``listen``, then the built-in default, as the
  docker CLI finds its daemon. For a user other than root that default is
  their own socket, or the service's (``/run``) when theirs is not there: a
  user in the docker group with no proxy of their own is served by the
  service, and a ``heal`` that missed it would run beside the service's heal
  of the same tag, under locks of its own.
- "No proxy answers" is told apart from a proxy that answered badly: no
  socket, a refused connection, or a 404 (the daemon's own socket, or a proxy
  too old for the path) is ``NoProxy``, which lets ``heal`` go on in its own
  process; anything else is an ``AskError`` for the person at the terminal.

Theory: a small blocking HTTP/1.1 client (``http.client`` over AF_UNIX) is
enough: one request per call, no keep-alive, no event loop.
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable, Mapping

from .settings import default_listen, unix_docker_host, unix_path


class AskError(Exception):
    """The proxy could not be asked; the text says why, for a person."""


class NoProxy(AskError):
    """Nothing at the socket is a proxy that knows the path."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(
    listen: str | None,
    env: Mapping[str, str],
    config_listen: str | None,
    is_root: bool,
    owned: Callable[[str], bool],
    exists: Callable[[str], bool] = os.path.exists,
) -> str:
    """The proxy's socket path, by the precedence in the module rules."""
    url = listen or unix_docker_host(env) or config_listen or ""
    if url:
        return unix_path(url, "listen")
    own = unix_path(default_listen(env, is_root, owned)[0], "listen")
    service = unix_path(default_listen(env, True, owned)[0], "listen")
    return service if not exists(own) and exists(service) else own


def ask(path: str, method: str, target: str, timeout: float | None) -> tuple[int, bytes]:
    """The status and body of one request to the proxy at ``path``."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, target, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoProxy(f"cannot reach the proxy at {path}: {exc.strerror}") from None
    except OSError as exc:
        raise AskError(f"cannot reach the proxy at {path}: {exc}") from None
    except http.client.HTTPException as exc:
        raise AskError(f"the proxy at {path} did not answer HTTP: {exc!r}") from None
    finally:
        conn.close()
    if response.status == 404:
        raise NoProxy(
            f"{path} answered {target.partition('?')[0]} with 404 "
            "(is this the Docker daemon's socket rather than the proxy's?)"
        )
    return response.status, body
