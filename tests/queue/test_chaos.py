"""Chaos, reduced (the full run is bench/chaos.py, figures in docs/PERFORMANCE.md): executions of
a two-step `http` chain and, among them, of issue 18's DAG (a fan-out of 3, a for-each of 5 items
with max_parallel 3, a durable 1 s wait and a join) while a worker is SIGKILLed or SIGTERMed
every ~1.5 s (once both are up) and replaced, and Redis (AOF on) restarts once. Nothing may be
lost or fail, every step and for-each item called twice must have been interrupted by a kill, a
hand-back or the Redis restart, and no finished step or item may run again. Then two shutdown
races the chaos run found, made deterministic: a hand-back between two steps, and a job still
being claimed when the shutdown times out."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.chaos import (
    AofRedis,
    CallRecorder,
    ChaosWorkflow,
    Monkey,
    called_after_finish,
    chain_workflow,
    dag_workflow,
    finished_rows,
    inline_outcome,
    inline_workflow,
    judge,
    missing_calls,
    read_logs,
    statuses,
)

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.executions import runner, state
from taskloom.jobs import worker_service
from taskloom.runtime import Runtime, open_runtime
from tests.conftest import fresh_deployment
from tests.factories import Account, register
from tests.workers import (
    TERMINAL,
    CountingServer,
    StartWorker,
    WorkerProcess,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
    worker_env,
)

EXECUTIONS = 150
DAG_EXECUTIONS = 12  # ten calls each, spread among the chain's (about 3 s more)
INLINE_EXECUTIONS = 40  # one-step transforms, run inline (ADR 0018) by a worker that knows them
DAG_WAIT = "1s"  # durable: the execution parks, its job completes, the waker brings it back
EXTRA = 50  # more, in the rare case all finished before both kinds of kill and the restart
STEPS = 2
STEP_DELAY = 0.02  # seconds the recorder takes to answer: kills land mid-step
CONCURRENCY = 4
LOCK_MS, STALLED_MS = 3_000, 500
KILL_EVERY = 1.5
WITHIN = 150  # seconds for every execution to finish (about 30 s is usual)
WORKER_SETTINGS: dict[str, object] = {
    "worker_concurrency": CONCURRENCY,
    # Replaced workers overlap: keep connections modest (the pool has no overflow: 2 per slot).
    "database_pool_size": 2 * CONCURRENCY,
    "max_running_per_org": 1_000,  # the per-org cap is tested elsewhere
    "queue_lock_duration_ms": LOCK_MS,
    "queue_stalled_interval_ms": STALLED_MS,
    # With the default (1), an execution whose worker is SIGKILLed twice in the same step fails
    # ("job stalled more than allowable limit", docs/QUEUE.md): with a kill every 1.5 s that
    # can happen to a 30 ms step. Here every stall may be recovered.
    "queue_max_stalled_count": 100,  # the most Settings allow
    "shutdown_timeout_seconds": 0.1,  # a SIGTERM hands most running executions back
    "reconcile_interval_seconds": 1,
    "reconcile_grace_seconds": 5,
}


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = AofRedis(directory)
    yield server
    server.close()


@pytest.fixture
async def chaos_settings(pg_server_url: str, aof_redis: AofRedis) -> AsyncIterator[Settings]:
    """A database, app role and key prefix of their own on the restartable Redis (the session's
    Redis keeps nothing on disk, and other tests' executions stay out of these workers' way)."""
    async with fresh_deployment(pg_server_url, aof_redis.url, label="chaos") as deployment:
        yield deployment.model_copy(update={"outbound_allowed_hosts": "127.0.0.1"})


@pytest.fixture
async def chaos_api(chaos_settings: Settings) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    runtime = await open_runtime(chaos_settings)
    application = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=application, client=("203.0.113.9", 50000))
    try:
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            yield runtime, client
    finally:
        await runtime.close()


@pytest.fixture
def recorder() -> Iterator[CallRecorder]:
    server = CallRecorder()
    yield server
    server.close()


@pytest.fixture
def spawn_worker(chaos_settings: Settings, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    """Starts a `taskloom worker` without waiting for it; every one is gone after the test."""
    started: list[WorkerProcess] = []

    def spawn() -> WorkerProcess:
        env = worker_env(
            chaos_settings, redis_key_prefix=chaos_settings.redis_key_prefix, **WORKER_SETTINGS
        )
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()  # SIGKILL if still running, then reaped
    assert all(w.proc.poll() is not None for w in started)


async def _submit(
    api: httpx.AsyncClient, owner: Account, workflow_ids: list[str], ids: dict[str, list[str]]
) -> None:
    """One execution per entry of `workflow_ids`, in order, 8 at a time."""
    gate = asyncio.Semaphore(8)

    async def one(n: int, workflow_id: str) -> None:
        async with gate:
            ids[workflow_id].append(await execute(api, owner, workflow_id, {"n": n}))

    await asyncio.gather(*(one(n, w) for n, w in enumerate(workflow_ids)))


def _chaos_done(monkey: Monkey) -> bool:
    """Both kinds of kill and the Redis restart have happened."""
    return (
        monkey.kills["SIGKILL"] >= 1
        and monkey.kills["SIGTERM"] >= 1
        and monkey.redis_restart is not None
    )


async def test_no_execution_is_lost_or_failed_while_workers_die_and_redis_restarts(
    chaos_api: tuple[Runtime, httpx.AsyncClient],
    aof_redis: AofRedis,
    recorder: CallRecorder,
    spawn_worker: Callable[[], WorkerProcess],
) -> None:
    runtime, api = chaos_api
    owner = await register(api, label="chaos", organization_name="Chaos Org")
    chain, dag, inline = (
        chain_workflow(recorder, STEPS, STEP_DELAY),
        dag_workflow(recorder, STEP_DELAY, DAG_WAIT),
        inline_workflow(),
    )
    flows: dict[str, ChaosWorkflow] = {}
    for flow in (chain, dag, inline):
        definition = dict(flow.definition)
        steps = definition.pop("steps")
        flows[await create_workflow(api, owner, steps, name=flow.name, **definition)] = flow
    chain_id, dag_id, inline_id = list(flows)
    # The DAG's and the inline executions spread evenly among the chain's.
    order = sorted(
        [(n / EXECUTIONS, chain_id) for n in range(EXECUTIONS)]
        + [(n / DAG_EXECUTIONS, dag_id) for n in range(DAG_EXECUTIONS)]
        + [(n / INLINE_EXECUTIONS, inline_id) for n in range(INLINE_EXECUTIONS)]
    )
    first_batch = [workflow_id for _, workflow_id in order]

    async def spawn() -> WorkerProcess:
        return spawn_worker()

    progress = {"terminal": 0}
    monkey = Monkey(
        spawn=spawn,
        workers=[spawn_worker(), spawn_worker()],
        kill_every=KILL_EVERY,
        concurrency=CONCURRENCY,
        recovery_seconds=(LOCK_MS + STALLED_MS) / 1000,
        redis=aof_redis,
        restart_redis_when=lambda: progress["terminal"] >= EXECUTIONS // 2,
        redis_down_seconds=0.5,
        min_ready_seconds=0.5,
        rng=random.Random(20_240_901),
        width=max(flow.width for flow in flows.values()),
    )
    await monkey.wait_ready()
    began = time.monotonic()
    stop = asyncio.Event()
    chaos = asyncio.create_task(monkey.run(stop))
    ids: dict[str, list[str]] = {workflow_id: [] for workflow_id in flows}

    def submitted() -> int:
        return sum(len(i) for i in ids.values())

    counts: dict[str, int] = {}
    parked = 0  # the most executions seen `waiting` at once (the DAG's wait parks them)
    try:
        await _submit(api, owner, first_batch, ids)
        while time.monotonic() - began < WITHIN:
            assert not chaos.done(), chaos.exception()
            counts = await statuses(runtime, list(flows))
            parked = max(parked, counts.get("waiting", 0))
            progress["terminal"] = sum(counts.get(s, 0) for s in TERMINAL)
            if progress["terminal"] == submitted():
                if _chaos_done(monkey) or submitted() >= 2 * EXECUTIONS:
                    break
                # A fast machine finished before every kind of chaos happened: more work.
                await _submit(api, owner, [chain_id] * EXTRA, ids)
            await asyncio.sleep(0.25)
    finally:
        ended = time.monotonic()
        stop.set()
        await asyncio.gather(chaos, return_exceptions=True)
        await monkey.stop_all(grace=40)

    calls = recorder.snapshot()
    duplicates = judge(calls, monkey.interruptions, ended)
    facts = read_logs([w.output() for w in monkey.all_workers])
    finished = await finished_rows(runtime, list(flows))
    inline_wrong, run_inline = await inline_outcome(runtime, inline_id)
    print(
        f"chaos: {submitted()} executions ({len(ids[dag_id])} DAG) in {ended - began:.1f} s, "
        f"{counts}; kills "
        f"{dict(monkey.kills)}, Redis restart {monkey.redis_restart}; {duplicates.calls} calls, "
        f"{duplicates.duplicated} duplicated ({duplicates.explained}); log events {facts.events}; "
        f"{run_inline} of {len(ids[inline_id])} one-step transforms run inline"
    )
    # The chaos happened: both kinds of kill, and the restart, while executions ran.
    assert _chaos_done(monkey), (monkey.kills, monkey.redis_restart)
    assert monkey.redis_restart is not None
    assert monkey.redis_restart["jobs_after"] > 0  # the AOF was reloaded
    assert [h for h in monkey.interruptions if h.kind == "worker_exit"] == []
    # Every SIGTERMed worker exited within SHUTDOWN_TIMEOUT_SECONDS + 2 s (a grace period just
    # above the timeout never needs a SIGKILL); bullmq's close was once forced only after 10 s.
    bound = float(WORKER_SETTINGS["shutdown_timeout_seconds"]) + 2
    assert monkey.sigterm_exits, "no worker was SIGTERMed"
    assert all(s is not None and s < bound for s in monkey.sigterm_exits), monkey.sigterm_exits
    # Nothing lost, nothing failed; the waits parked their executions and ended.
    assert counts == {"succeeded": submitted()}
    assert parked > 0
    assert {f"{e}:pause" for e in ids[dag_id]} <= set(finished)
    # Every step (and item) of every execution was called; calls made twice were interrupted.
    for workflow_id, flow in flows.items():
        assert missing_calls(calls, ids[workflow_id], flow.keys) == []
        # ... and has its succeeded row, with the time it was finished.
        assert {f"{e}:{k}" for e in ids[workflow_id] for k in flow.keys} <= set(finished)
    assert facts.succeeded_twice == []  # no finished step ran again ...
    assert called_after_finish(calls, finished) == []  # ... nor a step or item after its row
    assert duplicates.unexplained == []
    # Inline or claimed, every one-step transform succeeded with its own input's result.
    assert inline_wrong == 0


async def test_a_hand_back_between_steps_does_not_run_the_finished_step_again(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
    queue_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shutdown's hand-back used to reset "the current step" even when that step had just
    succeeded and the runner was between steps (then in the cancel check; since a step's
    success answers that, in the progress callback, made slow here), so it ran again."""
    first, second = unique_key("first"), unique_key("second")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "first", "type": "http", "args": {"url": counting_server.url(first)}},
            {"id": "second", "type": "http", "args": {"url": counting_server.url(second)}},
        ],
    )
    forget_stalls = runner._forget_stalls

    async def slow_progress(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(2)  # a slow round trip between the two steps
        await forget_stalls(*args, **kwargs)

    monkeypatch.setattr(runner, "_forget_stalls", slow_progress)
    runtime = await open_runtime(
        queue_settings.model_copy(update={"shutdown_timeout_seconds": 0.2})
    )
    service = worker_service(runtime, name="between-steps")
    try:
        await service.start()
        execution_id = await execute(api, owner, workflow_id)
        deadline = time.monotonic() + 20
        while counting_server.calls(first) < 1:
            assert time.monotonic() < deadline, "the first step was never called"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # `first` has committed; the runner is between the steps
        await service.shutdown()  # hands the execution back
    finally:
        await runtime.close()
    handed = await wait_for_status(api, owner, execution_id, {"queued"}, within=5)
    assert [(s["step_id"], s["status"]) for s in handed["steps"]] == [("first", "succeeded")]

    start_worker()
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done
    assert [counting_server.calls(k) for k in (first, second)] == [1, 1]


async def test_a_job_still_being_claimed_when_the_shutdown_times_out_is_handed_back(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
    queue_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job fetched before the pause but not yet claimed is not among the running executions
    the shutdown waits for; the close then processed it in full, past the timeout (and bullmq
    stops renewing locks during its close, so a short lock let another worker run it too).
    The claim here ends within the shutdown's budget (SHUTDOWN_TIMEOUT_SECONDS + 1.5 s); one
    slower than that is cut by the forced close, and the job waits for its lock to expire."""
    key = unique_key("claimed")
    workflow_id = await create_workflow(
        api, owner, [{"id": "call", "type": "http", "args": {"url": counting_server.url(key)}}]
    )
    claim, claiming = state.claim, asyncio.Event()

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        claiming.set()
        await asyncio.sleep(1.0)  # a claim waiting for its turn on a busy database
        return await claim(*args, **kwargs)

    monkeypatch.setattr(state, "claim", slow_claim)
    runtime = await open_runtime(
        queue_settings.model_copy(update={"shutdown_timeout_seconds": 0.2})
    )
    service = worker_service(runtime, name="claiming")
    try:
        await service.start()
        execution_id = await execute(api, owner, workflow_id)
        await asyncio.wait_for(claiming.wait(), 20)
        await service.shutdown()
    finally:
        await runtime.close()
    assert counting_server.calls(key) == 0  # the stopping worker did not run it
    await wait_for_status(api, owner, execution_id, {"queued"}, within=5)

    start_worker()
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done
    assert counting_server.calls(key) == 1
