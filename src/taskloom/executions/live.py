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
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskloom.redis import Keys

log = structlog.get_logger("taskloom.executions.live")

TTL_SECONDS = 3600
MAX_EVENTS = 10_000
DELTA_INTERVAL_SECONDS = 0.05  # token deltas: at most one event per 50 ms

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


def stream_key(keys: Keys, execution_id: uuid.UUID | str) -> str:
    return keys("live", str(execution_id))


class LiveEvents:
    """The publisher of one execution's events (one per running job)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        execution_id: uuid.UUID,
        *,
        scrub: Callable[[Any], Any] | None = None,
    ) -> None:
        self._redis = redis
        self._key = stream_key(keys, execution_id)
        self._execution_id = execution_id
        self._scrub = scrub
        self._warned = False

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Append one event (`event` names its kind: `step`, `agent.turn`, `token`, …)."""
        body = self._scrub(data) if self._scrub is not None else data
        fields: dict[Any, Any] = {
            "event": event,
            "data": json.dumps(body, separators=(",", ":"), default=str),
        }
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._key, fields, maxlen=MAX_EVENTS, approximate=True)
                pipe.expire(self._key, TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as error:
            if not self._warned:
                self._warned = True
                log.warning(
                    "live_event_lost",
                    execution_id=str(self._execution_id),
                    kind=event,
                    error=type(error).__name__,
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
