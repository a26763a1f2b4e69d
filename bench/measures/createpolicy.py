"""POST /containers/create through a listener whose policy judges the body, against ``full``.

Why one proxy with two listeners, as ``policy`` does for ``/_ping``: what the
body checks cost (a read of the body as dockerd reads it, then the checks) is
tens of microseconds among dockerd's milliseconds, so only the same process,
the same daemon and interleaved blocks tell it apart. The default listener
is ``full`` (no gate); ``runner`` judges the head and the body. The body is
the docker CLI's own for ``docker run -v FOLDER:/w`` (``bench/bodycheck.py``),
with the bind under the policy's ``binds_under``, so every create is let
through. The proxy's CPU per create is the figure least moved by neighbours.
"""

from __future__ import annotations

from bench import loadgen, procs
from bench.bodycheck import CLI_BODY
from bench.harness import Bench
from bench.measures.appimage import APP_PRESENT, ensure_app_image
from bench.measures.create import create_remove, quantile_ms
from bench.report import Table
from bench.schedule import Effect, Measure, Need

LISTENERS = ("full (no policy)", "runner")


def measure_create_policy(b: Bench) -> None:
    """Create (+ remove) p50 and the proxy's CPU per pair, through ``runner`` and ``full``."""
    a = b.args
    if "proxy" not in b.targets:
        return
    ensure_app_image(b)
    agents = b.tmp / "agents"
    (agents / "x").mkdir(parents=True, exist_ok=True)
    body = (
        CLI_BODY.replace(b'"Image":"busybox"', f'"Image":"{APP_PRESENT}"'.encode())
        .replace(b"/srv/agents/x:/w", f"{agents}/x:/w".encode())
        .replace(b'"NetworkMode":"default"', b'"NetworkMode":"none"')
        .replace(b'"AutoRemove":true', b'"AutoRemove":false')
    )
    runner = b.tmp / "runner.sock"
    config = b.tmp / "create-policy.toml"
    config.write_text(
        f'[[listeners]]\nname = "runner"\nlisten = "unix://{runner}"\npolicy = "agents"\n\n'
        f'[policies.agents]\nextends = "runner"\n\n'
        f'[policies.agents.create]\nbinds_under = ["{agents}"]\n'
    )
    create: dict[str, list[int]] = {name: [] for name in LISTENERS}
    proxy_cpu = dict.fromkeys(LISTENERS, 0.0)
    with b.proxy_config(config):
        paths = {"full (no policy)": b.sockets["proxy"], "runner": runner}
        conns = {name: loadgen.ApiConn(str(path)) for name, path in paths.items()}
        try:
            for name in LISTENERS:
                for _ in range(a.create_warmup):
                    create_remove(conns[name], body)
            for block in range(max(1, a.create_n // a.create_block)):
                order = LISTENERS if block % 2 == 0 else LISTENERS[::-1]
                for name in order:
                    m0 = procs.tree_cpu(b.running["proxy"].pid)
                    for _ in range(a.create_block):
                        create[name].append(create_remove(conns[name], body)[0])
                    proxy_cpu[name] += procs.cpu_delta(m0, procs.tree_cpu(b.running["proxy"].pid))
        finally:
            for conn in conns.values():
                conn.close()
    table = Table(
        "POST /containers/create through a listener whose policy judges the body (runner) "
        "and without one (full)",
        ["listener", "create p50 ms", "create p99 ms", "added p50 µs", "proxy CPU µs/pair"],
    )
    full = quantile_ms(create[LISTENERS[0]], 0.5)
    for name in LISTENERS:
        n = max(1, len(create[name]))
        p50 = quantile_ms(create[name], 0.5)
        table.rows.append(
            [
                name,
                f"{p50:.2f}",
                f"{quantile_ms(create[name], 0.99):.2f}",
                "-" if name == LISTENERS[0] else f"{(p50 - full) * 1e3:+.0f}",
                f"{proxy_cpu[name] / n * 1e6:.0f}",
            ]
        )
    table.notes.append(
        f"One proxy, two listeners; {len(create[LISTENERS[0]])} create+remove pairs each "
        f"after {a.create_warmup} untimed ones, in blocks of {a.create_block} alternating "
        f"(ABBA). The body is the docker CLI's for `docker run -v {agents}/x:/w` "
        f"({len(body)} bytes), bound under the policy's binds_under: every create is let "
        "through, so 'runner' pays the head's verdict, the body's read and its checks. "
        "In-process figures of the read and the checks alone: `python bench/bodycheck.py`."
    )
    b.tables.append(table)
    b.raw["create_policy"] = {"create_ns": create, "proxy_cpu_s": proxy_cpu}


MEASURE = Measure[Bench](
    "measure_create_policy",
    measure_create_policy,
    needs=frozenset({Need.PROXY, Need.IMAGES_KEPT}),
    effects=frozenset({Effect.RESTARTS_PROXY}),
)
