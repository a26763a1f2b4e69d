"""The recipe-managed app image the create, heal and build rows share, and its recipe."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from bench.harness import DOCKER_CLI, Bench

APP_REPO = "127.0.0.1:1/bench/app"
"""Every tag of this repo is recipe-managed in ``heal_config``; the tag is the
recipe's cache-busting build arg, so a new tag is a build nothing can reuse."""
APP_PRESENT = f"{APP_REPO}:present"
BUSYBOX = Path("/bin/busybox")


def app_context(b: Bench) -> Path:
    """The build context of ``APP_REPO``: ``FROM scratch`` + busybox + a slow ``RUN``.

    The ``RUN`` writes a ``--heal-mb`` file so the build's own time is large
    against the CLI's start-up, and it comes after ``ARG BUST``: the legacy builder
    keys a ``RUN``'s cache on the build args, so a new ``BUST`` always reruns it
    while ``COPY`` and ``ARG`` are reused, on both sides of the heal comparison.
    """
    ctx = b.tmp / "app-ctx"
    if not ctx.is_dir():
        ctx.mkdir()
        shutil.copy(BUSYBOX, ctx / "busybox")  # keeps the exec bit
        run = (
            "/bin/busybox --install -s /bin && "
            f"dd if=/dev/zero of=/blob bs=1M count={b.args.heal_mb} 2>/dev/null && "
            "echo $BUST > /bust"
        )
        (ctx / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            "ARG BUST=0\n"
            f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', run])}\n"
        )
    return ctx


def legacy_build(b: Bench, tag: str) -> tuple[float, str]:
    """``docker build`` of ``app_context`` as ``APP_REPO:tag``, directly: (seconds, output).

    ``DOCKER_BUILDKIT=0`` because the proxy's ``build`` recipe posts to ``/build``
    without BuildKit, i.e. the same legacy builder; the tag is the ``BUST`` arg just
    as the recipe passes it.
    """
    env = b.docker_env("direct")
    env["DOCKER_BUILDKIT"] = "0"
    argv = [DOCKER_CLI, "build", "--build-arg", f"BUST={tag}", "-t", f"{APP_REPO}:{tag}"]
    t0 = time.perf_counter()
    out = subprocess.run(
        [*argv, str(app_context(b))], env=env, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return took, out.stdout


def ensure_app_image(b: Bench) -> None:
    """Build ``APP_PRESENT`` once, directly; it also keeps the COPY/ARG steps cached."""
    if not b.raw.get("app_present_build_s"):
        b.raw["app_present_build_s"] = legacy_build(b, APP_PRESENT.rsplit(":", 1)[1])[0]


def heal_config(b: Bench) -> Path:
    """A proxy config whose one ``build`` recipe manages every tag of ``APP_REPO``.

    ``state_dir`` lives in the run's tmp dir: the heal logs land there (we read
    them to check the heal's build did the same work as the direct one) and the
    machine's /var/lib is never touched.
    """
    cfg = b.tmp / "heal.toml"
    ctx = app_context(b)
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n\n"
        "[[images]]\n"
        f"match = {json.dumps(APP_REPO + ':{tag}')}\n"
        f'build = {{ context = {json.dumps(str(ctx))}, args = {{ BUST = "{{tag}}" }} }}\n'
    )
    return cfg
