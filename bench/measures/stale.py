"""Stale mode: what it adds to a create, and how soon an edit becomes a fresh image."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from bench import loadgen, procs
from bench.harness import DOCKER_CLI, Bench
from bench.measures.appimage import APP_PRESENT, APP_REPO, BUSYBOX, ensure_app_image, heal_config
from bench.measures.create import create_remove, quantile_ms
from bench.report import Bar, Table
from bench.schedule import Effect, Measure, Need
from proxy.healing.claims.intercept import Interceptor
from proxy.healing.core.healer import Healer
from proxy.healing.stale.decision import Fresh, made
from proxy.healing.stale.inputwatch import hash_whole
from proxy.healing.stale.tracker import StaleTracker
from proxy.recipes.config import Config, parse_config
from proxy.wire.http1 import ResponseHead, parse_request_head, parse_response_head

# The bars, from issue 22.
BAR_CREATE_US = 2.0
"""'µs per create in process within 2 µs': stale mode's create handler against missing's."""
BAR_SAME_P50_US = 250.0
"""'The same p50 within noise': the least noise granted, when one mode's two phases
happen to agree more closely than the machine can tell apart."""

EDITED = "127.0.0.1:1/bench/stale:1"


def stale_config(b: Bench) -> Path:
    """``heal_config`` with ``rebuild_when = "stale"``: the Dockerfile is its input."""
    cfg = b.tmp / "heal-stale.toml"
    cfg.write_text(heal_config(b).read_text() + 'rebuild_when = "stale"\ninputs = ["Dockerfile"]\n')
    return cfg


def added_p50_us(b: Bench, config: Path, pairs: int, block: int) -> tuple[float, float]:
    """The create p50 through the proxy with ``config``, less direct's, in ABBA blocks;
    and the proxy's CPU per create+remove, in µs (less moved by neighbours)."""
    body = json.dumps(
        {"Image": APP_PRESENT, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    ).encode()
    targets = ("direct", "proxy")
    with b.proxy_config(config):
        conns = {t: loadgen.ApiConn(str(b.sockets[t])) for t in targets}
        times: dict[str, list[int]] = {t: [] for t in targets}
        try:
            for t in targets:
                for _ in range(b.args.create_warmup):
                    create_remove(conns[t], body)
            cpu = procs.tree_cpu(b.running["proxy"].pid)
            for n in range(max(1, pairs // block)):
                for t in targets if n % 2 == 0 else targets[::-1]:
                    times[t] += [create_remove(conns[t], body)[0] for _ in range(block)]
            used = procs.cpu_delta(cpu, procs.tree_cpu(b.running["proxy"].pid))
        finally:
            for conn in conns.values():
                conn.close()
    added = (quantile_ms(times["proxy"], 0.5) - quantile_ms(times["direct"], 0.5)) * 1e3
    return added, used / len(times["proxy"]) * 1e6


class CreateExchange:
    """A create as the create handler sees it, answered 201 at once: nothing waits,
    so the handler runs to its end in one step, with no loop and no socket."""

    def __init__(self, body: bytes) -> None:
        self.head = parse_request_head(
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        self._body = body
        self.client_gone = False
        self._answer = (parse_response_head(CREATED), CREATED + b'{"Id":"c","Warnings":[]}\n')

    async def body(self) -> bytes:
        return self._body

    async def roundtrip(self, raw: bytes) -> tuple[ResponseHead, bytes]:
        return self._answer

    def respond(self, response: bytes) -> None:
        pass


CREATED = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n"


def create_us() -> dict[str, float]:
    """µs per create in process, by mode: the proxy's whole create handler
    (``Interceptor.create``: body, recipe match, in stale mode the decision, the
    answer) for a present, fresh tag with one managed base, the daemon's answer
    given at once; best of 5 x 100 000, the two modes interleaved."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("app", "base"):
            (root / name / "src").mkdir(parents=True)
            (root / name / "src" / "f").write_text(name)
        base, app = "127.0.0.1:1/bench/sbase:1", "127.0.0.1:1/bench/sapp:g1"
        entries = [
            {"match": base, "workdir": "base"},
            {"match": "127.0.0.1:1/bench/sapp:{g}", "workdir": "app"},
        ]

        def config(**mode: str) -> Config:
            images = [{**e, "command": ["x"], "inputs": ["src"], **mode} for e in entries]
            return parse_config({"images": images}, base_dir=root)

        missing, stale = config(), config(rebuild_when="stale")
        tracker = StaleTracker(lambda: stale, None, root / "state")  # type: ignore[arg-type]
        listing = [{"Id": "sha256:a", "RepoTags": [app]}, {"Id": "sha256:b", "RepoTags": [base]}]
        tracker.tags.listed(listing, tracker.tags.listing())
        for tag in (app, base):
            tracker.watch.targets[tag] = tracker.targets((tag,))[tag]
            tracker.watch.sources[tag] = hash_whole(tracker.watch.targets[tag])
        tracker.records.put("sha256:b", made(tracker.watch.sources[base], {}, 0.0))
        tracker.records.put("sha256:a", made(tracker.watch.sources[app], {base: "sha256:b"}, 0.0))
        healer = cast(Healer, object())  # a fresh, present image needs no heal
        handlers = {
            "missing": Interceptor(lambda: missing, healer, snapshot=dict).create,
            "stale": Interceptor(lambda: stale, healer, snapshot=dict, stale=tracker).create,
        }
        exchange = CreateExchange(json.dumps({"Image": app, "Cmd": ["true"]}).encode())

        def once(handler: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
            step = handler(exchange)
            try:
                step.send(None)
            except StopIteration:
                return
            raise RuntimeError("the create handler waited: the measure is not in process")

        assert isinstance(tracker.decide(app), Fresh)
        n, best = 100_000, {mode: float("inf") for mode in handlers}
        for _ in range(5):
            for mode, handler in handlers.items():
                took = timeit.timeit(lambda h=handler: once(h), number=n)  # type: ignore[misc]
                best[mode] = min(best[mode], took / n * 1e6)
        return best


def edited_context(b: Bench) -> Path:
    ctx = b.tmp / "stale-ctx"
    (ctx / "src").mkdir(parents=True, exist_ok=True)
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    (ctx / "busybox").chmod(0o755)
    (ctx / "src" / "msg").write_text("start\n")
    (ctx / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "COPY src/msg /msg\n"
    )
    return ctx


def image_id(b: Bench, image: str) -> str:
    out = b.docker("direct", "image", "inspect", "-f", "{{.Id}}", image, check=False)
    return out.stdout.decode().strip() if out.returncode == 0 else ""


def edit_to_fresh(b: Bench, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from an edit of an input to a rebuilt image under ``proactive`` (polled
    every 50 ms), and the recipe's ``docker build`` alone, per round."""
    ctx = edited_context(b)
    cfg = b.tmp / "stale-proactive.toml"
    cfg.write_text(
        f"state_dir = {json.dumps(str(b.tmp / 'stale-state'))}\n"
        '[heal]\ninputs_debounce = "1s"\nmin_free = "0%"\n\n'
        f'[[images]]\nmatch = {json.dumps(EDITED)}\nrebuild_when = "stale"\n'
        'inputs = ["src"]\nproactive = true\n'
        f'command = ["{DOCKER_CLI}", "build", "-q", "-t", {json.dumps(EDITED)}, "."]\n'
        f'workdir = {json.dumps(str(ctx))}\nenv = {{ DOCKER_BUILDKIT = "0" }}\n'
    )
    edits: list[float] = []
    alone: list[float] = []
    with b.proxy_config(cfg):
        deadline = time.monotonic() + 300
        while not image_id(b, EDITED):  # the proactive first build
            if time.monotonic() > deadline:
                raise RuntimeError(f"{EDITED} was not built proactively within 300 s")
            time.sleep(0.1)
        for n in range(rounds):
            time.sleep(3)  # the last rebuild has ended and recorded its image
            before = image_id(b, EDITED)
            t0 = time.perf_counter()
            (ctx / "src" / "msg").write_text(f"edit {n}\n")
            while image_id(b, EDITED) == before:
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError("no rebuild within 300 s of an edit")
                time.sleep(0.05)
            edits.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.docker("direct", "build", "-q", "-t", f"{EDITED}-alone", str(ctx))
            alone.append(time.perf_counter() - t0)
    return edits, alone


def cell(values: list[float], spec: str = ".0f") -> str:
    """The mean of the phases, then each phase."""
    runs = ", ".join(format(x, spec) for x in values)
    return f"{format(statistics.mean(values), spec)} ({runs})"


def measure_stale(b: Bench) -> None:
    """A create of a present, fresh managed image with ``rebuild_when = "stale"`` against
    ``"missing"``, the decision's own cost in process, and an edit to a fresh image.

    The create phases run missing, stale, stale, missing (each ABBA against direct,
    ``--create-n`` pairs), so drift over the row hits both modes alike.
    """
    a = b.args
    if "proxy" not in b.targets:
        return
    ensure_app_image(b)
    added: dict[str, list[float]] = {"missing": [], "stale": []}
    cpu: dict[str, list[float]] = {"missing": [], "stale": []}
    configs = {"missing": heal_config(b), "stale": stale_config(b)}
    for mode in ("missing", "stale", "stale", "missing"):
        latency, used = added_p50_us(b, configs[mode], a.create_n // 2, a.create_block)
        added[mode].append(latency)
        cpu[mode].append(used)
    in_process = create_us()
    per_create = in_process["stale"] - in_process["missing"]
    edits, alone = edit_to_fresh(b, a.stale_rounds)
    missing, stale = (statistics.mean(added[m]) for m in ("missing", "stale"))
    table = Table(
        "Stale mode: a create of a fresh image, and an edit to a fresh image under proactive",
        ["what", "rebuild_when = missing", "rebuild_when = stale"],
    )
    table.rows += [
        [
            "added p50 of POST /containers/create, present fresh image (µs)",
            cell(added["missing"], "+.0f"),
            cell(added["stale"], "+.0f"),
        ],
        ["proxy CPU per create+remove (µs)", cell(cpu["missing"]), cell(cpu["stale"])],
        [
            "POST /containers/create in process, the proxy's handler (µs)",
            f"{in_process['missing']:.2f}",
            f"{in_process['stale']:.2f} ({per_create:+.2f})",
        ],
        [
            f"an edit of an input to a fresh image, proactive, median of {len(edits)} (s)",
            "-",
            f"{statistics.median(edits):.2f} ({', '.join(f'{x:.2f}' for x in edits)})",
        ],
        [
            "the recipe's `docker build` alone, same edit (s)",
            "-",
            f"{statistics.median(alone):.2f} ({', '.join(f'{x:.2f}' for x in alone)})",
        ],
    ]
    table.notes += [
        f"Create: the create row's client and body (`{APP_PRESENT}`), {a.create_n // 2} pairs "
        f"per phase in blocks of {a.create_block} against direct; phases missing, stale, "
        f"stale, missing, each with the proxy restarted on its config (the `build` recipe for "
        f'`{APP_REPO}:{{tag}}`, plus `rebuild_when = "stale"` and `inputs = '
        '["Dockerfile"]` for stale). The image was built directly, after its Dockerfile: '
        "stale mode adopts it as fresh, and every create is judged from memory.",
        "In process: the proxy's whole create handler (`Interceptor.create`: the body, the "
        "recipe match, in stale mode the decision from memory, the answer) for a fresh tag "
        "with one managed base, the daemon's 201 given at once with no loop or socket; best "
        "of 5 x 100 000 per mode, interleaved: what stale mode adds to a create. The proxy's "
        f"CPU per pair is its process tree's (/proc, {procs.CLK_TCK} ticks/s) over each phase: "
        "less moved by other load than a latency.",
        "Edit to fresh: a `command` recipe (`docker build` of busybox + `src/msg`, legacy "
        'builder), `proactive = true`, `inputs_debounce = "1s"`; from writing `src/msg` to '
        "the tag naming a new image: the watch's 0.25 s batching, the debounce, the build.",
    ]
    b.tables.append(table)
    b.raw["stale"] = {
        "added_p50_us": added,
        "proxy_cpu_us_per_pair": cpu,
        "create_in_process_us": in_process,
        "edit_to_fresh_s": edits,
        "build_alone_s": alone,
    }
    b.bars.append(
        Bar(
            "create in process, stale against missing mode",
            f"{per_create:+.2f} µs",
            f"≤ {BAR_CREATE_US:.0f} µs (issue 22)",
            per_create <= BAR_CREATE_US,
        )
    )
    # Noise: how far apart one mode's own two phases came out, on this machine, now.
    # Noise wider than the proxy's whole added p50 resolves nothing: not measured.
    noise = max(BAR_SAME_P50_US, *(max(v) - min(v) for v in added.values()))
    resolved = noise < abs(missing)
    b.bars.append(
        Bar(
            "create p50 of a fresh image, stale against missing mode",
            f"{stale - missing:+.0f} µs",
            f"same within noise: |Δ| ≤ one mode's own spread, {noise:.0f} µs (issue 22)"
            if resolved
            else f"unresolved: one mode's own spread ({noise:.0f} µs) exceeds the proxy's "
            f"whole added p50 ({missing:+.0f} µs)",
            abs(stale - missing) <= noise if resolved else None,
        )
    )


MEASURE = Measure[Bench](
    "measure_stale",
    measure_stale,
    needs=frozenset({Need.PROXY, Need.IMAGES_KEPT}),
    effects=frozenset({Effect.RESTARTS_PROXY}),
)
