"""The first ``docker run`` after a prune, with and without proactive heals."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.harness import DOCKER_CLI, Bench
from bench.measures.appimage import app_context
from bench.report import Table
from bench.schedule import Effect, Measure, Need

SEED_BASE = "127.0.0.1:1/bench/seedbase:latest"
SEED_GROUP = "127.0.0.1:1/bench/seedagent:g1"


def seed_config(b: Bench, proactive: bool) -> Path:
    """The seed's chain: a base built by a script, a per-group image built FROM it.

    The base is ``app_context`` (its ``RUN`` writes ``--heal-mb``), the group adds
    a ``RUN`` of its own. ``min_free = "0%"``: the bench measures the heal, not
    the machine's disk. Both sides share ``state_dir``, so both remember the group.
    """
    script = b.tmp / "seed-base.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f"DOCKER_BUILDKIT=0 {DOCKER_CLI} build -q --build-arg BUST=seed -t {SEED_BASE} "
        f'"{app_context(b)}"\n'
    )
    script.chmod(0o755)
    ctx = b.tmp / "seed-agent"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile.g1").write_text(
        f"FROM {SEED_BASE}\nARG GROUP\n"
        'RUN ["/bin/sh", "-c", "echo $GROUP > /group && dd if=/dev/zero of=/g bs=1M count=10"]\n'
    )
    flag = "true" if proactive else "false"
    group = SEED_GROUP.rsplit(":", 1)[0] + ":{group}"
    cfg = b.tmp / f"seed-{flag}.toml"
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'proxy-state'))}\n"
        '[heal]\nmin_free = "0%"\n\n'
        f"[[images]]\nmatch = {json.dumps(SEED_BASE)}\ncommand = [{json.dumps(str(script))}]\n"
        f"proactive = {flag}\n\n"
        f"[[images]]\nmatch = {json.dumps(group)}\n"
        f"build = {{ context = {json.dumps(str(ctx))}, dockerfile = "
        '"Dockerfile.{group}", args = { GROUP = "{group}" } }\n'
        f"proactive = {flag}\n"
    )
    return cfg


def image_present(b: Bench, image: str) -> bool:
    return b.api("direct", "GET", f"/images/{image}/json")[0] == 200


def measure_proactive(b: Bench) -> None:
    """The first ``docker run`` after a prune, with and without ``proactive``.

    P: proxy with ``proactive = true``; ``docker image prune -a -f`` straight on
    the daemon's socket, timed until both images of the chain are back (polled
    every 50 ms), then ``docker run --rm GROUP true`` through the proxy, timed.
    D: the same with ``proactive = false``: the prune, then the timed run, which
    heals on demand. Sides alternate which goes first each round.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    times: dict[str, list[float]] = {"back": [], "run_proactive": [], "run_on_demand": []}

    def prune_and_run(proactive: bool) -> None:
        with b.proxy_config(seed_config(b, proactive)):
            b.run_true("proxy", SEED_GROUP)  # heals the chain if a previous side left none
            t0 = time.perf_counter()
            b.docker("direct", "image", "prune", "-a", "-f")
            if proactive:
                deadline = t0 + 1800
                while not (image_present(b, SEED_BASE) and image_present(b, SEED_GROUP)):
                    if time.perf_counter() > deadline:
                        raise RuntimeError("the seed chain did not come back within 30 min")
                    time.sleep(0.05)
                times["back"].append(time.perf_counter() - t0)
            key = "run_proactive" if proactive else "run_on_demand"
            times[key].append(b.run_true("proxy", SEED_GROUP))

    for rnd in range(a.proactive_rounds):
        for proactive in (True, False) if rnd % 2 == 0 else (False, True):
            prune_and_run(proactive)
        print(
            f"   round {rnd + 1}: back after {times['back'][-1]:.2f}s, first run "
            f"{times['run_proactive'][-1]:.2f}s proactive, "
            f"{times['run_on_demand'][-1]:.2f}s on demand",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [d / p for p, d in zip(times["run_proactive"], times["run_on_demand"], strict=True)]
    table = Table(
        "The first docker run after a prune: proactive heal vs heal on demand (seed chain)",
        ["what is timed", "median s", "runs (s)"],
    )
    for label, key in (
        ("`docker image prune -a -f` on the daemon until both images are back (proactive)", "back"),
        ("then the first `docker run --rm GROUP true` through the proxy", "run_proactive"),
        ("`docker run --rm GROUP true` right after the prune, without proactive", "run_on_demand"),
    ):
        table.rows.append([label, f"{med[key]:.3f}", ", ".join(f"{x:.2f}" for x in times[key])])
    table.notes += [
        f"The first run after a prune without proactive takes {statistics.median(ratios):.1f}x "
        f"as long as with it (median of per-round ratios: "
        f"{', '.join(f'{x:.1f}' for x in ratios)}).",
        f"Chain: base `{SEED_BASE}` built by a script (`docker build` of the heal row's "
        f"context, a {a.heal_mb} MiB `RUN`), group `{SEED_GROUP}` by a `build` recipe FROM "
        "it with a 10 MiB `RUN`. The prune also takes the builder's intermediate images, "
        "so both sides rebuild every step; the debounce after the prune's events is 5 s.",
        f"{a.proactive_rounds} rounds; each side restarts the proxy with its config.",
    ]
    b.tables.append(table)
    b.raw["proactive"] = {"times": times, "median": med, "ratios": ratios}


MEASURE = Measure[Bench](
    "measure_proactive",
    measure_proactive,
    needs=frozenset({Need.PROXY}),
    effects=frozenset({Effect.RESTARTS_PROXY, Effect.PRUNES_IMAGES}),
)
