"""The live-event publisher (executions/live.py) against a real Redis: one stream per
execution, its TTL, the redaction, the token coalescing, and a Redis outage that loses events
without failing the step."""

from __future__ import annotations

import json
import uuid

import pytest
from redis.asyncio import Redis

from taskloom.executions.live import MAX_EVENTS, TTL_SECONDS, Deltas, LiveEvents, stream_key
from taskloom.redis import Keys


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _entries(redis: Redis, key: str) -> list[tuple[str, dict]]:
    return [
        (fields[b"event"].decode(), json.loads(fields[b"data"]))
        for _, fields in await redis.xrange(key)
    ]


async def test_events_are_appended_in_order_to_the_executions_stream(redis: Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    execution_id = uuid.uuid4()
    live = LiveEvents(redis, keys, execution_id)
    await live.emit("step", {"step_id": "a", "status": "running"})
    await live.emit("step", {"step_id": "a", "status": "succeeded"})
    key = stream_key(keys, execution_id)
    assert key == f"{keys.prefix}live:{execution_id}"
    assert await _entries(redis, key) == [
        ("step", {"step_id": "a", "status": "running"}),
        ("step", {"step_id": "a", "status": "succeeded"}),
    ]
    assert TTL_SECONDS - 5 < await redis.ttl(key) <= TTL_SECONDS
    assert MAX_EVENTS >= 1000
    await redis.delete(key)


async def test_events_pass_through_the_executions_redaction(redis: Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    execution_id = uuid.uuid4()

    def scrub(value):
        return json.loads(json.dumps(value).replace("hunter2", "[secret:PW]"))

    live = LiveEvents(redis, keys, execution_id, scrub=scrub)
    await live.emit("token", {"text": "the password is hunter2"})
    raw = await redis.xrange(stream_key(keys, execution_id))
    assert b"hunter2" not in raw[0][1][b"data"]
    assert json.loads(raw[0][1][b"data"]) == {"text": "the password is [secret:PW]"}
    await redis.delete(stream_key(keys, execution_id))


async def test_a_redis_outage_loses_the_event_without_raising() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    live = LiveEvents(dead, Keys("t:"), uuid.uuid4())
    await live.emit("step", {"status": "running"})  # no exception: the rows stay the truth
    await live.emit("step", {"status": "succeeded"})
    await dead.aclose()


async def test_token_deltas_are_coalesced_to_one_event_per_interval() -> None:
    sent: list[tuple[str, dict]] = []
    now = [0.0]

    async def emit(event: str, data: dict) -> None:
        sent.append((event, data))

    deltas = Deltas(emit, {"turn": 1}, interval=0.05, clock=lambda: now[0])
    await deltas.add("Hel")  # the first delta goes at once
    for piece, at in (("lo", 0.01), (", ", 0.02), ("wor", 0.049)):
        now[0] = at
        await deltas.add(piece)
    assert sent == [("token", {"turn": 1, "text": "Hel"})]
    now[0] = 0.05
    await deltas.add("ld")
    assert sent[-1] == ("token", {"turn": 1, "text": "lo, world"})
    now[0] = 0.06
    await deltas.add("!")
    await deltas.add("")
    assert len(sent) == 2  # held back: less than 50 ms since the last event
    await deltas.flush()
    assert sent[-1] == ("token", {"turn": 1, "text": "!"})
    await deltas.flush()  # nothing left: no empty event
    assert len(sent) == 3
