"""openfiles: the proxy's soft limit raised, and its children's given back.

Each test runs in a process of its own, so this one's limit stays as it is.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
START = 1024

pytestmark = pytest.mark.skipif(
    HARD <= START, reason=f"the hard limit on open files is {HARD}: nothing to raise"
)


def run(script: str, **env: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import resource\nresource.setrlimit("
            f"resource.RLIMIT_NOFILE, ({START}, {HARD}))\n{script}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    script = """
from proxy.healing.sources import openfiles
openfiles.raise_for_the_proxy()
print(resource.getrlimit(resource.RLIMIT_NOFILE))
"""
    assert run(script) == f"({HARD}, {HARD})\n"


def test_a_recipe_command_and_a_credential_helper_get_the_limit_the_proxy_started_with(
    tmp_path: Path,
) -> None:
    """Real children, on both event loops the proxy can run on, read their own
    limit: the proxy's raised one would be ``HARD``."""
    helper = tmp_path / "docker-credential-limit"
    helper.write_text("#!/bin/sh\nulimit -Sn\n")
    helper.chmod(0o755)
    script = """
import asyncio, uvloop
from pathlib import Path
from proxy.healing.core.runners import RecipeFailed, run_recipe
from proxy.healing.core.statefiles import LogFile
from proxy.healing.sources import openfiles, registryauth
from proxy.recipes.recipe import ConcreteRecipe, Recipe

openfiles.raise_for_the_proxy()
print("proxy", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
image = "127.0.0.1:1/limit:1"
recipe = ConcreteRecipe(
    Recipe(0, image, "command"), image, "command",
    command=("/bin/sh", "-c", "echo command $(ulimit -Sn); exit 3"),
)

async def heal():
    log = LogFile(open("/dev/null", "a"), Path("/dev/null"))
    try:
        await run_recipe(recipe, upstream="/nowhere", log=log, engine=None)
    except RecipeFailed as failed:
        print(*failed.tail)

for loop in (asyncio.run, uvloop.run):
    loop(heal())
print("helper", registryauth._run_helper("limit", "example.com").stdout.decode().strip())
"""
    out = run(script, PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert out.splitlines() == [
        f"proxy {HARD}",
        f"command {START}",
        f"command {START}",
        f"helper {START}",
    ]


def test_without_a_raise_children_get_no_preexec_fn() -> None:
    """Nothing to give back, so nothing runs between fork and exec."""
    script = """
from proxy.healing.sources import openfiles
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
openfiles.raise_for_the_proxy()
print(openfiles.for_children())
"""
    assert run(script) == "None\n"
