"""BuildKit through the proxy: ``docker build`` (buildx) and ``docker compose build`` (v2).

A BuildKit build sends no context in ``POST /build``. The client opens
``POST /session`` (its side of the build: context, Dockerfile, credentials)
and ``POST /grpc`` (the build's control API), each upgraded to HTTP/2 over
the hijacked connection, several of each per build. The proxy splices them
raw; a Dockerfile that no recipe manages only has to pass through.

The daemon has no bridge, so a ``RUN`` step needs ``--network=none``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
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


@dataclass
class Build:
    """A metered proxy and a context whose ``RUN`` writes a token of its own
    into /built: a token no earlier build cached, so the step runs in this build."""

    dockerd: Dockerd
    proxy: Proxy
    port: int
    ctx: Path
    token: str

    @property
    def tag(self) -> str:
        return f"127.0.0.1:1/dhp/buildkit:{self.token[:12]}"

    def built(self) -> bytes:
        """/built of the image, copied out of a container never started: a
        short ``docker run``'s output can be lost in its attach on a loaded machine."""
        env = self.dockerd.env
        container = docker(["create", self.tag, "true"], env=env).stdout.decode().strip()
        try:
            archive = docker(["cp", f"{container}:/built", "-"], env=env).stdout
        finally:
            docker(["rm", container], env=env)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.extractfile("built")
            assert member is not None
            return member.read()

    def assert_built_through_the_proxy(self) -> None:
        """The image has this build's /built, and several ``/session`` and
        ``/grpc`` hijacks went through the proxy and all ended."""
        assert self.built().decode().strip() == self.token
        for route in ("/session", "/grpc"):
            hijacks = metric(self.port, REQUESTS, method="POST", route=route, code="101") or 0
            assert hijacks >= 2, f"{route}: {hijacks} hijacks through the proxy"
        gauge = "docker_heal_proxy_hijacked_connections"
        wait_for(lambda: metric(self.port, gauge) == 0, 30, "the hijacked connections to close")


@pytest.fixture
def build(dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path) -> Iterator[Build]:
    port = free_port()
    proxy = make_proxy(args=[f"--metrics-listen=127.0.0.1:{port}"])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy("/bin/busybox", ctx / "busybox")
    token = uuid.uuid4().hex
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        f"RUN echo {token} > /built\n"
    )
    made = Build(dockerd, proxy, port, ctx, token)
    yield made
    remove(dockerd.env, made.tag)


def test_buildx_build_of_an_unmanaged_dockerfile_passes_through(build: Build) -> None:
    argv = ["build", "--network=none", "-t", build.tag, str(build.ctx)]
    result = docker(argv, env=build.proxy.env)
    # BuildKit's progress, not the classic builder's "Successfully tagged".
    assert "writing image sha256:" in result.stderr.decode(), result.stderr.decode()
    build.assert_built_through_the_proxy()


def test_compose_v2_build_passes_through(build: Build) -> None:
    (build.ctx / "compose.yaml").write_text(
        f"""services:
  app:
    image: {build.tag}
    build:
      context: .
      network: none
    network_mode: none
"""
    )
    built = subprocess.run(
        ["docker", "compose", "-p", f"dhp{build.token[:12]}", "build"],
        env=build.proxy.env,
        cwd=build.ctx,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr.decode()
    build.assert_built_through_the_proxy()
