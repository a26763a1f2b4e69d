"""Stale mode: a managed image whose sources changed is rebuilt before it runs.

Real dockerd, real docker CLI. Edits are made to files as a ``git pull``
would make them; images are tagged, built and loaded by hand on the
daemon's own socket, as a person (or a script next to the proxy) would.
Where a test waits for the proxy to have seen an edit, it waits for
``status`` to list the tag as stale: the watch takes a moment, and a
create in that moment runs the image the edit has not reached yet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import (
    BUSYBOX,
    Dockerd,
    MakeProxy,
    Proxy,
    api_calls,
    build_calls,
    docker,
    docker_run,
    free_port,
    heal_settings,
    heal_status,
    is_build_of,
    line_count,
    log_size,
    metric,
    proxy_cli,
    remove,
    toml_string,
    wait_for,
    write_script,
)

REBUILD_TIME = 120


def image_id(env: dict[str, str], image: str) -> str:
    return docker(["image", "inspect", "-f", "{{.Id}}", image], env=env).stdout.decode().strip()


def stale_tags(proxy: Proxy) -> dict[str, str]:
    return dict(heal_status(proxy)["stale"]["stale"])


def prints(proxy: Proxy, image: str) -> str:
    result = docker_run(image, proxy.env, "cat", "/msg")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def build_context(folder: Path, message: str = "v1", base: str = BUSYBOX) -> Path:
    """A context whose image prints ``src/msg`` (copied to /msg), FROM ``base``."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "src" / "msg").write_text(message + "\n")
    (folder / "data").mkdir(exist_ok=True)
    # Other tests' build cache is kept out: a cache hit has an older Created. The
    # label does it for the classic builder; BuildKit keys a COPY by content, not
    # by a label, so a file naming the folder is copied first.
    (folder / "folder").write_text(f"{folder}\n")
    (folder / "Dockerfile").write_text(
        f"FROM {base}\nLABEL test={folder}\nCOPY folder /folder\nCOPY src/msg /msg\n"
    )
    return folder


def build_config(tmp_path: Path, image: str, ctx: Path, *extra: str, **heal: str) -> str:
    lines = "".join(f"{line}\n" for line in extra)
    return f"""{heal_settings(tmp_path, **heal)}
[[images]]
match = {toml_string(image)}
rebuild_when = "stale"
inputs = ["src", "Dockerfile"]
build = {{ context = {toml_string(ctx)} }}
{lines}"""


def edit(path: Path, text: str) -> None:
    """Change a file as an editor saving it would: a new mtime, new content."""
    path.write_text(text + "\n")


