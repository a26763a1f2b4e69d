"""``docker save`` of a big image, direct and through each middle, byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench import procs
from bench.facts import cli_version
from bench.harness import DOCKER_CLI, Bench
from bench.report import Bar, Table
from bench.schedule import Measure

BIG_IMAGE = "127.0.0.1:1/bench/big:1"
"""A registry-qualified name on a closed port: nothing can ever pull or push it."""
# The bar the proxy must meet (from the project brief).
BAR_SAVE_RATIO = 1.25


def ensure_big_image(b: Bench) -> None:
    """Build ``FROM scratch`` + one incompressible file, directly against the daemon.

    Random bytes so no layer of the stack can win by compressing; built once per run
    because the daemon's data root is private and thrown away.
    """
    if b.raw.get("big_image_built"):
        return
    ctx = b.tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /big.bin\n")
    chunk = 8 << 20
    remaining = b.args.save_mb << 20
    with (ctx / "big.bin").open("wb") as f:
        while remaining > 0:
            n = min(chunk, remaining)
            f.write(os.urandom(n))
            remaining -= n
    t0 = time.perf_counter()
    env = b.docker_env("direct")
    env["DOCKER_BUILDKIT"] = "0"  # the classic builder needs no buildx plugin
    subprocess.run(
        [DOCKER_CLI, "build", "-q", "-t", BIG_IMAGE, str(ctx)],
        env=env,
        check=True,
        capture_output=True,
    )
    shutil.rmtree(ctx)
    b.raw["big_image_built"] = True
    b.raw["big_image_build_s"] = time.perf_counter() - t0


def save_once(b: Bench, target: str, dest: Path | None) -> float:
    """Time one ``docker save`` through ``target``; to /dev/null unless ``dest``."""
    t0 = time.perf_counter()
    if dest is None:
        b.docker(target, "save", BIG_IMAGE, stdout=subprocess.DEVNULL)
    else:
        with dest.open("wb") as f:
            b.docker(target, "save", BIG_IMAGE, stdout=f.fileno())
    return time.perf_counter() - t0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def measure_save(b: Bench) -> None:
    """Time ``docker save`` of a big image direct vs through each proxy.

    Repetitions are interleaved (direct, proxy, haproxy, ... then again) so page
    cache warmth and background noise hit every target alike; the median is kept.
    The proxy's RSS is sampled while its saves stream, because buffering a body
    instead of streaming it shows up there first.
    """
    a = b.args
    print(f"== building {a.save_mb} MiB image {BIG_IMAGE}", flush=True)
    ensure_big_image(b)
    print(f"   built in {b.raw['big_image_build_s']:.1f}s", flush=True)
    times: dict[str, list[float]] = {t: [] for t in b.targets}
    rss_peak = 0
    save_once(b, "direct", None)  # warm the page cache before anything is timed
    for _ in range(a.save_reps):
        for target in b.targets:
            pid = b.middle_pid(target) if target == "proxy" else None
            if pid:
                with procs.RssSampler(pid) as s:
                    times[target].append(save_once(b, target, None))
                rss_peak = max(rss_peak, s.peak_kb)
            else:
                times[target].append(save_once(b, target, None))
    chosen = {t: statistics.median(v) for t, v in times.items()}
    d = chosen["direct"]
    mb = a.save_mb
    table = Table(
        f"docker save of a {mb} MiB image",
        ["target", "median s", "runs (s)", "MiB/s", "vs direct"],
    )
    for t in b.targets:
        table.rows.append(
            [
                t,
                f"{chosen[t]:.2f}",
                ", ".join(f"{x:.2f}" for x in times[t]),
                f"{mb / chosen[t]:.0f}",
                f"{chosen[t] / d:.2f}x",
            ]
        )
    table.notes.append(
        f"`docker save {BIG_IMAGE} > /dev/null` with the {cli_version()} CLI; "
        f"{a.save_reps} interleaved runs per target after one untimed warm-up save; medians "
        "are compared."
    )
    # Byte-for-byte: the proxy must not alter the stream.
    digests: dict[str, str] = {}
    for t in [t for t in ("direct", "proxy") if t in b.sockets]:
        out = b.tmp / f"save-{t}.tar"
        save_once(b, t, out)
        digests[t] = sha256_file(out)
        out.unlink()
    if "proxy" in digests:
        same = digests["direct"] == digests["proxy"]
        if not same:  # is save itself deterministic? distinguish that from corruption
            out = b.tmp / "save-direct2.tar"
            save_once(b, "direct", out)
            again = sha256_file(out)
            out.unlink()
            why = "direct is reproducible" if again == digests["direct"] else "direct varies"
            table.notes.append(f"sha256 direct ≠ proxy ({why}): MISMATCH")
        else:
            table.notes.append(
                f"sha256 of direct and proxy output identical ({digests['direct'][:16]}…)."
            )
    if rss_peak:
        table.notes.append(
            f"proxy VmRSS peak sampled every 20 ms during its saves: {rss_peak / 1024:.1f} MiB."
        )
    b.raw["save"] = {
        "times": times,
        "median": chosen,
        "sha256": digests,
        "proxy_rss_peak_kb": rss_peak,
    }
    b.tables.append(table)
    p = chosen.get("proxy")
    b.bars.append(
        Bar(
            f"docker save {mb} MiB ≤ {BAR_SAVE_RATIO}x direct time",
            f"{p / d:.2f}x" if p else "-",
            f"≤ {BAR_SAVE_RATIO}x",
            (p / d <= BAR_SAVE_RATIO) if p else None,
        )
    )


MEASURE = Measure[Bench]("measure_save", measure_save)
