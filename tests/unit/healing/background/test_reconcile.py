"""reconcile: the debounce schedule, which tags are wanted and missing, and their order."""

from __future__ import annotations

from proxy.healing.background.reconcile import Schedule, is_trigger, present, queue, wanted
from proxy.recipes.recipe import Recipe

INF = float("inf")


def test_the_first_reconcile_is_at_once_then_every_interval() -> None:
    schedule = Schedule(quiet=5, max_delay=60, interval=900)
    assert schedule.next_at() == -INF
    schedule.ran(100)
    assert schedule.next_at() == 1000


def test_a_burst_waits_until_it_has_been_quiet() -> None:
    schedule = Schedule(quiet=5, max_delay=60, interval=900)
    schedule.ran(0)
    for now in (10, 11, 12.5):
        schedule.event(now)
    assert schedule.next_at() == 17.5
    schedule.ran(17.5)
    assert schedule.next_at() == 917.5, "the burst is over once reconciled"


def test_a_burst_that_never_goes_quiet_still_reconciles() -> None:
    schedule = Schedule(quiet=5, max_delay=60, interval=900)
    schedule.ran(0)
    for second in range(10, 100, 2):
        schedule.event(second)
    assert schedule.next_at() == 70


def test_a_request_is_due_at_once() -> None:
    schedule = Schedule()
    schedule.ran(0)
    schedule.request()
    assert schedule.next_at() == -INF


def test_only_removals_of_images_trigger() -> None:
    assert is_trigger({"Type": "image", "Action": "untag", "Actor": {"ID": "sha256:1"}})
    assert is_trigger({"Type": "image", "Action": "delete"})
    assert is_trigger({"Type": "image", "Action": "prune"})
    assert not is_trigger({"Type": "image", "Action": "tag"})
    assert not is_trigger({"Type": "image", "Action": "pull"})
    assert not is_trigger({"Type": "container", "Action": "delete"})


RECIPES = (
    Recipe(index=0, match="base:latest", kind="command", command=("x",)),
    Recipe(index=1, match="agent:special", kind="command", command=("x",)),
    Recipe(index=2, match="agent:{group}", kind="command", command=("x",), proactive=True),
    Recipe(index=3, match="tool:1", kind="command", command=("x",), proactive=True),
    Recipe(index=4, match="lib:{v}", kind="command", command=("x",)),
)


def test_wanted_are_static_proactive_matches_and_remembered_proactive_tags() -> None:
    remembered = [
        "docker.io/library/agent:g1",
        "docker.io/library/agent:special",  # the first match is not proactive
        "docker.io/library/lib:2",
        "docker.io/library/gone:1",  # no recipe matches it any more
    ]
    assert wanted(RECIPES, remembered) == {
        "docker.io/library/tool:1",
        "docker.io/library/agent:g1",
    }


def test_present_tags_are_normalised_and_skip_untagged() -> None:
    images = [
        {"RepoTags": ["agent:g1", "127.0.0.1:1/x:2"]},
        {"RepoTags": ["<none>:<none>"]},
        {"RepoTags": None},
        {},
    ]
    assert present(images) == {"docker.io/library/agent:g1", "127.0.0.1:1/x:2"}


def test_the_queue_is_bases_first_each_once_only_what_is_missing() -> None:
    plans = {
        "g2": ["base", "g2"],
        "g1": ["base", "g1"],
        "tool": ["lib", "tool"],
    }
    assert queue(["g2", "g1", "tool"], plans, have={"lib"}) == ["base", "g1", "g2", "tool"]


def test_a_tag_without_a_plan_is_queued_alone() -> None:
    assert queue(["x"], {}, have=set()) == ["x"]
