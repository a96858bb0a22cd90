"""What happens to executions when workers stop, die or lose Redis: nothing is lost, no finished
step runs twice, and one organization cannot take every worker."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime

import httpx
from redis.asyncio import Redis

from taskloom.config import Settings
from taskloom.queue.worker import WorkerService
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.queue.conftest import (
    CountingServer,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)
from tests.servers import free_port


async def _wait_for_calls(server: CountingServer, key: str, calls: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while server.calls(key) < calls:
        assert time.monotonic() < deadline, f"{key} was called {server.calls(key)} times"
        await asyncio.sleep(0.05)


def _three_steps(
    server: CountingServer, slow_seconds: float
) -> tuple[list[dict[str, object]], tuple[str, str, str]]:
    first, slow, last = unique_key("first"), unique_key("slow"), unique_key("last")
    steps: list[dict[str, object]] = [
        {"id": "first", "type": "http", "args": {"url": server.url(first)}},
        {"id": "slow", "type": "http", "args": {"url": server.url(slow, sleep=slow_seconds)}},
        {"id": "last", "type": "http", "args": {"url": server.url(last)}},
    ]
    return steps, (first, slow, last)


async def test_sigterm_lets_the_running_step_finish_and_exits_0(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    steps, (first, slow, last) = _three_steps(counting_server, slow_seconds=3)
    workflow_id = await create_workflow(api, owner, steps)
    worker = start_worker(shutdown_timeout_seconds=10)
    execution_id = await execute(api, owner, workflow_id)
    await _wait_for_calls(counting_server, slow, 1)

    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0, worker.output()
    assert time.monotonic() - stopped_at < 10

    done = await wait_for_status(api, owner, execution_id, within=5)
    assert done["status"] == "succeeded", done
    assert [counting_server.calls(k) for k in (first, slow, last)] == [1, 1, 1]
    assert "job_handed_back" not in worker.output()


async def test_sigterm_hands_a_long_step_back_and_another_worker_finishes_it(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    steps, (first, slow, last) = _three_steps(counting_server, slow_seconds=4)
    workflow_id = await create_workflow(api, owner, steps)
    worker = start_worker(shutdown_timeout_seconds=1)
    execution_id = await execute(api, owner, workflow_id)
    await _wait_for_calls(counting_server, slow, 1)

    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0, worker.output()
    assert "job_handed_back" in worker.output()
    handed = await wait_for_status(api, owner, execution_id, {"queued"}, within=5)
    assert handed["error"] is None  # a shutdown is not a failure
    assert [s["status"] for s in handed["steps"]] == ["succeeded", "pending"]

    taken_over = time.monotonic()
    start_worker()
    done = await wait_for_status(api, owner, execution_id)
    # Handed back: picked up at once, not after the 300 s lock would have expired.
    took = time.monotonic() - taken_over
    print(f"hand-back: second worker finished the execution {took:.1f} s after it started")
    assert took < 15
    assert done["status"] == "succeeded", done
    assert [counting_server.calls(k) for k in (first, slow, last)] == [1, 2, 1]


async def test_sigkill_mid_execution_resumes_on_another_worker(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    steps, (first, slow, last) = _three_steps(counting_server, slow_seconds=3)
    workflow_id = await create_workflow(api, owner, steps)
    short_lock = {"queue_lock_duration_ms": 2000, "queue_stalled_interval_ms": 500}
    victim = start_worker(**short_lock)
    execution_id = await execute(api, owner, workflow_id)
    await _wait_for_calls(counting_server, slow, 1)

    victim.send(signal.SIGKILL)
    victim.wait(10)
    killed = time.monotonic()
    start_worker(**short_lock)
    done = await wait_for_status(api, owner, execution_id)
    print(f"SIGKILL: execution finished {time.monotonic() - killed:.1f} s after the kill")

    assert done["status"] == "succeeded", done
    # The step that had finished before the kill ran exactly once; the interrupted one again.
    assert counting_server.calls(first) == 1
    assert counting_server.calls(slow) == 2
    assert counting_server.calls(last) == 1


async def test_flushall_while_queued_the_reconciler_enqueues_again(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
    queue_settings: Settings,
) -> None:
    key = unique_key("flushed")
    workflow_id = await create_workflow(
        api, owner, [{"id": "call", "type": "http", "args": {"url": counting_server.url(key)}}]
    )
    ids = [await execute(api, owner, workflow_id) for _ in range(3)]
    redis = Redis.from_url(queue_settings.redis_url or "")
    try:
        assert await redis.exists(f"qtest:bull:orchestration:{ids[0]}")
        await redis.flushall()
    finally:
        await redis.aclose()

    start_worker(reconcile_grace_seconds=0)
    for execution_id in ids:
        assert (await wait_for_status(api, owner, execution_id))["status"] == "succeeded"
    assert counting_server.calls(key) == 3


async def test_one_organization_cannot_take_every_worker(
    api: httpx.AsyncClient, counting_server: CountingServer, start_worker: StartWorker
) -> None:
    busy = await register(api, label="busy", organization_name="Busy Org")
    other = await register(api, label="other", organization_name="Other Org")
    busy_key, other_key = unique_key("busy"), unique_key("other")
    busy_wf = await create_workflow(
        api,
        busy,
        [{"id": "s", "type": "http", "args": {"url": counting_server.url(busy_key, sleep=0.8)}}],
    )
    other_wf = await create_workflow(
        api, other, [{"id": "s", "type": "http", "args": {"url": counting_server.url(other_key)}}]
    )
    start_worker(max_running_per_org=1, worker_concurrency=4)
    busy_ids = [await execute(api, busy, busy_wf) for _ in range(3)]
    other_ids = [await execute(api, other, other_wf) for _ in range(3)]

    busy_done = [await wait_for_status(api, busy, i) for i in busy_ids]
    other_done = [await wait_for_status(api, other, i) for i in other_ids]
    assert {d["status"] for d in busy_done + other_done} == {"succeeded"}
    assert counting_server.log.max_inflight[busy_key] == 1  # the cap held
    last_busy = max(datetime.fromisoformat(d["finished_at"]) for d in busy_done)
    last_other = max(datetime.fromisoformat(d["finished_at"]) for d in other_done)
    assert last_other < last_busy  # the other org did not wait behind the busy one


async def test_health_queue_reports_workers_and_counts(
    api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    worker = start_worker()
    health = await api.get("/health/queue")
    assert health.status_code == 200
    body = health.json()
    assert body["workers_online"] >= 1
    assert body["status"] == "ok"
    assert {"waiting", "active", "failed", "delayed", "completed"} <= set(body["jobs"])
    assert all("pid" not in w and "id" not in w for w in body["workers"])

    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0
    after = (await api.get("/health/queue")).json()
    assert after["workers_online"] == body["workers_online"] - 1


async def test_the_worker_uses_the_orchestration_lock_settings(queue_runtime: Runtime) -> None:
    assert Settings(_env_file=None).queue_lock_duration_ms == 300_000  # type: ignore[call-arg]
    assert Settings(_env_file=None).shutdown_timeout_seconds == 30  # type: ignore[call-arg]
    service = WorkerService(queue_runtime, name="opts-check")
    await service.start()
    try:
        assert service.worker is not None
        opts = service.worker.opts
        settings = queue_runtime.settings
        assert opts["lockDuration"] == settings.queue_lock_duration_ms == 300_000
        assert opts["lockRenewTime"] == 150_000
        assert opts["stalledInterval"] == settings.queue_stalled_interval_ms
        assert opts["maxStalledCount"] == settings.queue_max_stalled_count
        assert opts["prefix"] == "qtest:bull"
    finally:
        await service.shutdown()


async def test_a_worker_serves_its_own_metrics(start_worker: StartWorker) -> None:
    port = free_port()
    start_worker(worker_metrics_port=port)
    async with httpx.AsyncClient() as client:
        scraped = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert scraped.status_code == 200
    assert "taskloom_worker_executions_running" in scraped.text
    assert "queue_jobs_stalled_total" in scraped.text


async def test_a_worker_stopped_right_after_it_started_exits_promptly(
    start_worker: StartWorker,
) -> None:
    """SIGTERM while the worker's first fetch is still setting up. CI once saw this hang for
    more than 15 s inside bullmq's `Worker.close()`, which waits for its fetch and cannot be
    cancelled; closes are now forced after a bound and idle polls are shorter."""
    worker = start_worker()
    stopped = time.monotonic()
    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0, worker.output()
    # Bounded whatever bullmq's fetch was doing: each queue's close is forced after 10 s.
    assert time.monotonic() - stopped < 25
    assert "worker_stopped" in worker.output()
