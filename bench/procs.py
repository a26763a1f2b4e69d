"""Start, watch and stop the processes the benchmark measures.

Everything here is private to one run: a dockerd with its own data/exec roots and
socket in a short tmp dir (Unix socket paths must stay under 108 bytes), the proxy,
HAProxy and socat, all listening on Unix sockets in that same dir. Each process is
started in its own session so teardown can signal exactly what this run started
(never anything found by name), and each one's output goes to a log file in the tmp
dir so a failed start can show why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import request_once

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """A started process, its log, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the process group this run created for it."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


PRIORITY = 0
"""Nice value for what this run starts; ``set_priority`` sets it for the whole run."""


def autogroup_nice(pid: int, nice: int) -> int | None:
    """Set the nice of ``pid``'s scheduler autogroup; return the previous value.

    With ``kernel.sched_autogroup_enabled`` the kernel shares CPU between sessions
    (autogroups) first and applies a process's own nice only inside its session, so
    ``os.nice`` alone does not lift a benchmark over other sessions' work. Every
    process here is started in its own session, so each gets its own autogroup.
    """
    path = Path(f"/proc/{pid}/autogroup")
    try:
        before = int(path.read_text().split("nice")[1])
        path.write_text(str(nice))
    except (OSError, IndexError, ValueError):
        return None
    return before


def set_priority(nice: int) -> int | None:
    """Raise this run's priority (inherited by children); returns the old autogroup nice."""
    global PRIORITY
    PRIORITY = nice
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return autogroup_nice(os.getpid(), nice)


def spawn(name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> Proc:
    log = tmp / f"{name}.log"
    fh = log.open("wb")
    try:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
            env=env,
        )
    finally:
        fh.close()
    if PRIORITY:
        autogroup_nice(p.pid, PRIORITY)
    return Proc(name, p, log)


