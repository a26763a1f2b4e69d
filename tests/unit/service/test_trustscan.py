"""What the walker hands the rule: which paths, in which role, as written and resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.recipes.config import load_config
from proxy.service.trust import Checked
from proxy.service.trustscan import gather, makefiles, shell_script


@pytest.mark.parametrize(
    ("argv", "index"),
    [
        (["bash", "build.sh", "x"], 1),
        (["sh", "-eu", "build.sh"], 2),
        (["bash", "-euo", "pipefail", "build.sh"], 3),
        (["bash", "-o", "errexit", "--norc", "build.sh"], 4),
        (["bash", "--", "-odd.sh"], 2),
        (["bash", "-c", "make all", "name"], None),
        (["sh", "-ec", "./build.sh"], None),
        (["bash", "-s", "arg"], None),
        (["bash"], None),
        (["sh", "-"], None),
    ],
)
def test_the_script_a_shell_runs(argv: list[str], index: int | None) -> None:
    assert shell_script(argv) == index


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["make"], (["GNUmakefile", "makefile", "Makefile"], ".")),
        (["make", "-f", "build.mk", "all"], (["build.mk"], ".")),
        (["make", "--file=a.mk", "-fb.mk"], (["a.mk", "b.mk"], ".")),
        (["make", "-C", "sub", "image"], (["GNUmakefile", "makefile", "Makefile"], "./sub")),
        (["make", "--directory=sub", "-f", "x.mk"], (["x.mk"], "./sub")),
    ],
)
def test_the_makefiles_make_reads(argv: list[str], found: tuple[list[str], str]) -> None:
    assert makefiles(argv) == found


def test_gather_names_each_file_root_would_run(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    for name in ("build.sh", "Makefile", "bin/tool"):
        (app / name).write_text("#!/bin/sh\n")
        (app / name).chmod(0o755)
    (tmp_path / "link.sh").symlink_to(app / "build.sh")
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f"""
[[images]]
match = "a"
command = ["./build.sh"]
workdir = "{app}"
[[images]]
match = "b"
command = ["bash", "-e", "{tmp_path / "link.sh"}"]
[[images]]
match = "c"
command = ["make", "image"]
workdir = "app"
[[images]]
match = "d"
command = ["tool"]
env = {{ PATH = "{app / "bin"}" }}
[[images]]
match = "e:{{t}}"
command = ["{app}/{{t}}/build.sh"]
workdir = "{app}/{{t}}"
[[images]]
match = "f"
pull = true
"""
    )
    checked = gather(load_config(config_path), {"PATH": "/usr/bin:/bin"})
    roles = {(c.path, c.role) for c in checked if not c.above}
    assert roles == {
        (str(config_path), "the config file"),
        (str(app), "images[0].workdir"),
        (str(app / "build.sh"), "images[0].command[0]"),
        (str(tmp_path), "images[1].workdir"),
        ("/usr/bin/bash", "images[1].command[0]"),
        (str(tmp_path / "link.sh"), "images[1].command[2], the script bash runs"),
        (str(app / "build.sh"), "images[1].command[2], the script bash runs"),  # resolved
        (str(app), "images[2].workdir"),
        ("/usr/bin/make", "images[2].command[0]"),
        (str(app / "Makefile"), "images[2].command, a makefile"),
        (str(app), "where images[2].command, a makefile, not there yet, would be made"),
        (str(tmp_path), "images[3].workdir"),
        (str(app / "bin" / "tool"), "images[3].command[0]"),
        (str(app), "images[4].workdir, up to its first placeholder"),
        (str(app), "images[4].command[0], up to its first placeholder"),
    }
    above = {c.path for c in checked if c.above and c.role == "a folder above the config file"}
    assert above == {str(folder) for folder in tmp_path.parents} | {str(tmp_path)}


def test_a_file_not_there_yet_has_its_folders_checked(tmp_path: Path) -> None:
    """Whoever can write the folder can put the script there after the check,
    and the next heal runs it as root: the folders above stand for it."""
    (tmp_path / "app").mkdir()
    later = tmp_path / "drop"
    later.mkdir()
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f"""
[[images]]
match = "a"
command = ["{later}/build.sh"]
workdir = "{tmp_path / "app"}"
[[images]]
match = "b"
command = ["sh", "{later}/run.sh"]
workdir = "{tmp_path / "app"}"
"""
    )
    checked = gather(load_config(config_path), {"PATH": "/usr/bin:/bin"})
    roles = {c.role for c in checked if not c.above and c.path == str(later)}
    assert roles == {
        "where images[0].command[0], not there yet, would be made",
        "where images[1].command[1], the script sh runs, not there yet, would be made",
    }
    above = {c.role for c in checked if c.above and c.path == str(tmp_path)}
    assert "a folder above images[0].command[0]" in above


def _gather_images(tmp_path: Path, *images: str) -> list[Checked]:
    """``gather`` of a config whose ``images`` are these inline tables, with no PATH
    of the proxy's own: each recipe names the one its command gets."""
    config_path = tmp_path / "config.toml"
    config_path.write_text("images = [\n" + "".join(f"{table},\n" for table in images) + "]\n")
    return gather(load_config(config_path), {})


