"""What the worker publishes on an execution's live stream (executions/state.py through
executions/live.py), run through the engine as the runner runs it, against real PostgreSQL and
Redis: the events of a one-step and of a multi-step execution, one Redis round trip per commit
point (a one-step `transform`: one in all), the CPU a flush costs, and a dead Redis that costs
a step nothing after one bounded wait."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from taskloom.executions import state
from taskloom.executions.engine import Engine
from taskloom.executions.live import PUBLISH_TIMEOUT_SECONDS, LiveEvents, stream_key
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.template_process import TemplateRenderer
from taskloom.redis import Keys
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.redis_cluster import on_node_of
from tests.workers import create_workflow, execute

ONE_STEP = [{"id": "t", "type": "transform", "args": {"value": "{{ input.n * 2 }}"}}]
MULTI = [
    {"id": "a", "type": "transform", "args": {"value": 1}},
    {"id": "b", "type": "transform", "args": {"value": 2}, "needs": ["a"]},
    {"id": "skip", "type": "transform", "args": {"value": 3}, "needs": ["b"], "when": "false"},
    {
        "id": "boom",
        "type": "transform",
        "args": {"value": "{{ input.missing.deeper }}"},
        "needs": ["b"],
    },
]


async def _engine_run(runtime: Runtime, owner: Account, execution_id: uuid.UUID) -> Engine:
    assert owner.org_id is not None
    _, run = await state.claim(
        runtime.database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    templates = TemplateRenderer.from_settings(runtime.settings)

    async def progressed() -> None:
        return None

    engine = Engine(runtime, templates, run, on_progress=progressed)
    try:
        await engine.execute()
    finally:
        await templates.aclose()
        _RAN.append((execution_id, owner.org_id))
    return engine


_RAN: list[tuple[uuid.UUID, uuid.UUID]] = []


@pytest.fixture(autouse=True)
async def _withdrawn_after(queue_runtime: Runtime) -> AsyncIterator[None]:
    """No worker ran the jobs of the executions run here: they are withdrawn after each test,
    or they would hold the fair scheduler's admissions (the session's queue) that later tests'
    executions need."""
    yield
    while _RAN:
        execution_id, org_id = _RAN.pop()
        await ExecutionQueue(queue_runtime).withdraw(execution_id=execution_id, org_id=org_id)


async def _events(runtime: Runtime, execution_id: uuid.UUID) -> list[tuple[str, dict]]:
    entries = await runtime.redis.xrange(stream_key(runtime.keys, execution_id))
    return [(fields["event"], json.loads(fields["data"])) for _, fields in entries]


async def test_a_one_step_transform_publishes_its_events_in_one_round_trip(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ONE_STEP)
    execution_id = uuid.UUID(await execute(api, owner, workflow_id, {"n": 2}))
    node = on_node_of(queue_runtime.redis, stream_key(queue_runtime.keys, execution_id))
    xadds_before = (await queue_runtime.redis.info("commandstats", **node)).get("cmdstat_xadd", {})
    engine = await _engine_run(queue_runtime, owner, execution_id)
    assert await _events(queue_runtime, execution_id) == [
        ("execution", {"status": "running"}),
        ("step", {"step_id": "t", "status": "succeeded"}),
        ("execution", {"status": "succeeded"}),
    ]
    # Before issue 22 the worker published nothing; now one script call (3 XADD + EXPIRE) in all.
    assert engine.live.flushes == 1
    xadds_after = (await queue_runtime.redis.info("commandstats", **node))["cmdstat_xadd"]
    assert xadds_after["calls"] - xadds_before.get("calls", 0) == 3


async def test_a_multi_step_execution_publishes_each_status_change_in_order(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, MULTI)
    execution_id = uuid.UUID(await execute(api, owner, workflow_id))
    engine = await _engine_run(queue_runtime, owner, execution_id)
    events = await _events(queue_runtime, execution_id)
    assert events[0] == ("execution", {"status": "running"})
    assert events[1:3] == [
        ("step", {"step_id": "a", "status": "succeeded"}),
        ("step", {"step_id": "b", "status": "succeeded"}),
    ]
    rest = events[3:-1]
    assert ("step", {"step_id": "skip", "status": "skipped"}) in rest
    failed = [d for k, d in rest if k == "step" and d["step_id"] == "boom"]
    # A template error fails the step at its first attempt, for good: its start, then failure.
    assert failed[0] == {"step_id": "boom", "status": "running", "attempt": 1}
    assert failed[-1]["status"] == "failed"
    assert failed[-1]["final"] is True
    assert failed[-1]["attempt"] == 1
    assert failed[-1]["error_code"]
    assert events[-1] == ("execution", {"status": "failed", "error_code": failed[-1]["error_code"]})
    # One round trip per commit point, never one per event.
    assert engine.live.flushes < len(events)


async def test_a_flush_costs_little_cpu(queue_runtime: Runtime) -> None:
    """The hot path's price of streaming: CPU per one-step execution's flush (three events in
    one script call), measured over many flushes."""
    keys = Keys(f"cpu{uuid.uuid4().hex[:6]}:")
    rounds = 300
    started = time.process_time()
    for _ in range(rounds):
        live = LiveEvents(queue_runtime.redis, keys, uuid.uuid4())
        live.add("execution", {"status": "running"})
        live.add("step", {"step_id": "t", "status": "succeeded"})
        live.add("execution", {"status": "succeeded"})
        await live.flush()
    per_execution = (time.process_time() - started) / rounds
    print(f"live events: {per_execution * 1e6:.0f} µs CPU per one-step execution")
    assert per_execution < 0.002  # measured ~0.2 ms on the 2-core box; a gross regression fails
    found = [key async for key in queue_runtime.redis.scan_iter(keys.match())]
    await queue_runtime.redis.delete(*found)


async def test_a_dead_redis_costs_one_bounded_wait_then_nothing() -> None:
    # A port nobody answers on after connecting would hang; a black hole is modelled by a
    # client whose connect takes longer than the publish bound.
    dead = Redis(host="10.255.255.1", port=6379, socket_connect_timeout=5)
    first = LiveEvents(dead, Keys("t:"), uuid.uuid4())
    first.add("step", {"status": "running"})
    started = time.monotonic()
    await first.flush()
    assert time.monotonic() - started < PUBLISH_TIMEOUT_SECONDS + 0.2
    second = LiveEvents(dead, Keys("t:"), uuid.uuid4())  # another execution, same process
    started = time.monotonic()
    for _ in range(20):
        await second.emit("token", {"text": "x"})
    assert time.monotonic() - started < 0.05  # skipped during the outage: no wait at all
    assert second.flushes == 0
    await dead.aclose()
