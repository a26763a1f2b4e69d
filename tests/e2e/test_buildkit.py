"""BuildKit through the proxy: ``docker build`` (buildx) and ``docker compose build`` (v2).

A BuildKit build sends no context in ``POST /build``. The client opens
``POST /session`` (its side of the build: context, Dockerfile, credentials)
and ``POST /grpc`` (the build's control API), each upgraded to HTTP/2 over
the hijacked connection, several of each per build. The proxy splices them
raw; a Dockerfile that no recipe manages only has to pass through.

The daemon has no bridge, so a ``RUN`` step needs ``--network=none``.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from support import (
    Dockerd,
    MakeProxy,
    Proxy,
    docker,
    free_port,
    metric,
    remove,
    wait_for,
)

REQUESTS = "docker_heal_proxy_requests_total"


def built_context(path: Path) -> tuple[Path, str]:
    """A context FROM scratch whose ``RUN`` writes a token of its own into /built:
    a token no earlier build cached, so the step runs in this build."""
    path.mkdir()
    shutil.copy("/bin/busybox", path / "busybox")
    token = uuid.uuid4().hex
    (path / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        f"RUN echo {token} > /built\n"
    )
    return path, token


def metered_proxy(make_proxy: MakeProxy) -> tuple[Proxy, int]:
    port = free_port()
    return make_proxy(args=[f"--metrics-listen=127.0.0.1:{port}"]), port


def assert_spliced_and_done(port: int) -> None:
    """Several ``/session`` and ``/grpc`` hijacks went through the proxy, and all ended."""
    for route in ("/session", "/grpc"):
        hijacks = metric(port, REQUESTS, method="POST", route=route, code="101") or 0
        assert hijacks >= 2, f"{route}: {hijacks} hijacks through the proxy"
    gauge = "docker_heal_proxy_hijacked_connections"
    wait_for(lambda: metric(port, gauge) == 0, 30, "the build's hijacked connections to close")


def assert_built(dockerd: Dockerd, tag: str, token: str) -> None:
    ran = docker(["run", "--rm", "--network=none", tag, "cat", "/built"], env=dockerd.env)
    assert ran.stdout.decode().strip() == token


def test_buildx_build_of_an_unmanaged_dockerfile_passes_through(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy, port = metered_proxy(make_proxy)
    ctx, token = built_context(tmp_path / "ctx")
    tag = f"127.0.0.1:1/dhp/buildx:{token[:8]}"
    try:
        result = docker(["build", "--network=none", "-t", tag, str(ctx)], env=proxy.env)
        # BuildKit's progress, not the classic builder's "Successfully tagged".
        assert "writing image sha256:" in result.stderr.decode(), result.stderr.decode()
        assert_built(dockerd, tag, token)
        assert_spliced_and_done(port)
    finally:
        remove(dockerd.env, tag)


def test_compose_v2_build_passes_through(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy, port = metered_proxy(make_proxy)
    ctx, token = built_context(tmp_path / "ctx")
    tag = f"127.0.0.1:1/dhp/composebuilt:{token[:8]}"
    (ctx / "compose.yaml").write_text(
        f"""services:
  app:
    image: {tag}
    build:
      context: .
      network: none
    network_mode: none
"""
    )
    project = f"dhp{token[:12]}"
    try:
        built = subprocess.run(
            ["docker", "compose", "-p", project, "build"],
            env=proxy.env,
            cwd=ctx,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert built.returncode == 0, built.stderr.decode()
        assert_built(dockerd, tag, token)
        assert_spliced_and_done(port)
    finally:
        remove(dockerd.env, tag)