def test_the_path_folders_searched_before_the_program_are_checked(tmp_path: Path) -> None:
    """A ``docker`` dropped in a folder exec tries first is the one that runs:
    every folder on ``PATH`` up to the program's is checked as itself (no
    sticky pass: others may add a name to a sticky folder), with the folders
    above it; relative ones are where exec looks, in the workdir."""
    app = tmp_path / "app"
    (app / "tools").mkdir(parents=True)
    early, real, after = tmp_path / "early", tmp_path / "real", tmp_path / "after"
    for folder in (early, real, after):
        folder.mkdir()
    (real / "tool").write_text("#!/bin/sh\n")
    (real / "tool").chmod(0o755)
    missing = tmp_path / "missing"
    checked = _gather_images(
        tmp_path,
        f'{{ match = "a", command = ["tool"], workdir = "{app}", '
        f'env = {{ PATH = "{early}:{missing}:tools:{real}:{after}" }} }}',
        f'{{ match = "b", command = ["absent"], workdir = "{app}", '
        f'env = {{ PATH = "{early}:{after}" }} }}',
    )
    roles = {(c.path, c.role) for c in checked if not c.above}
    before = f"images[0].command[0], a folder on PATH searched before {real / 'tool'}"
    searched = "images[1].command[0], a folder on PATH it is searched in"
    assert {role for role in roles if "PATH" in role[1]} == {
        (str(early), before),
        (str(app / "tools"), before),
        (str(tmp_path), f"where {before}, not there yet, would be made"),  # for {missing}
        (str(early), searched),
        (str(after), searched),
    }
    assert (str(real / "tool"), "images[0].command[0]") in roles


def test_a_sticky_folder_where_a_missing_path_would_be_made_is_checked_as_itself(
    tmp_path: Path,
) -> None:
    """The sticky bit keeps others from renaming an entry that is there; it does
    not keep them from making one that is not: a ``bin`` on PATH, or a script,
    not there yet under ``/tmp`` is theirs to make first."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    checked = _gather_images(
        tmp_path,
        f'{{ match = "a", command = ["{shared}/work/build.sh"], workdir = "{tmp_path}" }}',
        f'{{ match = "b", command = ["true"], workdir = "{tmp_path}", '
        f'env = {{ PATH = "{shared}/bin:/usr/bin:/bin" }} }}',
    )
    as_itself = {c.role for c in checked if c.path == str(shared) and not c.above}
    assert as_itself == {
        "where images[0].command[0], not there yet, would be made",
        "where images[1].command[0], a folder on PATH searched before /usr/bin/true, "
        "not there yet, would be made",
    }
