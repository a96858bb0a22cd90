"""What happens to executions when workers stop, die or lose Redis: nothing is lost, no finished
step runs twice, and one organization cannot take every worker."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from datetime import datetime

import httpx
from prometheus_client import REGISTRY

from taskloom.config import Settings
from taskloom.jobs import worker_service
from taskloom.queue.shutdown import EXIT_MARGIN_SECONDS
from taskloom.redis import create_redis
from taskloom.runtime import Runtime, open_runtime
from tests.factories import Account, register
from tests.servers import free_port
from tests.workers import (
    CountingServer,
    ProxiedDatabase,
    StartWorker,
    WorkerProcess,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)


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


async def test_sigterm_under_load_exits_within_the_timeout_plus_2_s_and_hands_jobs_back(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    """An orchestrator's grace period just above SHUTDOWN_TIMEOUT_SECONDS is enough: with every
    slot busy on steps that do not finish, more executions waiting, and a webhook delivery
    hanging on a slow receiver, the worker still exits 0 within the timeout + 2 s. (bullmq's
    close used to be forced only after 10 s; a chaos run saw 10.8 s with a 0.1 s timeout.)"""
    stuck, slow_hook = unique_key("stuck"), unique_key("slow-hook")
    hook = await api.post(
        "/api/webhooks",
        json={"url": counting_server.url(slow_hook, sleep=60), "events": ["workflow.created"]},
        headers=owner.headers,
    )
    assert hook.status_code == 201, hook.text
    steps = [{"id": "stuck", "type": "http", "args": {"url": counting_server.url(stuck, sleep=60)}}]
    workflow_id = await create_workflow(api, owner, steps)  # also the webhook's event
    worker = start_worker(
        shutdown_timeout_seconds=1,
        webhook_timeout_seconds=60,
        webhook_dispatch_interval_seconds=0.2,
        http_step_timeout_seconds=60,
    )
    executions = [await execute(api, owner, workflow_id) for _ in range(6)]
    await _wait_for_calls(counting_server, stuck, 4)  # WORKER_CONCURRENCY=4: every slot busy
    await _wait_for_calls(counting_server, slow_hook, 1)

    stopped = time.monotonic()
    worker.send(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait, 40)
    took = time.monotonic() - stopped
    print(f"SIGTERM under load: exited {took:.2f} s later (SHUTDOWN_TIMEOUT_SECONDS=1)")
    try:
        assert code == 0, worker.output()
        assert took < 1 + EXIT_MARGIN_SECONDS, worker.output()
        assert worker.output().count("job_handed_back") == 4, worker.output()
        for execution_id in executions:
            handed = await wait_for_status(api, owner, execution_id, {"queued"}, within=5)
            assert handed["error"] is None  # a shutdown is not a failure
    finally:  # no later test's worker should inherit steps that sleep for a minute
        for execution_id in executions:
            await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
        await api.delete(f"/api/webhooks/{hook.json()['id']}", headers=owner.headers)


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


async def _kill_during(worker: WorkerProcess, server: CountingServer, key: str, calls: int) -> None:
    await _wait_for_calls(server, key, calls)
    worker.send(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)


async def test_stalls_count_only_without_progress_so_two_kills_in_two_steps_recover(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    """QUEUE_MAX_STALLED_COUNT=1 (the default): two SIGKILLs under one execution, each after a
    step had finished, are two stalls of BullMQ's count but never two in a row without
    progress, so the execution still succeeds."""
    first, second, third = unique_key("a"), unique_key("b"), unique_key("c")
    steps = [
        {"id": "a", "type": "http", "args": {"url": counting_server.url(first)}},
        {"id": "b", "type": "http", "args": {"url": counting_server.url(second, sleep=3)}},
        {"id": "c", "type": "http", "args": {"url": counting_server.url(third, sleep=3)}},
    ]
    workflow_id = await create_workflow(api, owner, steps)
    short_lock = {
        "queue_lock_duration_ms": 2000,
        "queue_stalled_interval_ms": 500,
        "queue_max_stalled_count": 1,
    }
    execution_id = await execute(api, owner, workflow_id)
    await _kill_during(start_worker(**short_lock), counting_server, second, 1)  # in step b
    await _kill_during(start_worker(**short_lock), counting_server, third, 1)  # b done, in c
    start_worker(**short_lock)

    done = await wait_for_status(api, owner, execution_id, within=40)
    assert done["status"] == "succeeded", done
    assert [counting_server.calls(k) for k in (first, second, third)] == [1, 2, 2]


async def test_two_stalls_in_the_same_step_still_fail_the_execution(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    """The crash protection the limit exists for: a step under which workers keep dying does not
    get a third worker; the reconciler records why the execution failed."""
    key = unique_key("crashy")
    steps = [{"id": "crashy", "type": "http", "args": {"url": counting_server.url(key, sleep=3)}}]
    workflow_id = await create_workflow(api, owner, steps)
    settings = {
        "queue_lock_duration_ms": 2000,
        "queue_stalled_interval_ms": 500,
        "queue_max_stalled_count": 1,
        "reconcile_interval_seconds": 0.5,
        "reconcile_grace_seconds": 0,
    }
    execution_id = await execute(api, owner, workflow_id)
    await _kill_during(start_worker(**settings), counting_server, key, 1)
    await _kill_during(start_worker(**settings), counting_server, key, 2)
    start_worker(**settings)

    done = await wait_for_status(api, owner, execution_id, within=40)
    assert done["status"] == "failed", done
    assert "stalled more than allowable limit" in str(done["error"])
    await asyncio.sleep(4)  # a third worker had time to run it, and did not
    assert counting_server.calls(key) == 2


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
    redis = create_redis(queue_settings)  # on a Cluster, FLUSHALL goes to every primary
    try:
        assert await redis.exists(f"{queue_settings.bullmq_prefix}:orchestration:{ids[0]}")
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
    api: httpx.AsyncClient, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    # Workers SIGKILLed by earlier tests leave heartbeats that live 3 x 5 s; start from none.
    async for key in queue_runtime.redis.scan_iter(match=queue_runtime.keys.match("workers")):
        await queue_runtime.redis.delete(key)
    worker = start_worker()
    deadline = time.monotonic() + 10
    while (body := (await api.get("/health/queue")).json())["workers_online"] == 0:
        assert time.monotonic() < deadline, "the worker's heartbeat never appeared"
        await asyncio.sleep(0.05)
    assert body["workers_online"] == 1
    assert body["status"] == "ok"
    assert "event_loop=uvloop" in worker.output()  # `taskloom worker` runs on uvloop
    assert {"waiting", "active", "failed", "delayed", "completed"} <= set(body["jobs"])
    assert all("pid" not in w and "id" not in w for w in body["workers"])

    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0
    after = await api.get("/health/queue")
    assert after.status_code == 200
    # A clean stop removes its heartbeat at once rather than letting it expire.
    assert after.json()["workers_online"] == 0
    assert after.json()["status"] == "no_workers"


async def test_the_worker_uses_the_orchestration_lock_settings(queue_runtime: Runtime) -> None:
    assert Settings(_env_file=None).queue_lock_duration_ms == 300_000  # type: ignore[call-arg]
    assert Settings(_env_file=None).shutdown_timeout_seconds == 30  # type: ignore[call-arg]
    service = worker_service(queue_runtime, name="opts-check")
    await service.start()
    try:
        opts = service.workers["orchestration"].opts
        settings = queue_runtime.settings
        assert opts["lockDuration"] == settings.queue_lock_duration_ms == 300_000
        assert opts["lockRenewTime"] == 150_000
        assert opts["stalledInterval"] == settings.queue_stalled_interval_ms
        assert opts["maxStalledCount"] == settings.queue_max_stalled_count
        assert opts["prefix"] == settings.bullmq_prefix
        assert opts["prefix"] in ("qtest:bull", "qtest:{qtest:bull}")  # the latter on a Cluster
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
    # The heartbeat TaskloomWorkersAbsent watches: a worker's own series, refreshed every 5 s.
    beat = re.search(
        r'^taskloom_worker_heartbeat_timestamp_seconds\{queue="orchestration"\} (\S+)$',
        scraped.text,
        re.M,
    )
    assert beat, scraped.text
    assert abs(time.time() - float(beat.group(1))) < 30


async def test_a_worker_stopped_right_after_it_started_exits_promptly(
    start_worker: StartWorker,
) -> None:
    """SIGTERM while the worker's first fetch is still setting up. CI once saw this hang for
    more than 15 s inside bullmq's `Worker.close()`, which waits for its fetch and cannot be
    cancelled; closes are now forced within the shutdown's budget and idle polls are shorter."""
    worker = start_worker()
    stopped = time.monotonic()
    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 40) == 0, worker.output()
    # Bounded whatever bullmq's fetch was doing: SHUTDOWN_TIMEOUT_SECONDS + 2 s at most.
    assert time.monotonic() - stopped < 25
    assert "worker_stopped" in worker.output()


