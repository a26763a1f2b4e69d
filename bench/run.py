"""Benchmark docker-heal-proxy against the bare daemon, HAProxy and socat, in one run.

Usage (as root; needs dockerd and the docker CLI; HAProxy and socat are comparison
targets, and one that is not installed is skipped and named under "Not measured")::

    python bench/run.py [--seconds 3] [--out docs/benchmarks.md] [--config proxy.toml]

Why one script that owns everything: ratios are only meaningful when the baseline
and the candidate run on the same machine, in the same minute, against the same
daemon. So each run starts a private dockerd, puts every proxy in front of that one
socket, measures direct first and then each peer, and reports ratios against the
direct figures it just measured. Numbers from another run, or another machine, are
never mixed in.

This module is the CLI and the run's life: the private dockerd, the targets, the
header, the report and the exit status. The rows are ``bench/measures/``, one module
each; what they share is ``bench/harness.py``, the order they run in is
``bench/schedule.py``'s, from what each declares about its setup, and the page is
``bench/report.py``'s.

Adding a row: write ``bench/measures/something.py`` with ``def measure_something(b:
Bench) -> None`` that appends a ``Table`` (and optionally ``Bar``s) to ``b``, and a
``MEASURE`` declaring what it needs and what it does to the shared setup (prunes
images, restarts the proxy), and add it to ``MEASUREMENTS``. ``Bench`` gives you the
sockets (``b.sockets``), the CLI (``b.docker(target, ...)``), one-shot API calls
(``b.api(target, "POST", "/containers/create", {...})``) and ``b.proxy_config(config)``
to rerun the proxy with a recipe config inside a block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, soak
from bench.facts import machine_facts
from bench.harness import ALL_TARGETS, Bench, run_measures
from bench.measures import MEASUREMENTS
from bench.report import render
from bench.schedule import order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="measurements, in the order they run, and what each declares:\n"
        + "\n".join(f"  {m.describe()}" for m in order(MEASUREMENTS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per ping row")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per ping row")
    p.add_argument("--conns", type=int, nargs="+", default=[1, 16], help="connection counts")
    p.add_argument("--saturation-conns", type=int, default=32, help="extra direct row")
    p.add_argument("--procs", type=int, default=4, help="max client processes per row")
    p.add_argument("--rounds", type=int, default=3, help="ping rounds; the median is kept")
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="nice (process and scheduler autogroup) for everything the run starts, so "
        "other sessions on a shared machine disturb the figures less; 0 to leave it",
    )
    p.add_argument("--save-mb", type=int, default=512, help="size of the saved image's file")
    p.add_argument("--save-reps", type=int, default=3, help="timed saves per target")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        type=lambda s: ["direct"] + [t for t in s.split(",") if t and t != "direct"],
        help="comma list from: " + ",".join(ALL_TARGETS),
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile the proxy with py-spy (if on PATH) under the highest-conns load",
    )
    p.add_argument("--profile-top", type=int, default=8, help="frames listed in the profile")
    p.add_argument("--create-n", type=int, default=300, help="timed create+remove pairs")
    p.add_argument("--create-warmup", type=int, default=20, help="untimed pairs per target")
    p.add_argument("--create-block", type=int, default=15, help="pairs per interleaved block")
    p.add_argument(
        "--create-count", type=int, default=20, help="pairs per target in the daemon-call count"
    )
    p.add_argument("--heal-rounds", type=int, default=9, help="heal vs build rounds")
    p.add_argument("--build-mb", type=int, default=256, help="size of the build's context")
    p.add_argument("--build-reps", type=int, default=3, help="timed builds per target")
    p.add_argument("--heal-mb", type=int, default=50, help="size of the file the RUN step writes")
    p.add_argument("--cache-mb", type=int, default=300, help="size of the cached image's file")
    p.add_argument("--cache-sleep", type=int, default=30, help="seconds the cached recipe sleeps")
    p.add_argument("--cache-rounds", type=int, default=3, help="cache vs plain pull rounds")
    p.add_argument(
        "--proactive-rounds", type=int, default=3, help="prune rounds with and without proactive"
    )
    p.add_argument("--stale-rounds", type=int, default=5, help="edits timed to a fresh image")
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help="comma list of measurements to run (e.g. measure_create,measure_heal)",
    )
    p.add_argument("--config", type=Path, default=None, help="proxy config file")
    p.add_argument("--out", type=Path, default=procs.REPO / "docs" / "benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the tmp dir for debugging")
    args = p.parse_args(argv)
    bad = [t for t in args.targets if t not in ALL_TARGETS]
    if bad:
        p.error(f"unknown targets {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py starts its own dockerd and must run as root", file=sys.stderr)
        return 2
    old_group_nice = procs.set_priority(args.nice) if args.nice else None
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dhb-", dir="/tmp"))
    b = Bench(args=args, tmp=tmp)
    failed = False
    try:
        print(f"== private dockerd in {tmp}", flush=True)
        b.running["direct"], b.sockets["direct"] = procs.start_dockerd(tmp)
        for t in args.targets[1:]:
            b.start_target(t)
        print(f"== targets up: {', '.join(b.targets)}", flush=True)
        facts = machine_facts(b)
        bg = procs.background_cpu(1.0)
        facts["other load at start"] = f"{bg * 100:.0f}% of {100 * (os.cpu_count() or 1)}% CPU"
        if bg > 0.2:
            print(f"!! the machine is busy before we start ({bg:.2f} cores)", file=sys.stderr)
        failed = run_measures(b, MEASUREMENTS, args.only)
        for name, p in b.running.items():
            if not p.alive():
                failed = True
                b.unavailable[name] = f"{name} died during the run:\n{p.log_tail()}"
    finally:
        for name in [n for n in b.running if n != "direct"] + ["direct"]:
            if name in b.running:
                b.running[name].stop()
        procs.unmount_under(tmp)
        if old_group_nice is not None:  # our session's autogroup is the caller's too
            procs.autogroup_nice(os.getpid(), old_group_nice)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = render(facts, b.bars, b.tables, b.unavailable, started, time.perf_counter() - t0)
    print()
    print(report)
    results = procs.REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(
        json.dumps({"facts": facts, "bars": [asdict(x) for x in b.bars], **b.raw}, indent=1)
    )
    proxy_missing = "proxy" in args.targets and "proxy" not in b.sockets
    if proxy_missing or failed:
        print(f"not writing {args.out}: the run was incomplete", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + soak.section(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(x.ok is not False for x in b.bars if not x.aim) else 3


if __name__ == "__main__":
    sys.exit(main())
