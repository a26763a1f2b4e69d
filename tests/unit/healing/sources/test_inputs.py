"""The inputs hash over real files in a temporary folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from proxy.healing.sources.inputs import (
    InputsError,
    file_entry,
    input_entries,
    input_files,
    inputs_hash,
    named,
    tree_hash,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "src" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "main.py").write_text("print(1)\n")
    (tmp_path / "src" / "lib" / ".hidden").write_text("h")
    (tmp_path / "package-lock.json").write_text("{}")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "unrelated.txt").write_text("x")
    return tmp_path


GLOBS = ["src/**", "package-lock.json", "Dockerfile"]


def test_globs_name_files_sorted_and_folders_whole(tree: Path) -> None:
    assert input_files(tree, GLOBS) == [
        "Dockerfile",
        "package-lock.json",
        "src/lib/.hidden",
        "src/main.py",
    ]
    assert input_files(tree, ["src"]) == ["src/lib/.hidden", "src/main.py"]


def test_the_hash_is_path_mode_size_content_digest_in_path_order(tree: Path) -> None:
    expected = hashlib.sha256()
    for name in ("Dockerfile", "src/main.py"):
        content = (tree / name).read_bytes()
        digest = hashlib.sha256(content).hexdigest().encode()
        expected.update(b"%s\x00100644\x00%d\x00%s\n" % (name.encode(), len(content), digest))
    assert inputs_hash(tree, ["src/*.py", "Dockerfile"]) == f"sha256:{expected.hexdigest()}"


def test_one_changed_file_is_rehashed_alone(tree: Path) -> None:
    entries = input_entries(tree, GLOBS)
    (tree / "src" / "main.py").write_text("print(2)\n")
    changed = file_entry(tree, "src/main.py")
    assert changed is not None and changed != entries["src/main.py"]
    assert tree_hash({**entries, "src/main.py": changed}) == inputs_hash(tree, GLOBS)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("src/main.py", True),
        ("src/lib/.hidden", False),
        ("Dockerfile", True),
        ("src/other.txt", False),
        ("unrelated.txt", False),
    ],
)
def test_named_says_whether_a_path_is_an_input(relative: str, expected: bool) -> None:
    assert named(["src/*.py", "Dockerfile"], relative) is expected


def test_a_named_folder_names_every_file_under_it() -> None:
    assert named(["src"], "src/lib/deep/x")
    assert named(["src/."], "src/x")
    assert not named(["src"], "srcx/y")


def test_content_path_and_exec_bit_change_the_hash_and_nothing_else_does(tree: Path) -> None:
    before = inputs_hash(tree, GLOBS)
    (tree / "unrelated.txt").write_text("changed")
    os.utime(tree / "src" / "main.py", (1, 1))
    (tree / "src" / "main.py").chmod(0o664)  # a different umask, as on another host
    assert inputs_hash(tree, GLOBS) == before
    (tree / "src" / "main.py").chmod(0o775)
    executable = inputs_hash(tree, GLOBS)
    assert executable != before
    (tree / "src" / "main.py").write_text("print(2)\n")
    assert inputs_hash(tree, GLOBS) not in (before, executable)
    (tree / "src" / "main.py").rename(tree / "src" / "moved.py")
    assert len({before, executable, inputs_hash(tree, GLOBS)}) == 3


def test_no_globs_is_the_empty_hash(tree: Path) -> None:
    assert inputs_hash(tree, []) == ""


def test_a_symlink_is_hashed_as_its_target_text_not_followed(tree: Path) -> None:
    (tree / "src" / "link").symlink_to("/etc")
    files = input_files(tree, ["src/**"])
    assert "src/link" in files
    assert not any(name.startswith("src/link/") for name in files)
    first = inputs_hash(tree, ["src/**"])
    (tree / "src" / "link").unlink()
    (tree / "src" / "link").symlink_to("/usr")
    assert inputs_hash(tree, ["src/**"]) != first


def test_a_fifo_is_skipped_rather_than_read(tree: Path) -> None:
    os.mkfifo(tree / "src" / "pipe")
    before = inputs_hash(tree, ["src/main.py"])
    assert inputs_hash(tree, ["src/main.py", "src/pipe"]) == before


def test_a_glob_matching_nothing_is_an_error(tree: Path) -> None:
    with pytest.raises(InputsError, match=r"'lock\.json' matches no file under"):
        inputs_hash(tree, ["lock.json"])
    with pytest.raises(InputsError, match="is not a folder"):
        inputs_hash(tree / "missing", ["x"])


def test_an_unreadable_file_names_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any mode, so the refusal is injected where the file is opened."""

    def refuse(path: Path, *args: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InputsError, match=r"cannot read .*/Dockerfile: Permission denied"):
        inputs_hash(tree, ["Dockerfile"])


