"""Runs the domains' periodic upkeep (queue/host.py's `Upkeep`) in a worker process.

Leader-only upkeep (reconciling executions, retention purges, lost deliveries, abandoned AI
reservations…) runs on one worker at a time: the holder of a Redis lock that outlives two
intervals, renewed each tick, so one missed tick is fine and a dead leader is replaced within
about two. Each tick runs them in the order given; a failure (Redis or PostgreSQL down) ends the
tick, and the next one tries again. The rest runs on every worker, each in its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")

# Renew the leader lock only if we still hold it (compare-and-expire).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Upkeeps:
    def __init__(self, runtime: Runtime, upkeeps: Sequence[Upkeep], *, owner: str) -> None:
        self.runtime = runtime
        self.owner = owner
        self.leader_only = [u for u in upkeeps if u.leader_only]
        self.everywhere = [u for u in upkeeps if not u.leader_only]
        # The key predates the upkeep list (it was the reconciler's): running deployments'
        # workers keep agreeing on one leader across an upgrade.
        self.key = runtime.keys("reconciler", "leader")
        self._renew = runtime.redis.register_script(_RENEW)
        self._last_run: dict[str, float] = {}  # upkeep name -> time.monotonic() it last ran

    async def is_leader(self) -> bool:
        """Take or keep the leader lock; it outlives two intervals so one missed tick is fine."""
        ttl_ms = int(self.runtime.settings.reconcile_interval_seconds * 2_000) + 1_000
        redis = self.runtime.redis
        if await redis.set(self.key, self.owner, nx=True, px=ttl_ms):
            return True
        return bool(await self._renew(keys=[self.key], args=[self.owner, ttl_ms]))

    async def release(self) -> None:
        if await self.runtime.redis.get(self.key) == self.owner:
            await self.runtime.redis.delete(self.key)

    async def tick(self) -> None:
        """The leader's upkeep, once, in order (but not an upkeep that ran in this process less
        than its `at_most_every` ago)."""
        for upkeep in self.leader_only:
            if upkeep.at_most_every:
                now = time.monotonic()
                last = self._last_run.get(upkeep.name)
                if last is not None and now - last < upkeep.at_most_every:
                    continue
                self._last_run[upkeep.name] = now
            await upkeep.run(self.runtime)

    def loops(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """(task name, coroutine) of every loop to run until `stop` is set."""
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = []
        if self.leader_only:
            loops.append(("reconciler", self._lead(stop)))
        for upkeep in self.everywhere:
            loops.append((upkeep.name, self._every(upkeep, stop)))
        return loops

    async def _lead(self, stop: asyncio.Event) -> None:
        async def tick() -> None:
            if await self.is_leader():
                await self.tick()

        await _repeat(tick, stop, self.runtime.settings.reconcile_interval_seconds, "reconcile")

    async def _every(self, upkeep: Upkeep, stop: asyncio.Event) -> None:
        assert upkeep.interval is not None  # checked by Upkeep
        interval = upkeep.interval(self.runtime.settings)

        async def tick() -> None:
            await upkeep.run(self.runtime)

        await _repeat(tick, stop, interval, upkeep.name)


async def _repeat(
    tick: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event, interval: float, name: str
) -> None:
    """Tick until `stop` is set; a tick in progress finishes (stopping never interrupts a
    database call half-way, which asyncpg may not survive)."""
    while not stop.is_set():
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or PostgreSQL down: try again next tick
            log.exception(f"{name}_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
