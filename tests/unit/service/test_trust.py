"""The StrictModes rule over stat facts alone: no disk, no user database."""

from __future__ import annotations

import stat

import pytest

from proxy.service.trust import Checked, Principals, exempt, problem, problems

ROOT, APP, MALLORY, SERVICE, OPS = 0, 1000, 1001, 998, 1002
DOCKER, APP_GROUP, STAFF = 109, 1000, 50
PRINCIPALS = Principals(
    trusted=frozenset({ROOT, APP, OPS}),  # APP and OPS are in group docker
    members={DOCKER: frozenset({APP}), APP_GROUP: frozenset({APP}), STAFF: frozenset({MALLORY})},
    who="root or a member of group docker",
    users={ROOT: "root", APP: "app", MALLORY: "mallory", OPS: "ops"},
    groups={DOCKER: "docker", APP_GROUP: "app", STAFF: "staff"},
    equivalent=frozenset({DOCKER}),
    primary={ROOT: ROOT, APP: APP_GROUP, MALLORY: STAFF, OPS: STAFF},
)
FILE, FOLDER = stat.S_IFREG, stat.S_IFDIR


def fact(uid: int, gid: int, mode: int, *, above: bool = False) -> Checked:
    kind = FOLDER if above or mode & stat.S_ISVTX else FILE
    return Checked("/srv/x", "images[0].command[0]", uid, gid, kind | mode, above)


@pytest.mark.parametrize(
    "checked",
    [
        fact(ROOT, ROOT, 0o755),
        fact(APP, APP_GROUP, 0o775),  # a private group: only its owner writes
        fact(APP, DOCKER, 0o775),  # root-equivalent group
        fact(ROOT, ROOT, 0o1777, above=True),  # /tmp above a trusted entry
        fact(ROOT, STAFF, 0o1775, above=True),
        Checked("/dev/null", "the config file", ROOT, ROOT, stat.S_IFCHR | 0o666),
    ],
)
def test_trusted(checked: Checked) -> None:
    assert problem(checked, PRINCIPALS) is None


@pytest.mark.parametrize(
    ("checked", "said"),
    [
        (
            fact(MALLORY, STAFF, 0o755),
            "/srv/x (images[0].command[0]) is owned by mallory, not root or a member of "
            "group docker; fix: chown root /srv/x",
        ),
        (fact(4242, STAFF, 0o755), "is owned by uid 4242"),
        (
            fact(ROOT, ROOT, 0o666),
            "/srv/x (images[0].command[0]) is writable by every user (mode 0666); "
            "fix: chmod o-w /srv/x",
        ),
        (fact(ROOT, ROOT, 0o777, above=True), "writable by every user (mode 0777)"),
        (
            fact(OPS, STAFF, 0o775),  # its owner's own group, but mallory is in it
            "/srv/x (images[0].command[0]) is writable by group staff (mode 0775), "
            "which has mallory; fix: chmod g-w /srv/x",
        ),
        (fact(APP, STAFF, 0o775), "writable by group staff (mode 0775), neither"),
        (fact(ROOT, ROOT, 0o1777), "writable by every user (mode 1777)"),  # a sticky workdir
        # Members seen today are no promise: a group with none, or only trusted
        # ones, gains a member with one usermod, or has some the user database
        # does not list (LDAP without enumeration).
        (
            fact(ROOT, 4242, 0o775),
            "/srv/x (images[0].command[0]) is writable by group gid 4242 (mode 0775), "
            "neither root-equivalent nor its owner's own; fix: chmod g-w /srv/x",
        ),
        (fact(ROOT, APP_GROUP, 0o775), "writable by group app (mode 0775), neither"),
    ],
)
def test_refused_with_the_path_and_the_fix(checked: Checked, said: str) -> None:
    reason = problem(checked, PRINCIPALS)
    assert reason is not None and said in reason


def test_each_path_once_judged_as_itself() -> None:
    """A workdir is also the folder above its script: as itself no sticky bit helps."""
    workdir = Checked("/w", "images[0].workdir", ROOT, ROOT, FOLDER | 0o1777)
    above = Checked("/w", "a folder above images[0].command[0]", ROOT, ROOT, FOLDER | 0o1777, True)
    assert problems([above, workdir], PRINCIPALS) == [
        "/w (images[0].workdir) is writable by every user (mode 1777); fix: chmod o-w /w"
    ]
    assert problems([above], PRINCIPALS) == []


def test_trust_paths_exempt_a_folder_and_what_is_under_it() -> None:
    assert exempt("/srv/shared", ["/srv/shared"])
    assert exempt("/srv/shared/app/build.sh", ["/srv/shared/"])
    assert not exempt("/srv/shared-not", ["/srv/shared"])
    assert not exempt("/srv", ["/srv/shared"])
    loose = Checked("/srv/shared/b.sh", "images[0].command[0]", MALLORY, STAFF, FILE | 0o777)
    assert problems([loose], PRINCIPALS, ["/srv/shared"]) == []
    assert len(problems([loose], PRINCIPALS, ["/srv/other"])) == 1