def test_one_rebuild_for_a_changed_input(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-one:latest"
    ctx = build_context(tmp_path / "ctx")
    remove(dockerd.env, image)
    port = free_port()
    proxy = make_proxy(
        build_config(tmp_path, image, ctx), args=[f"--metrics-listen=127.0.0.1:{port}"]
    )
    assert prints(proxy, image) == "v1"
    first = image_id(dockerd.env, image)
    since = log_size(dockerd.log_path)
    assert prints(proxy, image) == "v1"
    assert image_id(dockerd.env, image) == first
    assert build_calls(dockerd, image, since) == [], "an unchanged input rebuilt"
    # A create of the fresh image is judged from memory: no inspect, no image list.
    wait_for(lambda: heal_status(proxy)["stale"]["tag_map"] == "current", 30, "the tag map")
    calls = log_size(dockerd.log_path)
    created = docker(["create", "--network=none", image, "true"], env=proxy.env)
    asked = [call.path for call in api_calls(dockerd, calls)]
    docker(["rm", created.stdout.decode().strip()], env=dockerd.env)
    assert "/containers/create" in asked
    assert not [path for path in asked if path.startswith("/images")], asked
    (ctx / "data" / "db").write_text("written at run time, not an input\n")

    edit(ctx / "src" / "msg", "v2")
    wait_for(lambda: image in stale_tags(proxy), 30, "the proxy to see the edit")
    assert stale_tags(proxy)[image] == "src/msg changed"
    assert metric(port, "docker_heal_proxy_stale_images") == 1
    assert prints(proxy, image) == "v2"
    assert len(build_calls(dockerd, image, since)) == 1, "exactly one rebuild"
    assert prints(proxy, image) == "v2"
    assert len(build_calls(dockerd, image, since)) == 1
    assert stale_tags(proxy) == {}
    assert metric(port, "docker_heal_proxy_heals_total", trigger="stale", result="success") == 1


def test_a_base_input_change_rebuilds_the_base_then_the_group_image(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    base = "127.0.0.1:1/dhp/stale-base:latest"
    group = "127.0.0.1:1/dhp/stale-agent:g1"
    basectx = build_context(tmp_path / "basectx", "base-v1")
    agentctx = tmp_path / "agentctx"
    agentctx.mkdir()
    (agentctx / "Dockerfile").write_text(f"FROM {base}\nARG GROUP\nLABEL group=$GROUP\n")
    config = (
        build_config(tmp_path, base, basectx)
        + f"""
[[images]]
match = "127.0.0.1:1/dhp/stale-agent:{{group}}"
rebuild_when = "stale"
inputs = ["Dockerfile"]
build = {{ context = {toml_string(agentctx)}, args = {{ GROUP = "{{group}}" }} }}
"""
    )
    remove(dockerd.env, group, base)
    proxy = make_proxy(config)
    assert prints(proxy, group) == "base-v1"
    since = log_size(dockerd.log_path)

    edit(basectx / "src" / "msg", "base-v2")
    wait_for(lambda: group in stale_tags(proxy), 30, "the group image to be stale")
    assert stale_tags(proxy)[group] == f"its base {base} is stale: src/msg changed"
    assert prints(proxy, group) == "base-v2"
    calls = api_calls(dockerd, since)
    base_builds = [i for i, call in enumerate(calls) if is_build_of(call, base)]
    group_builds = [i for i, call in enumerate(calls) if is_build_of(call, group)]
    assert len(base_builds) == len(group_builds) == 1
    assert base_builds[0] < group_builds[0], "the group was rebuilt before its base"
    assert stale_tags(proxy) == {}


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_a_build_from_a_stale_base_rebuilds_the_base_first(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path, builder: str
) -> None:
    """Classic: the body carries the Dockerfile. BuildKit: the /session relay holds it; the
    second build of the unchanged folder is the one dockerd 20.10 does not send it again for,
    so its text is the one the proxy remembered from the first."""
    base = "127.0.0.1:1/dhp/stale-buildbase:latest"
    built = "127.0.0.1:1/dhp/stale-client:1"
    basectx = build_context(tmp_path / "basectx", "base-v1")
    client = tmp_path / "client"
    client.mkdir()
    # No RUN: the daemon has no bridge for BuildKit's. The base's /msg is in the image.
    (client / "Dockerfile").write_text(f"FROM {base}\nLABEL client={client}\n")
    remove(dockerd.env, base)
    proxy = make_proxy(build_config(tmp_path, base, basectx))
    env = {**proxy.env, "DOCKER_BUILDKIT": "0" if builder == "classic" else "1"}
    docker(["build", "-q", "-t", built, str(client)], env=env)
    assert docker_run(built, dockerd.env, "cat", "/msg").stdout.decode().strip() == "base-v1"

    edit(basectx / "src" / "msg", "base-v2")
    wait_for(lambda: base in stale_tags(proxy), 30, "the proxy to see the edit")
    since = log_size(dockerd.log_path)
    docker(["build", "-q", "-t", built, str(client)], env=env)
    assert len(build_calls(dockerd, base, since)) == 1, "the base was not rebuilt first"
    assert docker_run(built, dockerd.env, "cat", "/msg").stdout.decode().strip() == "base-v2"
    assert stale_tags(proxy) == {}


def command_recipe(tmp_path: Path, image: str, *extra: str, **heal: str) -> tuple[str, Path, Path]:
    """A command recipe that builds ``image`` from ``src/msg`` and fails when it says
    "broken". Returns the config, the source folder and the run marker."""
    work = tmp_path / "work"
    build_context(work)
    marker = tmp_path / "runs"
    script = write_script(
        tmp_path / "build.sh",
        f'set -e\necho run >> "{marker}"\n'
        'if grep -q broken src/msg; then echo "the sources are broken" >&2; exit 3; fi\n'
        f"docker build -q -t {image} .\n",
    )
    lines = "".join(f"{line}\n" for line in extra)
    config = f"""{heal_settings(tmp_path, **heal)}
[[images]]
match = {toml_string(image)}
rebuild_when = "stale"
inputs = ["src", "Dockerfile"]
command = [{toml_string(script)}]
workdir = {toml_string(work)}
{lines}"""
    return config, work, marker


def edited_after_a_run(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path, image: str, text: str, *extra: str
) -> tuple[Proxy, Path]:
    """A command recipe's image run once (v1), then its source edited to ``text``
    and seen by the proxy. Returns the proxy and the recipe's run marker."""
    config, work, marker = command_recipe(tmp_path, image, *extra)
    remove(dockerd.env, image)
    proxy = make_proxy(config)
    assert prints(proxy, image) == "v1"
    edit(work / "src" / "msg", text)
    wait_for(lambda: image in stale_tags(proxy), 30, "the proxy to see the edit")
    return proxy, marker


def test_a_failed_rebuild_runs_the_old_image_under_rebuild(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-fail:latest"
    proxy, marker = edited_after_a_run(dockerd, make_proxy, tmp_path, image, "broken")
    assert prints(proxy, image) == "v1", "the old image still works"
    assert line_count(marker) == 2
    failed = heal_status(proxy)["stale"]["failed_rebuilds"][image]
    assert "the sources are broken" in failed


def test_a_failed_rebuild_fails_the_create_under_strict(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-strict:latest"
    strict = 'on_stale = "strict"'
    proxy, marker = edited_after_a_run(dockerd, make_proxy, tmp_path, image, "broken", strict)
    result = docker_run(image, proxy.env, "cat", "/msg")
    assert result.returncode != 0
    assert "the sources are broken" in result.stderr.decode()
    assert "Unable to find image" not in result.stderr.decode()
    assert line_count(marker) == 2


def test_background_runs_the_old_image_at_once_and_rebuilds_behind_it(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-background:latest"
    behind = 'on_stale = "background"'
    proxy, marker = edited_after_a_run(dockerd, make_proxy, tmp_path, image, "v2", behind)
    assert prints(proxy, image) == "v1", "background runs the old image at once"
    wait_for(lambda: line_count(marker) == 2 and stale_tags(proxy) == {}, REBUILD_TIME, "rebuild")
    assert prints(proxy, image) == "v2"


def test_proactive_rebuilds_with_no_client(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-proactive:latest"
    config, work, marker = command_recipe(tmp_path, image, "proactive = true", inputs_debounce="1s")
    remove(dockerd.env, image)
    proxy = make_proxy(config)
    wait_for(lambda: line_count(marker) == 1, REBUILD_TIME, "the proactive first build")
    wait_for(lambda: not heal_status(proxy)["in_progress"], 60, "the first build to end")
    first = image_id(dockerd.env, image)
    edited = time.monotonic()
    edit(work / "src" / "msg", "v2")
    wait_for(lambda: image_id(dockerd.env, image) != first, REBUILD_TIME, "the proactive rebuild")
    print(f"input change to fresh image: {time.monotonic() - edited:.1f}s")
    wait_for(lambda: not heal_status(proxy)["in_progress"], 60, "the rebuild to end")
    assert line_count(marker) == 2
    assert prints(proxy, image) == "v2"
    assert line_count(marker) == 2, "the next run started no recipe"


def test_an_edit_during_a_rebuild_leads_to_one_more(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-during:latest"
    work = build_context(tmp_path / "work")
    marker, gate = tmp_path / "runs", tmp_path / "gate"
    # The recipe copies its sources first, then waits: an edit lands mid-build.
    script = write_script(
        tmp_path / "build.sh",
        f'set -e\necho run >> "{marker}"\nsnap=$(mktemp -d)\ncp -r . "$snap"\n'
        f'while [ ! -e "{gate}" ]; do sleep 0.05; done\n'
        f'docker build -q -t {image} "$snap"\nrm -rf "$snap"\n',
    )
    config = f"""
state_dir = {toml_string(tmp_path / "state")}
[heal]
inputs_debounce = "1s"
[[images]]
match = {toml_string(image)}
rebuild_when = "stale"
proactive = true
inputs = ["src", "Dockerfile"]
command = [{toml_string(script)}]
workdir = {toml_string(work)}
"""
    remove(dockerd.env, image)
    gate.touch()
    proxy = make_proxy(config)
    wait_for(lambda: line_count(marker) == 1, REBUILD_TIME, "the first build")
    wait_for(lambda: not heal_status(proxy)["in_progress"], 60, "the first build to end")
    gate.unlink()
    edit(work / "src" / "msg", "v2")
    wait_for(lambda: line_count(marker) == 2, REBUILD_TIME, "the rebuild to start")
    edit(work / "src" / "msg", "v3")
    gate.touch()
    wait_for(lambda: line_count(marker) == 3, REBUILD_TIME, "one more rebuild")
    wait_for(
        lambda: not heal_status(proxy)["in_progress"] and stale_tags(proxy) == {},
        REBUILD_TIME,
        "the last rebuild to end",
    )
    assert docker_run(image, dockerd.env, "cat", "/msg").stdout.decode().strip() == "v3"
    assert line_count(marker) == 3


def test_a_hand_built_image_is_adopted_only_if_built_after_the_last_change(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-adopt:latest"
    config, work, marker = command_recipe(tmp_path, image)
    docker(["build", "-q", "-t", image, str(work)], env=dockerd.env)  # by hand, after the edit
    proxy = make_proxy(config)
    assert prints(proxy, image) == "v1"
    assert line_count(marker) == 0, "a hand-built image newer than its inputs was rebuilt"
    edit(work / "src" / "msg", "v2")
    wait_for(lambda: image in stale_tags(proxy), 30, "the proxy to see the edit")
    assert prints(proxy, image) == "v2"
    assert line_count(marker) == 1
    proxy.stop()

    # Built by hand, then a `git pull` changes a source before the proxy first sees it.
    docker(["build", "-q", "-t", image, str(work)], env=dockerd.env)
    later = time.time() + 2
    edit(work / "src" / "msg", "v3")
    os.utime(work / "src" / "msg", (later, later))
    (tmp_path / "state" / "image-records.json").unlink()
    proxy = make_proxy(config)
    assert prints(proxy, image) == "v3"
    assert line_count(marker) == 2


def test_a_tag_and_a_load_on_the_daemon_socket_are_seen(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-events:latest"
    other = "127.0.0.1:1/dhp/stale-other:1"
    ctx = build_context(tmp_path / "ctx")
    remove(dockerd.env, image)
    proxy = make_proxy(build_config(tmp_path, image, ctx))
    assert prints(proxy, image) == "v1"
    archive = tmp_path / "v1.tar"
    docker(["save", "-o", str(archive), image], env=dockerd.env)

    # docker tag, on the daemon's own socket, of an image built before the last edit.
    older = build_context(tmp_path / "older", "other")
    docker(["build", "-q", "-t", other, str(older)], env=dockerd.env)
    time.sleep(1.1)  # Created has whole seconds on some daemons; the edit must be later
    edit(ctx / "src" / "msg", "v2")
    wait_for(lambda: image in stale_tags(proxy), 30, "the edit to be seen")
    assert prints(proxy, image) == "v2"
    docker(["tag", other, image], env=dockerd.env)
    wait_for(lambda: image in stale_tags(proxy), 30, "the tag event to be seen")
    assert "adopted stale" in stale_tags(proxy)[image]
    assert prints(proxy, image) == "v2"

    # docker load moves the tag back to the first build, whose record is v1's.
    assert stale_tags(proxy) == {}
    docker(["load", "-q", "-i", str(archive)], env=dockerd.env)
    wait_for(lambda: image in stale_tags(proxy), 30, "the load event to be seen")
    assert stale_tags(proxy)[image] == "src/msg changed"
    assert prints(proxy, image) == "v2"


def test_check_image_says_whether_it_is_stale_and_why(
    dockerd: Dockerd, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    image = "127.0.0.1:1/dhp/stale-check:latest"
    ctx = build_context(tmp_path / "ctx")
    remove(dockerd.env, image)
    config = build_config(tmp_path, image, ctx)
    proxy = make_proxy(config)
    assert prints(proxy, image) == "v1"
    path = Path(proxy.socket).parent / "config.toml"
    env = {**os.environ, "DOCKER_HOST": dockerd.url}
    fresh = proxy_cli("check", f"--config={path}", f"--upstream={dockerd.url}", image, env=env)
    assert "stale: no" in fresh.stdout, fresh.stdout + fresh.stderr
    edit(ctx / "src" / "msg", "v2")
    stale = proxy_cli("check", f"--config={path}", f"--upstream={dockerd.url}", image, env=env)
    assert "stale: yes, src/msg changed" in stale.stdout, stale.stdout + stale.stderr
