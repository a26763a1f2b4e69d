"""``docker build`` FROM a pruned managed base, through the proxy.

NanoClaw makes a per-group image the first time a group wakes, with a
Dockerfile that starts FROM the managed base. After a prune that took the
base, the build must heal the base first and then succeed, for the CLI's
classic builder (CLI 28 without buildx needs ``DOCKER_BUILDKIT=0``) and for
docker-py, and must not get worse for builds that need no heal.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pwd
import signal
import socket
import stat
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker as docker_py
import pytest
from support import (
    Dockerd,
    MakeProxy,
    Proxy,
    UnixHTTPConnection,
    accepting,
    build_calls,
    docker,
    free_port,
    image_exists,
    line_count,
    log_problems,
    log_size,
    parse_workers,
    proc_ids,
    remove,
    tagging_script,
    toml_string,
    wait_for,
    write_script,
)

BASE = "127.0.0.1:1/dhp/buildbase:latest"
AGENT = "127.0.0.1:1/dhp/buildagent"
DOCKERFILE = f"FROM {BASE}\nARG GROUP\nLABEL group=$GROUP\n"


def seed_config(tmp_path: Path, busybox: str, base_script: Path | None = None) -> str:
    """The seed: a base made by a script, per-group images built FROM it."""
    script = base_script or tagging_script(
        tmp_path / "base.sh", tmp_path / "base.marker", busybox, BASE
    )
    ctx = tmp_path / "agentctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile.{group}").write_text(DOCKERFILE)
    return f"""
state_dir = {toml_string(tmp_path / "state")}
[[images]]
match = {toml_string(BASE)}
command = [{toml_string(script)}]
[[images]]
match = "{AGENT}:{{group}}"
build = {{ context = {toml_string(ctx)}, dockerfile = "Dockerfile.{{group}}" }}
"""


def broken_seed(make_proxy: MakeProxy, tmp_path: Path, busybox: str, script: str) -> Proxy:
    """The seed, with a base recipe that fails."""
    broken = write_script(tmp_path / "broken.sh", script)
    return make_proxy(seed_config(tmp_path, busybox, broken))


def late_dockerfile(tmp_path: Path, mib: int) -> tuple[Path, Path]:
    """A context of ``mib`` MiB and a Dockerfile outside it, which the CLI sends last."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data.bin").write_bytes(os.urandom(mib << 20))
    outside = tmp_path / "Dockerfile.late"
    outside.write_text(DOCKERFILE)
    return ctx, outside


BUILD_HEAD = (
    b"POST /v1.41/build?dockerfile=Dockerfile HTTP/1.1\r\nHost: docker\r\n"
    b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
)
"""A build's head as a client that streams its context sends it."""


def legacy(proxy: Proxy) -> dict[str, str]:
    """The CLI's classic builder: what CLI 28 without buildx falls back to."""
    return {**proxy.env, "DOCKER_BUILDKIT": "0"}


def group_context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile.newgroup").write_text(DOCKERFILE)
    (ctx / "payload.txt").write_text("hello\n")
    return ctx


def group_label(dockerd: Dockerd, image: str) -> str:
    result = docker(["image", "inspect", "-f", "{{.Config.Labels.group}}", image], env=dockerd.env)
    return result.stdout.decode().strip()