def _renewal_failures() -> float:
    return REGISTRY.get_sample_value("queue_lock_renewal_failures_total") or 0.0


def _worker_errors() -> float:
    return REGISTRY.get_sample_value("queue_events_total", {"event": "error"}) or 0.0


async def test_a_running_job_that_loses_its_lock_is_reported_once_per_failed_renewal(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    queue_settings: Settings,
) -> None:
    runtime = await open_runtime(queue_settings.model_copy(update={"queue_lock_duration_ms": 1000}))
    service = worker_service(runtime, name="lock-loss")
    key = unique_key("held")
    step = {"id": "s", "type": "http", "args": {"url": counting_server.url(key, sleep=2)}}
    workflow_id = await create_workflow(api, owner, [step])
    before, errors_before = _renewal_failures(), _worker_errors()
    await service.start()
    try:
        execution_id = await execute(api, owner, workflow_id)
        await _wait_for_calls(counting_server, key, 1)
        # What another worker's stalled check or a Redis failover would leave: no lock.
        lock = f"{runtime.settings.bullmq_prefix}:orchestration:{execution_id}:lock"
        assert await runtime.redis.delete(lock) == 1
        deadline = time.monotonic() + 3
        while _renewal_failures() == before:
            assert time.monotonic() < deadline, "the lost lock was never reported"
            await asyncio.sleep(0.05)
        assert _worker_errors() == errors_before  # not counted a second time as an error
    finally:
        await service.shutdown()
        await runtime.close()


