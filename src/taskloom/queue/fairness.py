"""Fair sharing of the workers between organizations (docs/adr/0006).

An accepted execution does not go straight into the BullMQ queue: it waits in its
organization's *ready list* in Redis. One Lua script *admits* work into the queue, round-robin
over the organizations that have work and a free slot (fewer than MAX_RUNNING_PER_ORG
admitted), and only as much as the live workers can take (twice their slots). The caller then
adds each admitted execution's job with the ordinary `Queue.add`. So the queue never holds more
than a capped organization's share: its other executions wait in Redis, holding no worker slot
and no database connection, and never stand in front of another organization's jobs.

The script runs when an execution is accepted (API, after the commit), when jobs have
completed or failed for good (worker, for all those ending within 2 ms) or an execution is
withdrawn (cancel), and on each worker heartbeat (registering the worker's slots). An admitted
execution stays admitted until it finishes: also while its job waits for a retry's backoff or
is handed back on shutdown.

Keys, all under one hash tag (`<prefix>{<prefix>fair}:…`) so a Redis Cluster keeps them in one
slot:
- `ready:<org>`    ZSET execution id → arrival number (FIFO within the organization)
- `admitted:<org>` ZSET execution id → admission time (ms): the organization's slots in use
- `admitted`       ZSET `<org>:<id>` → admission time: every admitted execution, for the budget
                   and for the reconciler's repairs
- `ring`           ZSET org → round: organizations with ready work and a free slot, the
                   lowest round first (start-time fair queueing)
- `jobs`           HASH execution id → the job's data (request id, trace) until admitted
- `workers`/`slots` live workers (ZSET id → expiry ms) and their concurrency (HASH)
- `next`           HASH org → the round after its last admission, while it is out of the ring
- `meta`           HASH: `round` being served, `seq` (arrival numbers)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from taskloom.config import Settings
from taskloom.redis import Keys

HINT_SECONDS = 1.0  # how long a submission's count of its organization's executions is trusted
_HINTS_KEPT = 10_000

# KEYS[1] = the base; ARGV = now (ms), cap per organization, floor of the budget, op, op args.
_SCRIPT = """
local base = KEYS[1]
local now, cap, floor = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local op = ARGV[4]
local RING, META, ADMITTED = base .. ':ring', base .. ':meta', base .. ':admitted'
local JOBS, WORKERS, SLOTS = base .. ':jobs', base .. ':workers', base .. ':slots'
local NEXT = base .. ':next'

local function ready(org) return base .. ':ready:' .. org end
local function running(org) return base .. ':admitted:' .. org end

local function eligible(org)
  return redis.call('ZCARD', ready(org)) > 0 and redis.call('ZCARD', running(org)) < cap
end

-- Start-time fair queueing: each organization in the ring carries the round it is next served
-- in, and the ring serves the lowest round first. One that (re)joins — work arrived, or a slot
-- freed at its cap — joins the round being served now, or the round after its last admission
-- if that is later: it neither waits behind rounds others queued meanwhile nor gets a second
-- turn in a round it was already served in.
local function enlist(org)
  if eligible(org) and not redis.call('ZSCORE', RING, org) then
    local now_round = tonumber(redis.call('HGET', META, 'round') or '0')
    local own = tonumber(redis.call('HGET', NEXT, org) or '0')
    redis.call('HDEL', NEXT, org)
    redis.call('ZADD', RING, math.max(now_round, own), org)
  end
end

-- How many executions may be admitted at once: twice the live workers' slots (one running,
-- one waiting to be fetched, per slot), and at least `floor` while no worker is registered.
local function budget()
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', WORKERS, '-inf', now)) do
    redis.call('ZREM', WORKERS, dead)
    redis.call('HDEL', SLOTS, dead)
  end
  local slots = 0
  for _, n in ipairs(redis.call('HVALS', SLOTS)) do slots = slots + tonumber(n) end
  return math.max(2 * slots, floor)
end

