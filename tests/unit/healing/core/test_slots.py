"""slots: a freed slot goes to a waiting client before any background heal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from proxy.healing.core.slots import Slots


def grants(
    limit: int, waiters: list[tuple[str, list[bool]]], meanwhile: Callable[[], None]
) -> list[str]:
    """The order in which ``waiters`` (a name, and whether it is background in
    a list the test may change) get a slot, all arriving in that order while
    every slot is busy; ``meanwhile`` runs once they all wait."""
    slots, order = Slots(limit), []

    async def hold(name: str, background: list[bool], order: list[str]) -> None:
        async with slots.take(lambda: background[0]):
            order.append(name)
            await asyncio.sleep(0)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as busy:
            for _ in range(limit):
                await busy.enter_async_context(slots.take(lambda: False))
            assert not slots.free
            tasks = []
            for name, background in waiters:
                tasks.append(asyncio.create_task(hold(name, background, order)))
                await asyncio.sleep(0)
            assert order == []
            meanwhile()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return order


def test_a_freed_slot_goes_to_a_client_that_came_after_a_background_heal() -> None:
    waiters = [("background", [True]), ("client", [False])]
    assert grants(2, waiters, lambda: None) == ["client", "background"]


def test_a_background_heal_a_client_joined_meanwhile_is_a_client_heal() -> None:
    joined = [True]

    def a_client_joins() -> None:
        joined[0] = False

    waiters = [("joined", joined), ("client", [False])]
    assert grants(1, waiters, a_client_joins) == ["joined", "client"]


async def _hold(slots: Slots, name: str, order: list[str]) -> None:
    async with slots.take(lambda: False):
        order.append(name)
        await asyncio.sleep(0)


def test_a_waiter_cancelled_once_granted_passes_its_slot_on() -> None:
    async def main() -> list[str]:
        slots, order = Slots(1), []
        async with slots.take(lambda: False):
            first = asyncio.create_task(_hold(slots, "cancelled", order))
            await asyncio.sleep(0)
            second = asyncio.create_task(_hold(slots, "second", order))
            await asyncio.sleep(0)
        first.cancel()  # granted on leaving the block, cancelled before it ran
        await asyncio.gather(first, second, return_exceptions=True)
        assert slots.busy == 0
        return order

    assert asyncio.run(main()) == ["second"]


def test_a_smaller_limit_applies_to_the_next_grant() -> None:
    async def main() -> None:
        slots = Slots(2)
        async with slots.take(lambda: False):
            slots.resize(1)
            assert not slots.free
        assert slots.free

    asyncio.run(main())