def wait_ping(proc: Proc, sock: Path, timeout: float) -> None:
    """Poll ``GET /_ping`` until 200; fail fast if the process died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        if sock.exists():
            try:
                if request_once(str(sock)) == 200:
                    return
            except OSError as e:
                last = str(e)
        time.sleep(0.1)
    raise RuntimeError(
        f"{proc.name} did not answer /_ping in {timeout}s ({last}):\n{proc.log_tail()}"
    )


def dockerd_path() -> str:
    """``PATH`` for the daemon ``TEST_DOCKERD`` names, the tests' switch: ``20.10``
    (the machine's, the default) or ``26``, which the test harness's
    ``tests/releases.py`` fetches (Debian 13's, unpacked into a cache folder,
    never installed). The run's header names the daemon it got."""
    release = os.environ.get("TEST_DOCKERD", "20.10")
    if release not in ("20.10", "26"):
        raise SystemExit(f"TEST_DOCKERD must be 20.10 or 26 for a benchmark, not {release!r}")
    return str(_releases().release(release).path)


def cli_plugins() -> Path:
    """The folder holding ``docker-buildx``, as the tests fetch it (``releases.plugins``)."""
    return Path(_releases().plugins())


def _releases() -> Any:
    """The test harness's ``tests/releases.py``, which fetches daemons and CLI plugins."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import releases

    return releases


def start_dockerd(tmp: Path) -> tuple[Proc, Path]:
    """Start the private daemon (see ``dockerd_path``) with a config file of its own.

    ``--config-file`` keeps the machine's /etc/docker/daemon.json out of the run and
    gives ``set_dockerd_debug`` a file to rewrite: ``debug`` is one of the settings
    dockerd reloads on SIGHUP, so request logging can be on for a counting window
    only and never slow the timed rows.
    """
    sock = tmp / "docker.sock"
    (tmp / "daemon.json").write_text("{}\n")
    path = dockerd_path()
    argv = [
        shutil.which("dockerd", path=path) or "dockerd",
        "--config-file", str(tmp / "daemon.json"),
        "--data-root", str(tmp / "data"),
        "--exec-root", str(tmp / "exec"),
        "--pidfile", str(tmp / "pid"),
        "-H", f"unix://{sock}",
        "--bridge=none",
        "--iptables=false",
    ]  # fmt: skip
    p = spawn("dockerd", argv, tmp, env={**os.environ, "PATH": path})
    p.stop_timeout = 30.0
    wait_ping(p, sock, 60)
    return p, sock


def set_dockerd_debug(proc: Proc, tmp: Path, sock: Path, on: bool, timeout: float = 10.0) -> None:
    """Switch dockerd's debug log (one ``Calling METHOD PATH`` line per request) live.

    Rewrites the daemon's own config file and sends SIGHUP. dockerd logs
    "Reloaded configuration" before the new log level is in force (a count started
    on that line once missed the first request), so switching on returns only once
    a probe ``GET /_ping`` has been logged: a count that starts afterwards sees
    every request.
    """
    (tmp / "daemon.json").write_text('{"debug": %s}\n' % ("true" if on else "false"))
    offset = log_size(proc)
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Reloaded configuration" in log_since(proc, offset):
            if not on:
                return
            request_once(str(sock))
            if 'msg="Calling GET /_ping"' in log_since(proc, offset):
                return
        time.sleep(0.05)
    raise RuntimeError(f"dockerd did not reload its config in {timeout}s:\n{proc.log_tail()}")


def log_size(proc: Proc) -> int:
    """Where the process's log ends now; pass to ``log_since`` to read what follows."""
    try:
        return proc.log.stat().st_size
    except OSError:
        return 0


def log_since(proc: Proc, offset: int) -> str:
    with proc.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def start_proxy(tmp: Path, upstream: Path, config: Path | None) -> tuple[Proc, Path]:
    sock = tmp / "proxy.sock"
    argv = [
        sys.executable, "-m", "proxy", "serve",
        "--listen", f"unix://{sock}",
        "--upstream", f"unix://{upstream}",
        "--metrics-listen", "",
        "--log-level", "warning",
    ]  # fmt: skip
    if config is not None:
        argv += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = spawn("proxy", argv, tmp, env)
    wait_ping(p, sock, 30)
    return p, sock


HAPROXY_CFG = """\
# Generated by bench/run.py: HAProxy as an HTTP-aware keep-alive socket proxy,
# the same job docker-heal-proxy does (it must parse HTTP to see /containers/create).
global
    maxconn 4096
    nbthread {threads}

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 120s
    timeout server 120s

listen docker
    bind unix@{listen}
    server d unix@{upstream}
"""


def start_haproxy(tmp: Path, upstream: Path) -> tuple[Proc, Path]:
    sock = tmp / "haproxy.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(threads=os.cpu_count() or 1, listen=sock, upstream=upstream))
    p = spawn("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp)
    wait_ping(p, sock, 15)
    return p, sock


def start_socat(tmp: Path, upstream: Path) -> tuple[Proc, Path]:
    sock = tmp / "socat.sock"
    argv = [
        "socat",
        f"UNIX-LISTEN:{sock},fork,unlink-early,backlog=128",
        f"UNIX-CONNECT:{upstream}",
    ]
    p = spawn("socat", argv, tmp)
    wait_ping(p, sock, 15)
    return p, sock


# ---------------------------------------------------------------- CPU and memory


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses; everything after the last ')' is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def tree_cpu(root: int) -> dict[int, float]:
    """User+system CPU seconds of ``root`` and each live descendant, by pid.

    Descendants matter for socat (one forked child per connection) and dockerd
    (containerd). Kept per pid so a window can diff pid by pid: a child that exits
    mid-window must not make the tree's total go down.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        parents[int(entry)] = int(f[1])
        cpu[int(entry)] = (int(f[11]) + int(f[12])) / CLK_TCK
    keep = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return {p: cpu[p] for p in keep if p in cpu}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU burnt between two ``tree_cpu`` samples by pids alive at the second one."""
    return sum(v - before.get(p, 0.0) for p, v in after.items())


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies from /proc/stat, for the machine-wide idle share."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return float(total - idle), float(total)


def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


@dataclass
class CpuWindow:
    """CPU used by dockerd, the middle process tree and nobody (idle) in one window.

    Passed to ``loadgen.run_load`` as ``on_window`` so it samples at exactly the
    measured window's edges, in the parent, while the workers run.
    """

    dockerd: int
    middle: int | None
    dockerd_s: float = 0.0
    middle_s: float = 0.0
    idle_frac: float = 0.0
    """Unused share of all cores, 0..1."""
    busy_s: float = 0.0
    """CPU seconds used machine-wide, by anyone, in the window."""

    def _sample(self) -> tuple[dict[int, float], dict[int, float], float, float]:
        busy, total = machine_cpu()
        mid = tree_cpu(self.middle) if self.middle else {}
        return tree_cpu(self.dockerd), mid, busy, total

    def __call__(self, t_start: int, t_end: int) -> None:
        sleep_until(t_start)
        d0, m0, b0, t0 = self._sample()
        sleep_until(t_end)
        d1, m1, b1, t1 = self._sample()
        self.dockerd_s, self.middle_s = cpu_delta(d0, d1), cpu_delta(m0, m1)
        self.busy_s = (b1 - b0) / CLK_TCK
        self.idle_frac = 1 - (b1 - b0) / max(1.0, t1 - t0)


def background_cpu(seconds: float = 1.0) -> float:
    """Cores in use on the machine over ``seconds`` before the run (other tenants)."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return (b1 - b0) / max(1.0, t1 - t0) * (os.cpu_count() or 1)


def status_kb(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/PID/status, in kB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class RssSampler:
    """Samples VmRSS of one pid in a thread, to see memory while a large body streams."""

    pid: int
    interval: float = 0.02
    peak_kb: int = 0
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = status_kb(self.pid, "VmRSS")
            self.samples.append(kb)
            self.peak_kb = max(self.peak_kb, kb)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def unmount_under(path: Path) -> None:
    """Lazily unmount anything dockerd left mounted under our tmp dir before rm -rf."""
    prefix = str(path) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)