-- Round-robin: take the organization whose turn it is, admit its oldest ready execution, queue
-- it for the next round if it still has work and a free slot. An organization found at its cap
-- (or without work) leaves the ring until a release or an arrival brings it back.
local function admit()
  local out = {}
  local free = budget() - redis.call('ZCARD', ADMITTED)
  while free > 0 do
    local head = redis.call('ZPOPMIN', RING)
    if #head == 0 then break end
    local org, round = head[1], tonumber(head[2])
    if redis.call('ZCARD', running(org)) < cap then
      local item = redis.call('ZPOPMIN', ready(org))
      if #item > 0 then
        local id = item[1]
        redis.call('ZADD', running(org), now, id)
        redis.call('ZADD', ADMITTED, now, org .. ':' .. id)
        out[#out + 1] = id
        out[#out + 1] = org
        out[#out + 1] = redis.call('HGET', JOBS, id) or ''
        redis.call('HDEL', JOBS, id)
        free = free - 1
        redis.call('HSET', META, 'round', round)
        if eligible(org) then
          redis.call('ZADD', RING, round + 1, org)
        else
          redis.call('HSET', NEXT, org, round + 1)
        end
      end
    end
  end
  return out
end

if op == 'accept' then  -- ARGV[5..]: org, id, data, org, id, data, ...
  for i = 5, #ARGV, 3 do
    local org, id = ARGV[i], ARGV[i + 1]
    if not redis.call('ZSCORE', running(org), id) then
      redis.call('ZADD', ready(org), 'NX', redis.call('HINCRBY', META, 'seq', 1), id)
      redis.call('HSET', JOBS, id, ARGV[i + 2])
      enlist(org)
    end
  end
  local out = admit()
  -- Each one's organization's executions in Redis, for the caller's MAX_QUEUED_PER_ORG hint.
  for i = 5, #ARGV, 3 do
    out[#out + 1] = redis.call('ZCARD', ready(ARGV[i])) + redis.call('ZCARD', running(ARGV[i]))
  end
  return out
elseif op == 'release' then  -- ARGV[5..]: org, id, org, id, ...
  for i = 5, #ARGV, 2 do
    local org, id = ARGV[i], ARGV[i + 1]
    redis.call('ZREM', running(org), id)
    redis.call('ZREM', ADMITTED, org .. ':' .. id)
    redis.call('ZREM', ready(org), id)
    redis.call('HDEL', JOBS, id)
  end
  for i = 5, #ARGV, 2 do enlist(ARGV[i]) end
elseif op == 'register' then
  redis.call('ZADD', WORKERS, ARGV[7], ARGV[5])
  redis.call('HSET', SLOTS, ARGV[5], ARGV[6])
elseif op == 'deregister' then
  redis.call('ZREM', WORKERS, ARGV[5])
  redis.call('HDEL', SLOTS, ARGV[5])
  return {}
end
return admit()
"""


@dataclass(frozen=True)
class Admitted:
    """An execution the script let into the queue: the caller adds its job now."""

    execution_id: uuid.UUID
    org_id: uuid.UUID
    data: dict[str, Any]  # the job's data as accepted (request id, trace), or {} if unknown


def _admitted(reply: list[Any]) -> list[Admitted]:
    return [
        Admitted(
            execution_id=uuid.UUID(reply[i]),
            org_id=uuid.UUID(reply[i + 1]),
            data=json.loads(reply[i + 2]) if reply[i + 2] else {},
        )
        for i in range(0, len(reply), 3)
    ]


class FairScheduler:
    """The ready lists and the admission script; every method is one Redis round trip."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings) -> None:
        self.redis = redis
        self.base = keys.tagged("fair")
        self.settings = settings
        self._script = redis.register_script(_SCRIPT)
        # organization → (its executions in Redis, when seen): the MAX_QUEUED_PER_ORG hint
        self._queued: dict[uuid.UUID, tuple[int, float]] = {}

    def key(self, *parts: str) -> str:
        return ":".join((self.base, *parts))

    async def accept(
        self, *, org_id: uuid.UUID, execution_id: uuid.UUID, data: dict[str, Any]
    ) -> list[Admitted]:
        """Put the execution in its organization's ready list (a no-op if it is there or
        admitted already) and admit what may run."""
        return await self.accept_many([(org_id, execution_id, data)])

    async def accept_many(
        self, accepted: list[tuple[uuid.UUID, uuid.UUID, dict[str, Any]]]
    ) -> list[Admitted]:
        """`accept` for several (org, execution, data) at once: one script call."""
        if not accepted:
            return []
        parts = [
            str(part)
            for org_id, execution_id, data in accepted
            for part in (org_id, execution_id, json.dumps(data))
        ]
        reply = await self._call("accept", *parts)
        counts = reply[len(reply) - len(accepted) :]
        for (org_id, _, _), count in zip(accepted, counts, strict=True):
            self._note_queued(org_id, int(count))
        return _admitted(reply[: len(reply) - len(accepted)])

    def surely_below(self, org_id: uuid.UUID, limit: int) -> bool:
        """Whether the organization had far fewer than `limit` executions waiting or admitted
        a moment ago, as this process's last submission for it found (free: no round trip).
        "Far": by a tenth of the limit (at least 100), which other processes would have to
        add within HINT_SECONDS to push it over. False when unknown, stale or close: the
        caller then counts exactly."""
        seen = self.seen_queued(org_id)
        return seen is not None and seen + max(100, limit // 10) < limit

    def seen_queued(self, org_id: uuid.UUID) -> int | None:
        """The organization's executions waiting or admitted as this process's last submission
        for it found, if within HINT_SECONDS (free: no round trip); None: not known."""
        seen = self._queued.get(org_id)
        if seen is None or time.monotonic() - seen[1] > HINT_SECONDS:
            return None
        return seen[0]

    def _note_queued(self, org_id: uuid.UUID, count: int) -> None:
        now = time.monotonic()
        if len(self._queued) >= _HINTS_KEPT:  # forget organizations not seen lately
            self._queued = {o: v for o, v in self._queued.items() if now - v[1] <= HINT_SECONDS}
        self._queued[org_id] = (count, now)

    async def release(self, *pairs: tuple[uuid.UUID, uuid.UUID]) -> list[Admitted]:
        """These (org, execution) finished or were withdrawn: free their slots, admit what may
        run."""
        return await self._run("release", *(str(part) for pair in pairs for part in pair))

    async def register(self, *, worker: str, slots: int, ttl_seconds: float) -> list[Admitted]:
        """A live worker's slots count towards the budget until `ttl_seconds` from now."""
        expiry = int((time.time() + ttl_seconds) * 1000)
        return await self._run("register", worker, str(slots), str(expiry))

    async def deregister(self, *, worker: str) -> None:
        await self._run("deregister", worker)

    async def admit(self) -> list[Admitted]:
        return await self._run("admit")

    async def _run(self, op: str, *args: str) -> list[Admitted]:
        return _admitted(await self._call(op, *args))

    async def _call(self, op: str, *args: str) -> list[Any]:
        s = self.settings
        now = int(time.time() * 1000)
        head: list[str | int] = [now, s.max_running_per_org, s.worker_concurrency, op]
        return list(await self._script(keys=[self.base], args=[*head, *args]))

    # --- what the reconciler and the tests look at ----------------------------------------------

    async def placement(self, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[str | None]:
        """For each (org, execution): "admitted", "ready", or None (neither), in one trip."""
        if not pairs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for org_id, execution_id in pairs:
                pipe.zscore(self.key("admitted", str(org_id)), str(execution_id))
                pipe.zscore(self.key("ready", str(org_id)), str(execution_id))
            scores = await pipe.execute()
        return [
            "admitted" if scores[i] is not None else "ready" if scores[i + 1] is not None else None
            for i in range(0, len(scores), 2)
        ]

    async def admitted_before(
        self, cutoff_ms: int, *, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(org, execution) admitted before `cutoff_ms`, oldest first."""
        members = await self.redis.zrangebyscore(
            self.key("admitted"), "-inf", cutoff_ms, start=0, num=limit
        )
        pairs = []
        for member in members:
            org, _, execution = str(member).partition(":")
            pairs.append((uuid.UUID(org), uuid.UUID(execution)))
        return pairs

    async def running(self, org_id: uuid.UUID) -> set[str]:
        """The organization's admitted executions."""
        return {str(m) for m in await self.redis.zrange(self.key("admitted", str(org_id)), 0, -1)}

    async def waiting(self, org_id: uuid.UUID) -> int:
        """How many of the organization's executions wait in its ready list."""
        return int(await self.redis.zcard(self.key("ready", str(org_id))))