def spool_files(tmp_path: Path, proxy: Proxy) -> list[str]:
    """Spool files by name, and any the proxy still holds open unlinked."""
    folder = tmp_path / "state" / "spool"
    named = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    held = []
    fds = Path(f"/proc/{proxy.proc.pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if str(folder) in target:
            held.append(target)
    return named + held


def test_cli_build_from_a_pruned_base_heals_it_first(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    port = free_port()
    proxy = make_proxy(seed_config(tmp_path, busybox), args=[f"--metrics-listen=127.0.0.1:{port}"])
    ctx = group_context(tmp_path)
    tag = f"{AGENT}:newgroup"
    remove(dockerd.env, BASE, tag)

    result = docker(
        [
            "build",
            "-t",
            tag,
            "-f",
            str(ctx / "Dockerfile.newgroup"),
            "--build-arg",
            "GROUP=newgroup",
            str(ctx),
        ],
        env=legacy(proxy),
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert line_count(tmp_path / "base.marker") == 1
    assert group_label(dockerd, tag) == "newgroup"
    assert spool_files(tmp_path, proxy) == []
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert (
        f'docker_heal_proxy_heals_total{{image="{BASE}",result="success",source="recipe",'
        'trigger="build"} 1.0' in metrics.decode()
    )


def test_cli_build_with_the_dockerfile_outside_the_context(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The CLI appends the Dockerfile after every context entry, as
    ``.dockerfile.<random>``: the whole context is spooled first."""
    proxy = make_proxy(seed_config(tmp_path, busybox))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data.bin").write_bytes(os.urandom(3 << 20))
    outside = tmp_path / "elsewhere" / "Dockerfile.newgroup"
    outside.parent.mkdir()
    outside.write_text(DOCKERFILE + "COPY data.bin /data.bin\n")
    tag = f"{AGENT}:outside"
    remove(dockerd.env, BASE, tag)
    since = log_size(dockerd.log_path)

    result = docker(
        ["build", "-t", tag, "-f", str(outside), str(ctx)], env=legacy(proxy), check=False
    )

    assert result.returncode == 0, result.stderr.decode()
    assert line_count(tmp_path / "base.marker") == 1
    calls = build_calls(dockerd, tag, since)
    assert len(calls) == 1
    assert calls[0].query["dockerfile"][0].startswith(".dockerfile.")
    size = docker(["run", "--rm", tag, "wc", "-c", "/data.bin"], env=dockerd.env)
    assert size.stdout.split()[0] == str(3 << 20).encode()
    assert spool_files(tmp_path, proxy) == []


def context_tar(*entries: tarfile.TarInfo | tuple[str, str]) -> bytes:
    """A build context as a client that makes its own tar sends it."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            info = tarfile.TarInfo(entry[0])
            info.size = len(entry[1].encode())
            tar.addfile(info, io.BytesIO(entry[1].encode()))
    return archive.getvalue()


def py_build(proxy: Proxy, context: bytes, tag: str, **kwargs: object) -> list[str]:
    """docker-py's ``images.build`` of a custom context through the proxy: the tags made."""
    client = docker_py.DockerClient(base_url=proxy.url)
    try:
        image, _ = client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, **kwargs
        )
    finally:
        client.close()
    return list(image.tags)


@pytest.mark.parametrize(
    ("compress", "encoding"),
    [(gzip.compress, "gzip"), (bz2.compress, None), (lzma.compress, None)],
    ids=["gzip", "bzip2", "xz"],
)
def test_docker_py_build_with_a_compressed_context(
    compress: Callable[[bytes], bytes],
    encoding: str | None,
    dockerd: Dockerd,
    busybox: str,
    make_proxy: MakeProxy,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(seed_config(tmp_path, busybox))
    tag = f"{AGENT}:py"
    remove(dockerd.env, BASE, tag)
    context = compress(context_tar(("build/Dockerfile.py", DOCKERFILE)))

    tags = py_build(
        proxy,
        context,
        tag,
        encoding=encoding,
        dockerfile="build/Dockerfile.py",
        buildargs={"GROUP": "py"},
    )

    assert tag in tags
    assert line_count(tmp_path / "base.marker") == 1
    assert group_label(dockerd, tag) == "py"


def test_one_gigabyte_context_with_the_dockerfile_last_in_flat_memory(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = make_proxy(seed_config(tmp_path, busybox))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with (ctx / "big.bin").open("wb") as big:
        big.truncate(1 << 30)  # sparse on disk; the CLI still sends every byte
    (ctx / "zz.Dockerfile").write_text(DOCKERFILE)
    tag = f"{AGENT}:big"
    remove(dockerd.env, BASE, tag)

    result = docker(
        ["build", "-q", "-t", tag, "-f", str(ctx / "zz.Dockerfile"), str(ctx)],
        env=legacy(proxy),
        check=False,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert line_count(tmp_path / "base.marker") == 1
    status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 100 * 1024, f"the proxy's peak RSS was {peak_kib} KiB"
    assert spool_files(tmp_path, proxy) == []


def test_a_build_from_an_unmanaged_missing_image_gets_the_daemons_error(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = make_proxy(seed_config(tmp_path, busybox))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM 127.0.0.1:1/dhp/nobody-makes-this:1\n")
    direct = docker(["build", str(ctx)], env={**dockerd.env, "DOCKER_BUILDKIT": "0"}, check=False)
    proxied = docker(["build", str(ctx)], env=legacy(proxy), check=False)

    assert direct.returncode != 0
    assert (proxied.returncode, proxied.stdout, proxied.stderr) == (
        direct.returncode,
        direct.stdout,
        direct.stderr,
    )
    assert line_count(tmp_path / "base.marker") == 0


def test_a_broken_base_recipe_fails_the_build_with_the_reason(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = broken_seed(make_proxy, tmp_path, busybox, "echo 'no compiler here' >&2\nexit 3\n")
    ctx = group_context(tmp_path)
    (ctx / "filler.bin").write_bytes(os.urandom(8 << 20))  # more than the proxy reads ahead
    tag = f"{AGENT}:broken"
    remove(dockerd.env, BASE, tag)

    result = docker(
        ["build", "-t", tag, "-f", str(ctx / "Dockerfile.newgroup"), str(ctx)],
        env=legacy(proxy),
        check=False,
    )

    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert f"cannot heal {BASE}" in stderr, stderr
    assert "exited with status 3" in stderr, stderr
    assert "no compiler here" in stderr, stderr
    assert "broken pipe" not in stderr, stderr
    assert not image_exists(dockerd.env, tag)
    assert spool_files(tmp_path, proxy) == []


def test_a_dockerfile_beyond_max_build_spool_goes_on_unhealed(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The build then behaves as it would directly: the daemon tries a pull."""
    config = seed_config(tmp_path, busybox).replace(
        "[[images]]", '[heal]\nmax_build_spool = "256KiB"\n[[images]]', 1
    )
    proxy = make_proxy(config)
    ctx, outside = late_dockerfile(tmp_path, 2)
    remove(dockerd.env, BASE)

    result = docker(["build", "-f", str(outside), str(ctx)], env=legacy(proxy), check=False)

    assert result.returncode != 0
    assert b"127.0.0.1:1" in result.stderr  # the daemon's own pull error
    assert line_count(tmp_path / "base.marker") == 0
    assert "forwarded unhealed: no Dockerfile in the first 262144 bytes" in proxy.log()
    assert spool_files(tmp_path, proxy) == []


def test_leftover_spool_files_are_swept_at_start_and_the_folder_is_private(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    folder = tmp_path / "state" / "spool"
    folder.mkdir(parents=True)
    (folder / "build-killed").write_bytes(b"a context a SIGKILL left")
    proxy = make_proxy(seed_config(tmp_path, busybox))
    assert spool_files(tmp_path, proxy) == []
    ctx = group_context(tmp_path)
    docker(["build", "-q", "-f", str(ctx / "Dockerfile.newgroup"), str(ctx)], env=legacy(proxy))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_client_that_leaves_mid_body_leaves_nothing_behind(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = make_proxy(seed_config(tmp_path, busybox))
    fds = Path(f"/proc/{proxy.proc.pid}/fd")
    before = len(list(fds.iterdir()))
    piece = os.urandom(1 << 16)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(proxy.socket)
            sock.sendall(BUILD_HEAD)
            info = tarfile.TarInfo("big.bin")
            info.size = 8 << 20
            sock.sendall(chunk(info.tobuf(tarfile.PAX_FORMAT)))
            for _ in range(32):
                sock.sendall(chunk(piece))
    wait_for(
        lambda: len(list(fds.iterdir())) <= before and spool_files(tmp_path, proxy) == [],
        10,
        "the proxy to close what it opened",
    )
    assert log_problems(proxy.log()) == []
    assert accepting(proxy)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_dockerfile_that_is_a_symlink_is_resolved_inside_the_archive(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    proxy = make_proxy(seed_config(tmp_path, busybox))
    tag = f"{AGENT}:linked"
    remove(dockerd.env, BASE, tag)
    link = tarfile.TarInfo("Dockerfile")
    link.type = tarfile.SYMTYPE
    link.linkname = "/real/../real/Dockerfile.real"

    tags = py_build(proxy, context_tar(link, ("real/Dockerfile.real", DOCKERFILE)), tag)

    assert tag in tags
    assert line_count(tmp_path / "base.marker") == 1


def test_a_failed_heal_is_answered_only_after_the_whole_body(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """A client still writing its context would see a broken pipe, not the reason."""
    proxy = broken_seed(make_proxy, tmp_path, busybox, "exit 3\n")
    remove(dockerd.env, BASE)
    context = context_tar(("Dockerfile", DOCKERFILE), ("after", "x" * 4096))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(proxy.socket)
        sock.sendall(BUILD_HEAD + chunk(context[:2048]))
        wait_for(lambda: f"heal of {BASE} failed" in proxy.log(), 30, "the heal to fail")
        sock.settimeout(1)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no answer for a while: the body is not over
        sock.settimeout(30)
        sock.sendall(chunk(context[2048:]) + b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}\n"):
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert f"cannot heal {BASE}".encode() in answer


def test_a_full_disk_under_the_spool_leaves_the_build_unhealed(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The build succeeds as it would directly: nothing read is lost."""
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        proxy = make_proxy(seed_config(tmp_path, busybox))
        ctx, outside = late_dockerfile(tmp_path, 4)
        outside.write_text(f"FROM {busybox}\nCOPY data.bin /data.bin\n")

        result = docker(
            ["build", "-q", "-f", str(outside), str(ctx)], env=legacy(proxy), check=False
        )

        assert result.returncode == 0, result.stderr.decode()
        assert "cannot spool its context: [Errno 28] No space left on device" in proxy.log()
        assert log_problems(proxy.log()) == []
        proxy.stop()
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_the_base_named_by_a_build_arg_is_healed(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """``FROM $BASE`` with an ARG default that no recipe makes, overridden by a
    build arg that names the managed base."""
    proxy = make_proxy(seed_config(tmp_path, busybox))
    tag = f"{AGENT}:args"
    remove(dockerd.env, BASE, tag)
    dockerfile = "ARG BASE=127.0.0.1:1/dhp/nobody-makes-this:1\nFROM ${BASE}\nLABEL group=args\n"

    tags = py_build(proxy, context_tar(("Dockerfile", dockerfile)), tag, buildargs={"BASE": BASE})

    assert tag in tags
    assert line_count(tmp_path / "base.marker") == 1


def test_without_a_spool_the_build_goes_on_unhealed(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "spool").write_text("a file where the spool folder should be")
    proxy = make_proxy(seed_config(tmp_path, busybox))
    ctx, _ = late_dockerfile(tmp_path, 4)
    (ctx / "Dockerfile").write_text(f"FROM {busybox}\nCOPY data.bin /data.bin\n")

    result = docker(["build", "-q", str(ctx)], env=legacy(proxy), check=False)

    assert result.returncode == 0, result.stderr.decode()
    assert "forwarded unhealed: no spool file" in proxy.log()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_process(proxy: Proxy) -> int:
    """The proxy's parse process for build bodies, once a build has started it."""
    workers = parse_workers(proxy)
    assert "builds" in workers, f"the proxy has no parse process for builds: {workers}"
    return workers["builds"]


def test_a_dockerfile_slow_to_parse_neither_stalls_the_proxy_nor_heals(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The parse runs in a process of its own: pings are answered meanwhile,
    and past its deadline the build goes on unhealed."""
    proxy = make_proxy(seed_config(tmp_path, busybox))
    py_build(proxy, context_tar(("Dockerfile", f"FROM {busybox}\n")), f"{AGENT}:warm")
    parser = parse_process(proxy)
    idle = cpu_seconds(parser)
    remove(dockerd.env, BASE)
    heredoc = "RUN <<EOF\n" + "x\n" * (250 << 9) + "EOF\n"  # about 6 CPU-seconds to parse
    context = context_tar(("Dockerfile", f"FROM {BASE}\n{heredoc}"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(proxy.socket)
        sock.sendall(BUILD_HEAD + chunk(context) + b"0\r\n\r\n")
        wait_for(lambda: cpu_seconds(parser) > idle + 0.05, 60, "the parse to be under way")
        conn = UnixHTTPConnection(proxy.socket, timeout=60)
        conn.request("GET", "/_ping")
        assert conn.getresponse().status == 200
        conn.close()
        assert "unparsed Dockerfile" not in proxy.log()  # answered while it parsed
        sock.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 ")  # the daemon's own answer
    assert "forwarded unhealed: unparsed Dockerfile: it took over 2s" in proxy.log()
    assert line_count(tmp_path / "base.marker") == 0
    assert accepting(proxy)


def test_a_parser_that_crashes_leaves_the_proxy_serving_and_is_replaced(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """The worker runs as nobody, not root. Killed by SIGSEGV mid-parse (what
    a parser crash looks like), its build goes on unhealed with the reason;
    the proxy answers meanwhile, and the next build gets a new worker."""
    proxy = make_proxy(seed_config(tmp_path, busybox))
    py_build(proxy, context_tar(("Dockerfile", f"FROM {busybox}\n")), f"{AGENT}:warm")
    parser = parse_process(proxy)
    assert proc_ids(parser) == [pwd.getpwnam("nobody").pw_uid] * 4
    idle = cpu_seconds(parser)
    remove(dockerd.env, BASE)
    heredoc = "RUN <<EOF\n" + "x\n" * (250 << 9) + "EOF\n"  # seconds to parse
    context = context_tar(("Dockerfile", f"FROM {BASE}\n{heredoc}"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(proxy.socket)
        sock.sendall(BUILD_HEAD + chunk(context) + b"0\r\n\r\n")
        wait_for(lambda: cpu_seconds(parser) > idle + 0.05, 60, "the parse to be under way")
        os.kill(parser, signal.SIGSEGV)
        sock.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 ")  # the daemon's own answer
    assert "unparsed Dockerfile: the parser process died (exit code -" in proxy.log()  # by a signal
    assert accepting(proxy)
    tag = f"{AGENT}:after"
    assert tag in py_build(proxy, context_tar(("Dockerfile", DOCKERFILE)), tag)
    assert line_count(tmp_path / "base.marker") == 1  # healed: a new worker parsed it
    assert parse_process(proxy) != parser


def metric(port: int, name: str) -> float:
    """One unlabelled sample of the proxy's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics")


def chunked_answer(sock: socket.socket) -> bytes:
    """A whole chunked answer (a build's JSON stream), read to its last chunk."""
    answer = b""
    while not answer.endswith(b"0\r\n\r\n") and (data := sock.recv(65536)):
        answer += data
    return answer


def test_builds_past_the_total_spool_budget_go_on_unhealed(
    dockerd: Dockerd, busybox: str, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """Three builds spool 400 KiB each, one after the other, under a total of
    1 MiB: the third would pass it, so it goes on unhealed at once; the first
    two heal their bases once their Dockerfiles arrive."""
    port = free_port()
    bases = [f"127.0.0.1:1/dhp/spoolbase-{n}:1" for n in "abc"]
    recipes = "".join(
        f"[[images]]\nmatch = {toml_string(base)}\ncommand = [{toml_string(script)}]\n"
        for base, script in (
            (base, tagging_script(tmp_path / f"{n}.sh", tmp_path / f"{n}.marker", busybox, base))
            for n, base in zip("abc", bases, strict=True)
        )
    )
    proxy = make_proxy(
        f"state_dir = {toml_string(tmp_path / 'state')}\n"
        f'[heal]\nmax_build_spool_total = "1MiB"\n{recipes}',
        args=[f"--metrics-listen=127.0.0.1:{port}"],
    )
    remove(dockerd.env, *bases)
    data = 400 << 10
    bodies = [context_tar(("data.bin", "x" * data), ("Dockerfile", f"FROM {b}\n")) for b in bases]
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in bases]
    try:
        for n, (sock, body) in enumerate(zip(socks, bodies, strict=True)):
            sock.connect(proxy.socket)
            sock.sendall(BUILD_HEAD + chunk(body[: 512 + data]))
            if n < 2:
                wait_for(
                    lambda n=n: (
                        metric(port, "docker_heal_proxy_build_spool_bytes") >= (n + 1) * data
                    ),
                    30,
                    f"build {n + 1} to be spooled",
                )
        wait_for(lambda: "max_build_spool_total" in proxy.log(), 30, "the third to go on")
        for sock in socks:
            sock.settimeout(60)
        # The third first: what it spooled before it went over is its share of
        # the budget until its request has gone upstream and its spool is closed.
        socks[2].sendall(chunk(bodies[2][512 + data :]) + b"0\r\n\r\n")
        third = chunked_answer(socks[2])
        framed = len(chunk(bodies[0][: 512 + data]))  # what each spooled: chunk framing too
        wait_for(
            lambda: metric(port, "docker_heal_proxy_build_spool_bytes") == 2 * framed,
            30,
            "the third's spool to be closed",
        )
        for sock, body in zip(socks[:2], bodies[:2], strict=True):
            sock.sendall(chunk(body[512 + data :]) + b"0\r\n\r\n")
        answers = [*(chunked_answer(sock) for sock in socks[:2]), third]
    finally:
        for sock in socks:
            sock.close()
    assert [line_count(tmp_path / f"{n}.marker") for n in "abc"] == [1, 1, 0]
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert b"errorDetail" not in answers[0] and b"errorDetail" not in answers[1]
    assert b"errorDetail" in answers[2]  # the daemon's own answer: it has no such base
    assert metric(port, "docker_heal_proxy_builds_over_spool_budget_total") == 1
    assert metric(port, "docker_heal_proxy_build_spool_bytes") == 0
    assert spool_files(tmp_path, proxy) == []
    assert log_problems(proxy.log()) == []
