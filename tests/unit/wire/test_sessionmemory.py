"""sessionmemory: a Dockerfile comes back only for its folder, its name and the very Stat it had."""

from __future__ import annotations

from proxy.wire.sessionmemory import DockerfileMemory

KEY = b"ctx:65e6234cef8e64dd"


def test_the_text_comes_back_for_the_same_folder_name_and_stat() -> None:
    memory = DockerfileMemory()
    memory.remember(KEY, b"Dockerfile", b"stat-1", b"FROM a\n")
    assert memory.recall(KEY, b"Dockerfile", b"stat-1") == b"FROM a\n"
    assert memory.recall(KEY, b"Dockerfile", b"stat-2") is None
    assert memory.recall(KEY, b"build.Dockerfile", b"stat-1") is None
    assert memory.recall(b"ctx:other", b"Dockerfile", b"stat-1") is None


def test_a_later_dockerfile_of_the_folder_replaces_the_earlier() -> None:
    memory = DockerfileMemory()
    memory.remember(KEY, b"Dockerfile", b"stat-1", b"FROM a\n")
    memory.remember(KEY, b"Dockerfile", b"stat-2", b"FROM b\n")
    assert memory.recall(KEY, b"Dockerfile", b"stat-1") is None
    assert memory.recall(KEY, b"Dockerfile", b"stat-2") == b"FROM b\n"


def test_a_session_without_a_shared_key_names_no_folder() -> None:
    memory = DockerfileMemory()
    memory.remember(b"", b"Dockerfile", b"stat", b"FROM a\n")
    assert memory.recall(b"", b"Dockerfile", b"stat") is None


def test_the_least_recently_used_goes_first_past_either_bound() -> None:
    memory = DockerfileMemory(entries=2, size=100)
    memory.remember(b"k1", b"Dockerfile", b"s", b"1")
    memory.remember(b"k2", b"Dockerfile", b"s", b"2")
    assert memory.recall(b"k1", b"Dockerfile", b"s") == b"1"  # k2 is now the oldest
    memory.remember(b"k3", b"Dockerfile", b"s", b"3")
    assert memory.recall(b"k2", b"Dockerfile", b"s") is None
    assert memory.recall(b"k1", b"Dockerfile", b"s") == b"1"
    memory.remember(
        b"k4", b"Dockerfile", b"s", b"x" * 100
    )  # 100 bytes: over the bound with any other
    assert [memory.recall(k, b"Dockerfile", b"s") for k in (b"k1", b"k3")] == [None, None]
    assert memory.recall(b"k4", b"Dockerfile", b"s") == b"x" * 100
    memory.remember(b"k5", b"Dockerfile", b"s", b"y" * 101)  # larger than the whole memory
    assert memory.recall(b"k5", b"Dockerfile", b"s") is None
    assert memory.recall(b"k4", b"Dockerfile", b"s") == b"x" * 100
