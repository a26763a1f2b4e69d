"""slots: a freed slot goes to a waiting client before any background heal."""

from __future__ import annotations

import asyncio

from proxy.healing.slots import Slots


async def _hold(slots: Slots, name: str, background: list[bool], order: list[str]) -> None:
    async with slots.take(lambda: background[0]):
        order.append(name)
        await asyncio.sleep(0)


def test_a_freed_slot_goes_to_a_client_that_came_after_a_background_heal() -> None:
    async def main() -> list[str]:
        slots, order = Slots(2), []
        async with slots.take(lambda: False), slots.take(lambda: False):
            assert not slots.free
            tasks = [asyncio.create_task(_hold(slots, "background", [True], order))]
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(_hold(slots, "client", [False], order)))
            await asyncio.sleep(0)
            assert order == []
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["client", "background"]


def test_a_background_heal_a_client_joined_meanwhile_is_a_client_heal() -> None:
    async def main() -> list[str]:
        slots, order = Slots(1), []
        joined = [True]
        async with slots.take(lambda: False):
            tasks = [asyncio.create_task(_hold(slots, "joined", joined, order))]
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(_hold(slots, "client", [False], order)))
            await asyncio.sleep(0)
            joined[0] = False  # a client joined it while it waited
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["joined", "client"]


def test_a_waiter_cancelled_once_granted_passes_its_slot_on() -> None:
    async def main() -> list[str]:
        slots, order = Slots(1), []
        async with slots.take(lambda: False):
            first = asyncio.create_task(_hold(slots, "cancelled", [False], order))
            await asyncio.sleep(0)
            second = asyncio.create_task(_hold(slots, "second", [False], order))
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
