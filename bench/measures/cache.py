"""A heal from the registry cache vs a plain ``docker pull`` of the same image."""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import procs
from bench.harness import Bench
from bench.measures.appimage import BUSYBOX
from bench.report import Bar, Table
from bench.schedule import Effect, Measure, Need

# The bar the proxy must meet (from the project brief).
BAR_CACHE_RATIO = 1.2
"""A heal from the registry cache vs a plain ``docker pull`` of the same image."""


CACHED_REPO = "127.0.0.1:1/bench/cached"
"""Healed by a ``build`` recipe with ``cache = true``; the registry cache is local."""


def start_registry(b: Bench) -> str:
    """Debian's ``docker-registry`` on a free loopback port (insecure by default there)."""
    folder = b.tmp / "registry"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = procs.spawn("registry", ["/usr/bin/docker-registry", "serve", str(config)], b.tmp)
    b.running["registry"] = proc
    deadline = time.monotonic() + 20
    while registry_tags(f"127.0.0.1:{port}", "probe", proc) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the registry did not answer:\n{proc.log_tail()}")
        time.sleep(0.1)
    return f"127.0.0.1:{port}"


def registry_tags(registry: str, repository: str, proc: procs.Proc) -> list[str] | None:
    """The repository's tags; None while the registry does not answer yet."""
    if not proc.alive():
        raise RuntimeError(f"the registry exited:\n{proc.log_tail()}")
    url = f"http://{registry}/v2/{repository}/tags/list"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["tags"] or [])
    except urllib.error.HTTPError as error:
        return [] if error.code == 404 else None
    except OSError:
        return None


def cache_context(b: Bench) -> Path:
    """``FROM scratch`` + busybox + a ``RUN`` that sleeps ``--cache-sleep`` seconds
    and writes ``--cache-mb`` of random bytes: a slow recipe and a big image that no
    layer of the stack can compress."""
    ctx = b.tmp / "cache-ctx"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    run = (
        "/bin/busybox --install -s /bin && "
        f"sleep {b.args.cache_sleep} && "
        f"head -c {b.args.cache_mb}m /dev/urandom > /blob"
    )
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', run])}\n"
    )
    return ctx


def timed_pull(b: Bench, target: str, image: str) -> float:
    """``docker pull`` through ``target``: through the proxy, a managed tag heals."""
    t0 = time.perf_counter()
    b.docker(target, "pull", "-q", image)
    return time.perf_counter() - t0


def forget(b: Bench, *images: str) -> None:
    """Remove every name of the image, so its layers are gone and must be fetched again."""
    b.docker("direct", "rmi", *images)


def measure_cache(b: Bench) -> None:
    """A heal from the recipe, a heal from the registry cache, a plain ``docker pull``.

    One ``build`` recipe with ``cache = true`` makes ``CACHED_REPO:1``, and a local
    ``docker-registry`` is ``[heal] cache``. The first heal runs the recipe (and
    pushes in the background; we wait for the tag to appear). The same image is
    pushed under a plain name too. Then, per round and in alternating order, the
    image is removed entirely and fetched again, once healed from the cache
    through the proxy (``docker pull`` of a managed tag heals) and once by a plain
    ``docker pull`` of the plain name, straight from the daemon: the same bytes
    from the same registry, so the ratio is what the heal adds to a pull.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    registry = start_registry(b)
    image = f"{CACHED_REPO}:1"
    plain = f"{registry}/bench/plain:1"
    cfg = b.tmp / "cache.toml"
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n\n"
        f"[heal]\ncache = {json.dumps(registry + '/heal-cache')}\n\n"
        "[[images]]\n"
        f"match = {json.dumps(CACHED_REPO + ':{tag}')}\n"
        f"build = {{ context = {json.dumps(str(cache_context(b)))} }}\n"
        "cache = true\n"
    )
    with b.proxy_config(cfg):
        recipe_s = timed_pull(b, "proxy", image)
        deadline = time.monotonic() + 600
        while not registry_tags(registry, "heal-cache", b.running["registry"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the cache push did not land in the registry")
            time.sleep(0.2)
        b.docker("direct", "tag", image, plain)
        b.docker("direct", "push", "-q", plain)
        forget(b, image, plain)
        cached: list[float] = []
        pulled: list[float] = []
        for round_ in range(a.cache_rounds):
            order = ("cache", "pull") if round_ % 2 == 0 else ("pull", "cache")
            for kind in order:
                if kind == "cache":
                    cached.append(timed_pull(b, "proxy", image))
                    forget(b, image)
                else:
                    pulled.append(timed_pull(b, "direct", plain))
                    forget(b, plain)
    size = a.cache_mb
    cache_s, pull_s = statistics.median(cached), statistics.median(pulled)
    ratio = cache_s / pull_s
    table = Table(
        f"Heal of a {size} MiB image: recipe, registry cache, plain pull",
        ["how", "seconds (median)", "rounds", "all rounds (s)", "vs plain pull"],
    )
    table.rows.append(
        [f"heal by the recipe (build, sleeps {a.cache_sleep}s)", f"{recipe_s:.1f}", "1",
         f"{recipe_s:.1f}", f"{recipe_s / pull_s:.1f}x"]
    )  # fmt: skip
    table.rows.append(
        ["heal from the registry cache (through the proxy)", f"{cache_s:.2f}",
         str(len(cached)), " ".join(f"{x:.2f}" for x in cached), f"{ratio:.2f}x"]
    )  # fmt: skip
    table.rows.append(
        ["plain docker pull of the same image (direct)", f"{pull_s:.2f}",
         str(len(pulled)), " ".join(f"{x:.2f}" for x in pulled), "1.00x"]
    )  # fmt: skip
    table.notes.append(
        "Each row starts with the image and all its layers removed; the registry is "
        "Debian's docker-registry on loopback, filesystem storage, no TLS. A heal from "
        "the cache is a pull of the cache tag, a tag as the wanted name and an untag."
    )
    b.tables.append(table)
    b.raw["cache"] = {"recipe_s": recipe_s, "cache_s": cached, "pull_s": pulled, "mb": size}
    b.bars.append(
        Bar(
            f"heal of a {size} MiB image from the registry cache vs a plain docker pull",
            f"{ratio:.2f}x",
            f"≤ {BAR_CACHE_RATIO:.2f}x",
            ratio <= BAR_CACHE_RATIO,
        )
    )


MEASURE = Measure[Bench](
    "measure_cache",
    measure_cache,
    needs=frozenset({Need.PROXY, Need.REGISTRY}),
    effects=frozenset({Effect.RESTARTS_PROXY}),
)
