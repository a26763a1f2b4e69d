"""A BuildKit ``docker build`` with a large context, direct and through the /session relay."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import procs
from bench.harness import DOCKER_CLI, Bench
from bench.measures.appimage import APP_PRESENT, ensure_app_image, heal_config
from bench.report import Bar, runs_table
from bench.schedule import Effect, Measure, Need

# The bar the proxy must meet (issue 18).
BAR_BUILDKIT_RATIO = 1.1
BUILDKIT_TAG = "127.0.0.1:1/bench/buildkit:1"


def buildkit_context(b: Bench) -> Path:
    """``--build-mb`` of random data that the Dockerfile copies, FROM the managed base."""
    ctx = b.tmp / "buildkit-ctx"
    if not ctx.is_dir():
        ctx.mkdir()
        with (ctx / "data.bin").open("wb") as data:
            for _ in range(b.args.build_mb):
                data.write(os.urandom(1 << 20))
    return ctx


def change(ctx: Path, n: int) -> None:
    """A new Dockerfile and 1 MiB of new data: BuildKit keeps the last context of the
    folder (one for both targets: the session's shared key is the folder's), so only a
    changed file crosses again, and fsutil sends a changed file whole."""
    (ctx / "Dockerfile").write_text(f"FROM {APP_PRESENT}\nLABEL round={n}\nCOPY data.bin /\n")
    with (ctx / "data.bin").open("r+b") as data:
        data.seek((n % 256) << 20)
        data.write(os.urandom(1 << 20))


def buildx_env(b: Bench, target: str) -> dict[str, str]:
    """The target's CLI environment with buildx as the builder (the CLI's default).

    A CLI config folder of its own: in the run's shared one, the plugin would
    make every later row's ``docker build`` a BuildKit build, whose ``RUN``
    finds no network bridge on the bench's daemon."""
    env = b.docker_env(target)
    env["DOCKER_CONFIG"] = str(b.tmp / "cli-config-buildx")
    plugins = Path(env["DOCKER_CONFIG"]) / "cli-plugins"
    if not plugins.exists():
        plugins.parent.mkdir(parents=True, exist_ok=True)
        plugins.symlink_to(procs.cli_plugins())
    env["DOCKER_BUILDKIT"] = "1"
    return env


def buildkit_once(b: Bench, target: str, n: int) -> float:
    """Time one ``docker build -q`` (buildx, the docker driver) after ``change(n)``."""
    ctx = buildkit_context(b)
    change(ctx, n)
    argv = [DOCKER_CLI, "build", "-q", "-t", BUILDKIT_TAG, str(ctx)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=buildx_env(b, target), capture_output=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"BuildKit build via {target}: {done.stderr.decode()[-500:]}")
    return took


def measure_buildkit(b: Bench) -> None:
    """BuildKit ``docker build`` with a large context FROM a managed base that is present.

    The proxy has a recipe config, so it reads the build's /session along: the
    Dockerfile's end waits while the proxy parses it and looks the base up; the
    context crosses the relay without being decoded. Every build changes the
    Dockerfile and 1 MiB of the context first, so the whole file crosses each time.
    """
    a = b.args
    ensure_app_image(b)
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu: list[float] = []
    with b.proxy_config(heal_config(b)):
        pid = b.middle_pid("proxy")
        n = 0
        for t in ("direct", "proxy"):  # untimed: the page cache, the base's layers
            n += 1
            buildkit_once(b, t, n)
        for _ in range(a.build_reps):
            n += 1
            times["direct"].append(buildkit_once(b, "direct", n))
            n += 1
            before = procs.tree_cpu(pid) if pid else {}
            times["proxy"].append(buildkit_once(b, "proxy", n))
            if pid:
                cpu.append(procs.cpu_delta(before, procs.tree_cpu(pid)))
    table, chosen = runs_table(
        f"BuildKit docker build with a {a.build_mb} MiB context, no heal needed", times
    )
    ratio = chosen["proxy"] / chosen["direct"]
    table.notes.append(
        f"`docker build -q` with buildx (the docker driver) of a {a.build_mb} MiB random file "
        f"that the Dockerfile copies, FROM the recipe-managed {APP_PRESENT}; before every "
        "build the Dockerfile and 1 MiB of the file change, so both cross the session again "
        f"(BuildKit sends a changed file whole). {a.build_reps} interleaved runs per target "
        "after one untimed build each; medians are compared."
    )
    if cpu:
        table.notes.append(f"proxy CPU per build: {', '.join(f'{x:.2f}' for x in cpu)} s.")
    b.raw["buildkit"] = {"times": times, "median": chosen, "proxy_cpu_s": cpu}
    b.tables.append(table)
    b.bars.append(
        Bar(
            f"BuildKit docker build, {a.build_mb} MiB context ≤ {BAR_BUILDKIT_RATIO}x direct",
            f"{ratio:.2f}x",
            f"≤ {BAR_BUILDKIT_RATIO}x",
            ratio <= BAR_BUILDKIT_RATIO,
        )
    )


MEASURE = Measure[Bench](
    "measure_buildkit",
    measure_buildkit,
    needs=frozenset({Need.PROXY, Need.IMAGES_KEPT}),
    effects=frozenset({Effect.RESTARTS_PROXY}),
)
