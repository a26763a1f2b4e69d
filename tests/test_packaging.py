"""The layout holds: the import contract is kept and can break, and the wheel ships every module.

These read the source tree and build from a copy of it; they need no daemon.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from proxy import __version__

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PURE = "The pure modules do no asynchronous I/O"
LAYERS = "The service uses healing; healing uses the wire and the recipe core, which use nothing"
HEALING = (
    "Healing's triggers use stale mode and the core, which use its sources; nothing points back"
)
TRIGGERS = "The two kinds of trigger, claims and background heals, are independent"
WIRE = "Only the request claimers of healing touch the wire"


def copy_project(dest: Path) -> Path:
    """The package and its build metadata, without caches, in a fresh folder."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "proxy", dest / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(project / "pyproject.toml")],
        cwd=project,
        env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept(tmp_path: Path) -> None:
    result = lint_imports(copy_project(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("recipes/reference.py", "import asyncio", PURE),
        ("wire/http1.py", "import aiohttp", PURE),
        ("wire/states.py", "import asyncio", PURE),
        ("wire/rules.py", "import asyncio", PURE),
        ("service/check.py", "import uvloop", PURE),
        ("healing/stale/decision.py", "import asyncio", PURE),
        ("recipes/graph.py", "from ..healing import healer", LAYERS),
        ("wire/routes.py", "from ..recipes import reference", LAYERS),
        ("healing/sources/engine.py", "from ...service import metrics", LAYERS),
        ("wire/routes.py", "from .. import __main__", LAYERS),
        ("healing/core/healer.py", "from ..claims import intercept", HEALING),
        ("healing/core/slots.py", "from ..background import reconcile", HEALING),
        ("healing/sources/engine.py", "from ..core import slots", HEALING),
        ("healing/sources/inputs.py", "from ..claims import spool", HEALING),
        ("healing/stale/tracker.py", "from ..background import proactive", HEALING),
        ("healing/core/healer.py", "from ..stale import tracker", HEALING),
        ("healing/sources/inputs.py", "from ..stale import decision", HEALING),
        ("healing/claims/spool.py", "from ..background import memory", TRIGGERS),
        ("healing/background/reconcile.py", "from ..claims import contextscan", TRIGGERS),
        ("healing/core/healer.py", "from ...wire import http1", WIRE),
        ("healing/background/watcher.py", "from ...wire.hub import Hub", WIRE),
        ("healing/sources/engine.py", "from ...wire import routes", WIRE),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    project = copy_project(tmp_path)
    source = project / "proxy" / module
    text = source.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text
    source.write_text(text.replace(marker, f"{marker}\n{planted}  # noqa\n", 1))
    result = lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    # The report wraps long contract names; compare with the white space folded.
    assert f"{contract} BROKEN" in " ".join(result.stdout.split()), result.stdout


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    project = copy_project(tmp_path / "src")
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("docker_heal_proxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "proxy").rglob("*.py")}
    assert len(sources) > 30
    assert sources - shipped == set()
    # The console script must name a module that is in the wheel.
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    target = scripts.split("docker-heal-proxy = ", 1)[1].split(":", 1)[0]
    assert f"{target.replace('.', '/')}.py" in shipped, scripts


def test_the_console_script_runs() -> None:
    script = Path(sys.executable).with_name("docker-heal-proxy")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(__version__)


def test_the_run_command_needs_no_sudo_and_no_root_owned_folder() -> None:
    """It must work as written for root on a bare Debian (no sudo there) and for a
    user in the docker group (who cannot write /opt)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- run-command -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    (command,) = block.splitlines()
    assert "sudo" not in command.split()
    assert "/opt" not in command
    assert "apt-get install -y -qq python3-venv" in command
    assert command.endswith("/bin/docker-heal-proxy serve")


def test_every_test_module_has_a_name_of_its_own() -> None:
    """The tests are imported by file name (rootdir, no packages): two files of
    one name stop the whole run at collection, though each folder runs alone."""
    names = [path.name for path in (REPO / "tests").rglob("*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
