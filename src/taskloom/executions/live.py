"""An execution's live events: what its Server-Sent Events stream shows while it runs (step
status changes, agent turns and tool calls, the token stream of `ai` and `agent` steps).

Each execution's events are one Redis Stream, `<prefix>live:<execution id>`, capped at about
`MAX_EVENTS` entries and kept `TTL_SECONDS` after its last event, so a client that reconnects
with `Last-Event-ID` (the stream entry's id) resumes where it left. The stream is a view, never
the truth: the execution's rows in PostgreSQL are. Publishing therefore never fails a step: a
Redis error loses the event and is logged once per execution.

Every event passes through the execution's secret redaction before it leaves the worker (the
same `Run.scrubbed` that guards the rows): a token stream must not spell out a secret that its
step's stored output would hide.

The hot path pays one Redis round trip per commit point, not one per event: the engine's state
changes (executions/state.py) `add` their events to a buffer, and each commit point `flush`es
them in one script call (a one-step `transform` execution: one round trip for its three events).
A step's own events (`emit`: agent turns, tokens) go at once, with whatever is buffered before
them. A flush waits at most PUBLISH_TIMEOUT_SECONDS; one that fails stops this process's
publishing for OUTAGE_SECONDS, so a dead or black-holed Redis costs a step nothing after the
first timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from taskloom.redis import Keys

log = structlog.get_logger("taskloom.executions.live")

TTL_SECONDS = 3600
MAX_EVENTS = 10_000
DELTA_INTERVAL_SECONDS = 0.05  # token deltas: at most one event per 50 ms
PUBLISH_TIMEOUT_SECONDS = 0.25  # the longest a flush waits for Redis
OUTAGE_SECONDS = 5.0  # after a failed flush, this process publishes nothing for this long
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})  # an `execution` event ends

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


def stream_key(keys: Keys, execution_id: uuid.UUID | str) -> str:
    """Every execution's stream shares one Redis Cluster slot: the API's one reader XREADs
    them all at once (streams.py), which a Cluster allows only within a slot."""
    return keys.together("live", "live", str(execution_id))


def is_end(event: str, data: dict[str, Any]) -> bool:
    """Whether the event ends its execution's stream (an `execution` event, finished)."""
    return event == "execution" and data.get("status") in TERMINAL_STATUSES


# One call appends a commit point's events and renews the stream's TTL: the cheapest round trip
# (a pipeline of XADDs and EXPIRE costs twice the client CPU: measured, docs/PERFORMANCE.md).
# ARGV: MAXLEN, TTL, then (kind, JSON data) pairs.
_APPEND = """
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()  # noqa: S324 (Redis's script id)

# Until when publishing through a Redis client is skipped (a monotonic time), by client: shared
# by every execution of the process, so an outage costs one bounded wait, not one per execution.
_outages: weakref.WeakKeyDictionary[Redis, float] = weakref.WeakKeyDictionary()


class LiveEvents:
    """The publisher of one execution's events (one per running job)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        execution_id: uuid.UUID,
        *,
        scrub: Callable[[Any], Any] | None = None,
        timeout: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        self._redis = redis
        self._key = stream_key(keys, execution_id)
        self._execution_id = execution_id
        self._scrub = scrub
        self._timeout = timeout
        self._warned = False
        self._buffer: list[tuple[str, str]] = []
        self.flushes = 0  # calls sent (Redis round trips), for tests and measurements

    def add(self, event: str, data: dict[str, Any]) -> None:
        """Buffer one event (`event` names its kind: `step`, `execution`, …) for the next
        `flush`: the engine's state changes, published once their commit point is reached."""
        body = self._scrub(data) if self._scrub is not None else data
        self._buffer.append((event, json.dumps(body, separators=(",", ":"), default=str)))

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Append one event now (with those buffered before it): `agent.turn`, `token`, …"""
        self.add(event, data)
        await self.flush()

    async def flush(self) -> None:
        """Send the buffered events in one call (nothing buffered: no round trip). Never
        raises, waits at most the timeout; lost events are logged once per execution."""
        if not self._buffer:
            return
        events, self._buffer = self._buffer, []
        if time.monotonic() < _outages.get(self._redis, 0.0):
            self._lost(events[0][0], "RedisUnavailable")
            return
        self.flushes += 1
        args: list[Any] = [MAX_EVENTS, TTL_SECONDS]
        for kind, data in events:
            args += (kind, data)
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    await self._redis.evalsha(_APPEND_SHA, 1, self._key, *args)
                except NoScriptError:  # a restarted or flushed Redis: load it once more
                    await self._redis.script_load(_APPEND)
                    await self._redis.evalsha(_APPEND_SHA, 1, self._key, *args)
        except (RedisError, OSError, TimeoutError) as error:
            _outages[self._redis] = time.monotonic() + OUTAGE_SECONDS
            self._lost(events[0][0], type(error).__name__)

    def _lost(self, kind: str, error: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "live_event_lost", execution_id=str(self._execution_id), kind=kind, error=error
            )


class Deltas:
    """Token deltas of one model call, coalesced to at most one `token` event per
    `DELTA_INTERVAL_SECONDS`. Call `flush` when the call ends, so the tail is not held back."""

    def __init__(
        self,
        emit: Emit,
        data: dict[str, Any],
        *,
        interval: float = DELTA_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._data = data  # what every event carries besides the text (step, turn, …)
        self._interval = interval
        self._clock = clock
        self._buffer: list[str] = []
        self._last = -interval

    async def add(self, text: str) -> None:
        if not text:
            return
        self._buffer.append(text)
        if self._clock() - self._last >= self._interval:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        text, self._buffer = "".join(self._buffer), []
        self._last = self._clock()
        await self._emit("token", {**self._data, "text": text})
