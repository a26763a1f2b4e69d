"""retention: which transcripts ``keep_logs`` keeps, by name alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support import IMAGE_A as A
from support import MemoryEngine, heal_config, heal_once, make_healer, tags_sharing_a_short_hash

from proxy.healing.core import lockfiles, retention
from proxy.healing.core.statefiles import tag_file_name
from proxy.recipes.config import KeepLogs

DAY = 86400.0
NOW = 1_800_000_000.0
APP = tag_file_name("example.com/app:1")
WEB = tag_file_name("example.com/web:1")


def name(tag: str, days_ago: float, suffix: str = "") -> str:
    return retention.log_name(tag, NOW - days_ago * DAY) + suffix + ".log"


def test_the_last_n_per_tag_are_kept() -> None:
    app = [name(APP, d) for d in (0.1, 0.2, 0.3, 0.4)]
    web = [name(WEB, d) for d in (0.5, 0.6)]
    gone = retention.expired([*app, *web], KeepLogs(last=2, max_age=14 * DAY), NOW)
    assert gone == sorted(app[2:])


def test_nothing_older_than_max_age_is_kept() -> None:
    fresh, old = name(APP, 13.9), name(APP, 14.1)
    assert retention.expired([fresh, old], KeepLogs(last=20, max_age=14 * DAY), NOW) == [old]


def test_a_random_suffix_still_counts_and_foreign_files_are_left() -> None:
    suffixed = name(APP, 0.1, "-0a1b2c3d")
    plain = name(APP, 0.2)
    assert retention.expired(
        [suffixed, plain, "notes.txt", "x.log"], KeepLogs(last=1, max_age=DAY), NOW
    ) == [plain]


def test_a_crafted_tag_does_not_share_its_victims_log_group() -> None:
    """With ``last=1`` a heal of the crafted tag would expire the victim's log."""
    victim, crafted = (tag_file_name(tag) for tag in tags_sharing_a_short_hash())
    logs = [name(victim, 0.2), name(crafted, 0.1)]
    assert retention.expired(logs, KeepLogs(last=1, max_age=DAY), NOW) == []


def test_logs_named_by_an_older_version_still_expire() -> None:
    """Names with the 32-bit hash older versions wrote: a group of their own."""
    older = "example.com_app_1-0123abcd"
    logs = [name(older, 0.1), name(older, 0.2), name(older, 2), name(APP, 0.3)]
    gone = retention.expired(logs, KeepLogs(last=2, max_age=DAY), NOW)
    assert gone == sorted([name(older, 2)])
    gone = retention.expired(logs, KeepLogs(last=1, max_age=DAY), NOW)
    assert gone == sorted([name(older, 0.2), name(older, 2)])


def test_tidy_removes_logs_and_unused_locks(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    now = time.time()
    names = [retention.log_name(APP, now - i * 60) + ".log" for i in range(5)]
    for each in names:
        (logs / each).write_text("transcript")
    for image in ("example.com/app:1", "example.com/gone:1"):
        lock = lockfiles.LockFile(tmp_path, image)
        assert lock.take()
        lock.close()
    retention.tidy(tmp_path, KeepLogs(last=3), lambda tag: tag == "example.com/app:1")
    assert sorted(os.listdir(logs)) == sorted(names[:3])
    assert os.listdir(tmp_path / "locks") == [f"{APP}.lock"]


def test_logs_past_keep_logs_are_removed_after_a_heal(tmp_path: Path) -> None:
    engine = MemoryEngine()
    config = heal_config({"match": A, "pull": True}, keep_logs={"last": 2})
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    earlier = [retention.log_name(tag_file_name(A), time.time() - h * 3600) for h in (1, 2, 3)]
    for each in earlier:
        (logs / f"{each}.log").write_text("an earlier heal")
    assert heal_once(make_healer(config, engine, tmp_path), A) is None
    kept = sorted(os.listdir(logs))
    assert len(kept) == 2 and kept[0] == f"{earlier[0]}.log"
    assert f"produced {A}" in (logs / kept[1]).read_text()
