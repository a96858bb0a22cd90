"""The worker host's periodic upkeep (queue/upkeep.py): leader-only upkeep runs, in the order
given, on the one worker holding the leader lock; the rest runs on every worker."""

from __future__ import annotations

import asyncio

import pytest

from taskloom.queue.host import Upkeep
from taskloom.queue.upkeep import Upkeeps
from taskloom.runtime import Runtime


async def test_leader_only_upkeep_runs_in_order_on_the_lock_holder_only(
    runtime: Runtime,
) -> None:
    ran: list[str] = []

    def recording(name: str) -> Upkeep:
        async def run(_: Runtime) -> None:
            ran.append(name)

        return Upkeep(name=name, run=run)

    upkeep = [recording("first"), recording("second")]
    leader = Upkeeps(runtime, upkeep, owner="leader")
    follower = Upkeeps(runtime, upkeep, owner="follower")
    await leader.release()
    try:
        assert await leader.is_leader()
        assert not await follower.is_leader()
        assert await leader.is_leader()  # renewed, not lost
        await leader.tick()
        assert ran == ["first", "second"]
        await leader.release()  # a clean shutdown hands the lead over at once
        assert await follower.is_leader()
    finally:
        await follower.release()


async def test_upkeep_on_every_worker_loops_at_its_interval_until_stopped(
    runtime: Runtime,
) -> None:
    ticks, three = 0, asyncio.Event()

    async def tick(_: Runtime) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            three.set()

    everywhere = Upkeep(name="often", run=tick, leader_only=False, interval=lambda _: 0.01)
    stop = asyncio.Event()
    loops = Upkeeps(runtime, [everywhere], owner="any").loops(stop)
    assert [name for name, _ in loops] == ["often"]
    task = asyncio.ensure_future(loops[0][1])
    await asyncio.wait_for(three.wait(), 2)
    stop.set()
    await asyncio.wait_for(task, 1)


def test_an_interval_belongs_to_upkeep_on_every_worker_only() -> None:
    async def run(_: Runtime) -> None:
        pass

    with pytest.raises(ValueError, match="interval"):
        Upkeep(name="leader", run=run, interval=lambda _: 1.0)
    with pytest.raises(ValueError, match="interval"):
        Upkeep(name="everywhere", run=run, leader_only=False)


async def test_leader_only_upkeep_with_at_most_every_skips_ticks_until_its_time(
    runtime: Runtime,
) -> None:
    ran: list[str] = []

    def recording(name: str, every: float) -> Upkeep:
        async def run(_: Runtime) -> None:
            ran.append(name)

        return Upkeep(name=name, run=run, at_most_every=every)

    upkeeps = Upkeeps(runtime, [recording("often", 0), recording("slow", 0.3)], owner="any")
    await upkeeps.tick()
    await upkeeps.tick()
    assert ran == ["often", "slow", "often"]
    await asyncio.sleep(0.35)
    await upkeeps.tick()
    assert ran == ["often", "slow", "often", "often", "slow"]


def test_at_most_every_belongs_to_leader_only_upkeep() -> None:
    async def run(_: Runtime) -> None:
        pass

    with pytest.raises(ValueError, match="at_most_every"):
        Upkeep(
            name="everywhere", run=run, leader_only=False, interval=lambda _: 1.0, at_most_every=5
        )