async def test_a_renewal_failure_for_a_job_that_already_finished_is_no_alarm(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
) -> None:
    """bullmq renews every tracked lock in one round trip and reports a job that completed
    meanwhile as a failure; that is no lost lock and must not page anyone."""
    step = {"id": "t", "type": "transform", "args": {"value": 1}}
    workflow_id = await create_workflow(api, owner, [step])
    service = worker_service(queue_runtime, name="lock-race")
    await service.start()
    try:
        execution_id = await execute(api, owner, workflow_id)
        assert (await wait_for_status(api, owner, execution_id))["status"] == "succeeded"
        before, errors_before = _renewal_failures(), _worker_errors()
        # Exactly what bullmq's lock manager emits when the race happens.
        worker = service.workers["orchestration"]
        worker.emit("lockRenewalFailed", [execution_id])
        worker.emit("error", Exception(f"could not renew lock for job {execution_id}"))
        assert _renewal_failures() == before
        assert _worker_errors() == errors_before
    finally:
        await service.shutdown()


async def test_executions_taken_during_a_database_outage_wait_for_it_and_succeed(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
    proxied_database: ProxiedDatabase,
    queue_runtime: Runtime,
) -> None:
    """The worker reaches PostgreSQL through a proxy the test cuts until every job taken
    meanwhile has been put back as often as it has attempts (3 here): an outage is not the
    execution's fault and must not use up its attempts."""
    key = unique_key("outage")
    step = {"id": "s", "type": "http", "args": {"url": counting_server.url(key)}}
    workflow_id = await create_workflow(api, owner, [step])
    worker = start_worker(database_url=proxied_database.url)
    first = await execute(api, owner, workflow_id)
    assert (await wait_for_status(api, owner, first))["status"] == "succeeded"

    with proxied_database.proxy.outage():
        ids = [await execute(api, owner, workflow_id) for _ in range(4)]
        # Each job is taken and put back at least as often as it has attempts: had the outage
        # counted as failed attempts, every one of them would now have failed.
        for execution_id in ids:
            await worker.wait_for_log(
                "database_unavailable",
                containing=f"job_id={execution_id} ",
                times=queue_runtime.settings.execution_max_attempts,
            )
        assert counting_server.calls(key) == 1
    done = [await wait_for_status(api, owner, i, within=60) for i in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 4, done
    assert counting_server.calls(key) == 5
