"""proactive: what counts as a use of a tag, and how its loops outlive failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from proxy.healing.engine import Engine
from proxy.healing.healer import Healer
from proxy.healing.proactive import Proactive
from proxy.recipes.config import Config, HealSettings
from proxy.recipes.recipe import Recipe

GROUP = "docker.io/library/agent:g1"
AGENT = Recipe(index=0, match="agent:{group}", kind="command", command=("x",), proactive=True)
CONFIG = Config(recipes=(AGENT,))
DAY = 86400.0


def proactive(tmp_path: Path, engine: Any = None, config: Config = CONFIG) -> Proactive:
    return Proactive(lambda: config, cast(Healer, None), cast(Engine, engine), tmp_path)


@pytest.mark.parametrize(("trigger", "refreshed"), [("proactive", False), ("create", True)])
def test_only_a_heal_someone_asked_for_refreshes_a_tag(
    tmp_path: Path, trigger: Any, refreshed: bool
) -> None:
    background = proactive(tmp_path)
    background.memory.remember(GROUP, 0.0)
    background.healed(GROUP, trigger)
    assert (background.memory.last_used[GROUP] > DAY) is refreshed


def test_a_reload_changes_the_debounce_and_the_interval(tmp_path: Path) -> None:
    current = [CONFIG]
    background = Proactive(lambda: current[0], cast(Healer, None), cast(Engine, None), tmp_path)
    assert (background.schedule.quiet, background.schedule.interval) == (5.0, 900.0)
    current[0] = Config(heal=HealSettings(reconcile_debounce=30.0, reconcile_interval=60.0))
    background.reconfigure()
    assert (background.schedule.quiet, background.schedule.interval) == (30.0, 60.0)