def test_star_stays_in_one_folder_and_double_star_crosses(tree: Path) -> None:
    assert input_files(tree, ["*/*.py"]) == ["src/main.py"]
    assert input_files(tree, ["**/.hidden"]) == ["src/lib/.hidden"]
    assert input_files(tree, ["**/*.json", "./Dockerfile"]) == ["Dockerfile", "package-lock.json"]
    with pytest.raises(InputsError):
        input_files(tree, ["*.py"])


@pytest.mark.parametrize("pattern", [".", "./", "src/."])
def test_a_dot_names_the_folder_itself_not_the_filesystem_root(tree: Path, pattern: str) -> None:
    files = input_files(tree / "src" if pattern != "src/." else tree, [pattern])
    prefix = "" if pattern != "src/." else "src/"
    assert files == [f"{prefix}lib/.hidden", f"{prefix}main.py"]
    assert not any(name.startswith("/") for name in files)
    assert inputs_hash(tree / "src", ["."]) == inputs_hash(tree / "src", ["**"])


def test_a_file_name_that_is_not_utf8_is_hashed_by_its_bytes(tree: Path) -> None:
    raw = os.fsdecode(b"src/caf\xe9.txt")
    Path(tree, raw).write_text("x")
    (tree / "src" / "link").symlink_to(os.fsdecode(b"caf\xe9.txt"))
    assert os.fsdecode(b"src/caf\xe9.txt") in input_files(tree, ["src"])
    first = inputs_hash(tree, ["src"])
    Path(tree, raw).write_text("y")
    assert inputs_hash(tree, ["src"]) != first


def test_an_unreadable_folder_is_an_error_not_skipped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root lists any folder, so the refusal is injected where os.walk lists it."""
    real_scandir = os.scandir

    def refuse(path: object = ".") -> object:
        if str(path).endswith("lib"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(InputsError, match=r"cannot read .*/src/lib: Permission denied"):
        inputs_hash(tree, ["src/**"])


def test_a_glob_walks_only_under_its_literal_prefix(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "big" / "deep").mkdir(parents=True)
    walked: list[str] = []
    real_walk = os.walk

    def spy(top: object, *args: object, **kwargs: object) -> object:
        walked.append(str(top))
        return real_walk(top, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "walk", spy)
    assert input_files(tree, ["src/lib/*"]) == ["src/lib/.hidden"]
    assert all(Path(top).is_relative_to(tree / "src" / "lib") for top in walked)


def test_a_literal_path_through_a_symlinked_folder_is_not_followed(tree: Path) -> None:
    (tree / "outside").mkdir()
    (tree / "outside" / "secret").write_text("s")
    (tree / "src" / "out").symlink_to(tree / "outside")
    with pytest.raises(InputsError, match="matches no file"):
        input_files(tree, ["src/out/secret"])
    with pytest.raises(InputsError, match="matches no file"):
        input_files(tree, ["src/out/*"])


def test_a_hidden_folder_keeps_its_dot(tree: Path) -> None:
    (tree / "src" / ".conf").mkdir()
    (tree / "src" / ".conf" / "a").write_text("a")
    assert "src/.conf/a" in input_files(tree, ["src/**"])
    assert "src/.conf/a" in input_files(tree, ["src"])
