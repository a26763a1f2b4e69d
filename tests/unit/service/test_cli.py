"""The command line's one validation: what ``check`` accepts, ``serve`` starts with.

These run ``main`` in-process on configs the proxy must refuse; none of them
gets as far as binding a socket, so no daemon is needed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest
from support import (
    PYTHON_M_PROXY,
    REFUSED,
    REPO,
    SELF_LOOP,
    OneShotServer,
    http_response,
    wait_for,
)

from proxy.service import cli
from proxy.service.auditlines import encode
from proxy.wire.access import AccessRecord


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_check_and_serve_refuse_the_same_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    sock = tmp_path / "p.sock"
    for argv in (
        ["check", f"--config={path}"],
        ["serve", f"--config={path}", f"--listen=unix://{sock}", "--upstream=unix:///nowhere"],
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("docker-heal-proxy: ") and err.endswith(f"{reason}\n"), err
        assert err.count("\n") == 1, err
    assert not sock.exists()


def test_check_and_serve_refuse_a_proxy_of_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` passing a config that ``serve`` then refuses is two validations."""
    text, reason = SELF_LOOP
    path = tmp_path / "config.toml"
    path.write_text(text)
    for argv in (["check", f"--config={path}"], ["serve", f"--config={path}"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"docker-heal-proxy: {reason}\n", err
    assert not Path("/tmp/dhp-self.sock").exists()


def test_check_asks_the_daemon_within_engine_timeout(
    tmp_path: Path, silent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` waits CHECK_WAIT at most, and less when engine_timeout says so."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'upstream = "unix://{silent}"\n[heal]\nengine_timeout = "300ms"\n'
        '[[images]]\nmatch = "127.0.0.1:1/c:1"\ncommand = ["true"]\nproactive = true\n'
    )
    assert cli.main(["check", f"--config={path}"]) == 0
    assert f"the Docker daemon at {silent} did not answer /info within 0.3s" in (
        capsys.readouterr().out
    )


def test_status_watch_stops_on_sigint_even_when_started_ignoring_it(tmp_path: Path) -> None:
    """A background job or a supervisor hands its children SIGINT ignored."""
    out = tmp_path / "watch.out"
    with out.open("wb") as sink:
        watcher = subprocess.Popen(
            [*PYTHON_M_PROXY, "status", "--watch", f"--listen=unix://{tmp_path}/none.sock"],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        wait_for(lambda: b"cannot reach the proxy" in out.read_bytes(), 20, "a first frame")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0, out.read_text()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_check_names_a_dockerfile_too_big_to_parse_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service leaves such a build's bases unknown; ``check`` says so, once."""
    (tmp_path / "Dockerfile").write_text("FROM base\n" + "# padding\n" * 30_000)
    path = tmp_path / "config.toml"
    path.write_text(f'[[images]]\nmatch = "big"\nbuild = {{ context = "{tmp_path}" }}\n')
    assert cli.main(["check", f"--config={path}", "big"]) == 0
    err = capsys.readouterr().err
    assert err.count("bases are unknown: the Dockerfile is over 256 KiB") == 1, err


def test_heal_through_the_proxy_shows_a_failure_without_obeying_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The proxy's answer to ``heal`` carries the recipe's last lines."""
    path = str(tmp_path / "p.sock")
    message = json.dumps({"message": "cannot heal app:1\n  \x1b]0;owned\x07\x1b[2J"})
    server = OneShotServer(path, http_response("500 Internal Server Error", message.encode()))
    try:
        assert cli._heal_in_proxy(path, ["app:1"], force=False) == 1
    finally:
        server.close()
    assert capsys.readouterr().err == "cannot heal app:1\n  ^[]0;owned^G^[[2J\n"


def test_check_turns_an_audit_log_into_an_allow_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def line(listener: str, method: str, path: str) -> bytes:
        return encode(AccessRecord(listener, None, method, path, None, 200, 0.0, False), 0.0)

    log = tmp_path / "audit.jsonl"
    log.write_bytes(
        line("ci", "POST", "/v1.45/containers/create?name=x")
        + line("ci", "POST", "/v1.45/containers/abc/start")
        + line("web", "POST", "/v1.45/build")
        + line("ci", "POST", "/v1.45/containers/create")
    )
    assert cli.main(["check", f"--audit-log={log}", "--listener=ci"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads(out) == {
        "allow": ["POST /containers/create", "POST /containers/{id}/start"]
    }
    assert out.startswith(f'# 3 lines of {log} (listener "ci"): 2 routes\n')


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["check", "app:1", "--audit-log=/x"], 2, "check takes IMAGE or --audit-log FILE"),
        (["check", "--listener=ci"], 2, "check takes IMAGE or --audit-log FILE"),
        (["check", "--audit-log=/nonexistent"], 1, "cannot read /nonexistent: No such file"),
    ],
)
def test_check_audit_log_refusals(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(f"docker-heal-proxy: {message}") and err.count("\n") == 1, err


def test_check_warns_of_bind_folders_a_caller_could_swap_and_a_daemon_root_it_cannot_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's two ``check`` warnings for ``binds_under``, through ``check`` itself."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path = tmp_path / "config.toml"
    path.write_text(
        f'upstream = "unix://{tmp_path}/nowhere.sock"\n'
        f'[[listeners]]\nname = "ci"\nlisten = "unix://{tmp_path}/ci.sock"\npolicy = "agents"\n'
        f'[policies.agents]\nextends = "runner"\n'
        f'[policies.agents.create]\nbinds_under = ["{shared}"]\n'
    )
    cli.main(["check", f"--config={path}"])
    out = capsys.readouterr().out
    assert f"warning: policies.agents.create.binds_under: {shared} can be written by" in out, out
    assert (
        f"warning: cannot read dockerd's root through {tmp_path}/nowhere.sock: bind mounts "
        "are refused under policies agents (run the proxy as root)"
    ) in out, out
