"""Redis Sentinel failover under load: nothing is lost when the master dies mid-run.

A primary, one replica and three Sentinels (quorum 2, `down-after-milliseconds` 1000) start on
loopback ports (tests/servers.py SentinelGroup); an in-process API (the real app over ASGI) and
`taskloom worker` processes reach Redis only through the Sentinels (REDIS_SENTINELS). N
executions of a chain of `http` steps are submitted; each step calls a local server that records
every call (bench/chaos.py's CallRecorder) and answers after a short delay. When a fraction of
them are finished:

1. the replica is cut off (its replication user switched off and its link killed), and L more
   executions are submitted: the primary acknowledges their jobs, the replica never sees them,
   as with any replica a moment behind (replication is asynchronous), but for certain;
2. the primary gets SIGKILL, and D more executions are submitted while there is no master
   (their requests wait for the failover);
3. the Sentinels promote the replica. Every execution PostgreSQL says is queued or running but
   the new master has never heard of is "lost"; the reconciler (RECONCILE_INTERVAL_SECONDS,
   RECONCILE_GRACE_SECONDS) puts it back.

Measured: the promotion (kill to the Sentinels naming the new master), the pause (the last
execution finished before the kill to the first one after), how many jobs were lost and when
the last was back in Redis (and finished), and how long the executions submitted without a
master took to be accepted. Judged as in bench/chaos.py: every execution succeeded, every step
was called, no finished step ran again, and every duplicated call overlaps the failover (from
the cut to the promotion plus a lock's expiry) within its capacity (each worker's slots).

    python bench/sentinel_failover.py [--executions 2000] [--lagging 100] [--during 50]
        [--workers 2] [--concurrency 10]

Prints the figures and a `RESULT {json}` line; exits 0 iff nothing was lost or failed and every
duplicate is explained. The run uses a database, an application role and a key prefix of its own
on `--database-url` (default TEST_DATABASE_URL, then the local server) and removes them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text

try:
    from bench.chaos import (
        BenchWorker,
        CallRecorder,
        Duplicates,
        Interruption,
        LogFacts,
        called_after_finish,
        chain_workflow,
        finished_rows,
        is_ready,
        judge,
        missing_calls,
        read_logs,
        start_worker,
        statuses,
        submit,
        worker_environment,
    )
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from chaos import (  # type: ignore[no-redef]
        BenchWorker,
        CallRecorder,
        Duplicates,
        Interruption,
        LogFacts,
        called_after_finish,
        chain_workflow,
        finished_rows,
        is_ready,
        judge,
        missing_calls,
        read_logs,
        start_worker,
        statuses,
        submit,
        worker_environment,
    )
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.executions.queue import ExecutionQueue
from taskloom.runtime import Runtime, open_runtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import SentinelGroup

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POLL_SECONDS = 0.05
UNFINISHED_BEFORE = text(
    "select id, org_id from workflow_executions where workflow_id = :wf"
    " and status in ('queued', 'running') and created_at < to_timestamp(:before)"
)
FINISHED_AT = text(
    "select extract(epoch from finished_at)::float8 from workflow_executions"
    " where workflow_id = :wf and finished_at is not null order by 1"
)
TERMINAL_AMONG = text(
    "select id from workflow_executions where id = any(:ids)"
    " and status in ('succeeded', 'failed', 'cancelled')"
)


@dataclass
class Plan:
    executions: int = 200  # submitted first
    lagging: int = 20  # submitted after the replica was cut off, before the kill
    during: int = 10  # submitted while there is no master
    kill_at: float = 0.3  # fraction of `executions` finished when the replica is cut off
    workers: int = 2
    concurrency: int = 4
    steps: int = 2
    step_delay: float = 0.02
    down_after_ms: int = 1_000
    failover_timeout_ms: int = 5_000
    failover_seconds: float = 15.0  # REDIS_FAILOVER_SECONDS
    lock_ms: int = 3_000
    stalled_ms: int = 500
    reconcile_interval: float = 0.5
    reconcile_grace: float = 2.0
    within: float = 120.0  # seconds for every execution to finish


@dataclass
class Outcome:
    submitted: int
    counts: dict[str, int]
    promotion_seconds: float  # kill -> the Sentinels name the new master
    pause_seconds: float  # the longest time without an execution finishing, from the kill on
    resumed_after_promotion_seconds: float  # promotion -> first execution finished after
    lost: int  # unfinished in PostgreSQL, unknown to the new master
    lost_back_seconds: float | None  # kill -> the last lost job back in Redis
    lost_finished_seconds: float | None  # kill -> the last lost execution finished
    during_accept_seconds: list[float]  # POST …/execute while there was no master
    during_refused: int  # ... answered other than 202 (and tried again)
    elapsed_seconds: float
    duplicates: Duplicates
    missing_calls: list[str]
    called_after_finish: list[str]
    logs: LogFacts
    reconciled: int  # `reconciled` log lines of the workers (the reconciler put jobs back)
    not_succeeded: list[str] = field(default_factory=list)


async def run_failover(plan: Plan, pg_url: str, directory: Path) -> Outcome:
    """The whole run, on servers started in `directory` and removed afterwards."""
    (directory / "redis").mkdir(parents=True)
    (directory / "logs").mkdir()
    group = SentinelGroup(
        directory / "redis",
        down_after_ms=plan.down_after_ms,
        failover_timeout_ms=plan.failover_timeout_ms,
    )
    try:
        await asyncio.to_thread(group.wait_ready)
        async with scratch_deployment(
            pg_url,
            None,
            label="sentinel",
            redis_sentinels=group.addresses,
            redis_sentinel_master=group.name,
            redis_failover_seconds=plan.failover_seconds,
            outbound_allowed_hosts="127.0.0.1",
            worker_concurrency=plan.concurrency,
            rate_limit_reads=100_000_000,
            rate_limit_writes=100_000_000,
            rate_limit_execute=100_000_000,
            max_running_per_org=10_000,  # the per-org cap is not what we test
            queue_lock_duration_ms=plan.lock_ms,
            queue_stalled_interval_ms=plan.stalled_ms,
            reconcile_interval_seconds=plan.reconcile_interval,
            reconcile_grace_seconds=plan.reconcile_grace,
            shutdown_timeout_seconds=1.0,
            log_level="error",
        ) as settings:
            return await _run(plan, settings, group, directory / "logs")
    finally:
        group.close()


def _worker_env(settings: Settings) -> dict[str, str]:
    """`taskloom worker`'s environment (bench/chaos.py's), with the Sentinels for REDIS_URL."""
    env = worker_environment(settings)
    del env["REDIS_URL"]
    return env | {
        "REDIS_SENTINELS": settings.redis_sentinels or "",
        "REDIS_SENTINEL_MASTER": settings.redis_sentinel_master or "",
        "REDIS_FAILOVER_SECONDS": str(settings.redis_failover_seconds),
    }


async def _run(plan: Plan, settings: Settings, group: SentinelGroup, logs: Path) -> Outcome:
    recorder = CallRecorder()
    runtime = await open_runtime(settings)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    env = _worker_env(settings)
    workers = [start_worker(env, logs / f"worker-{n}.log") for n in range(plan.workers)]
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://sentinel") as api,
        ):
            headers, workflow_id = await _owner_and_workflow(api, recorder, plan)
            await _wait_started(workers)
            return await _failover(
                plan, runtime, group, api, headers, workflow_id, recorder, workers
            )
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                await asyncio.to_thread(worker.proc.wait, 30)
            except Exception:
                worker.proc.kill()
                await asyncio.to_thread(worker.proc.wait, 10)
        recorder.close()
        await runtime.close()


async def _owner_and_workflow(
    api: httpx.AsyncClient, recorder: CallRecorder, plan: Plan
) -> tuple[dict[str, str], str]:
    email = f"sentinel-{uuid.uuid4().hex[:8]}@example.test"
    registered = await api.post(
        "/auth/register",
        json={
            "email": email,
            "password": uuid.uuid4().hex,
            "display_name": "Sentinel",
            "organization_name": "Sentinel",
        },
    )
    registered.raise_for_status()
    headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
    flow = chain_workflow(recorder, plan.steps, plan.step_delay)
    body = {"name": "sentinel-chain", "definition": flow.definition}
    created = await api.post("/api/workflows", json=body, headers=headers)
    created.raise_for_status()
    return headers, str(created.json()["id"])


async def _wait_started(workers: list[BenchWorker], within: float = 90) -> None:
    deadline = time.monotonic() + within
    while not all(is_ready(w) for w in workers):
        exited = [w for w in workers if w.proc.poll() is not None]
        if exited or time.monotonic() > deadline:
            raise RuntimeError("workers did not start:\n" + exited[0].output()[-3000:])
        await asyncio.sleep(0.1)


async def _failover(
    plan: Plan,
    runtime: Runtime,
    group: SentinelGroup,
    api: httpx.AsyncClient,
    headers: dict[str, str],
    workflow_id: str,
    recorder: CallRecorder,
    workers: list[BenchWorker],
) -> Outcome:
    url = f"/api/workflows/{workflow_id}/execute"
    ids: list[str] = []
    began = time.monotonic()
    await submit(api, [url] * plan.executions, headers, ids)
    while await _terminal(runtime, workflow_id) < plan.kill_at * plan.executions:
        if time.monotonic() - began > plan.within:
            raise RuntimeError(f"not {plan.kill_at:.0%} finished within {plan.within:g} s")
        await asyncio.sleep(POLL_SECONDS)

    cut = time.monotonic()
    await asyncio.to_thread(group.cut_replication)
    await submit(api, [url] * plan.lagging, headers, ids)
    killed_wall = time.time()
    killed = await asyncio.to_thread(group.kill_primary)
    during_accept: list[float] = []
    refused = 0  # answers other than 202 (submit tries again)

    async def without_master() -> None:
        async def one() -> None:
            nonlocal refused
            sent = time.monotonic()
            refused += await submit(api, [url], headers, ids)
            during_accept.append(time.monotonic() - sent)

        await asyncio.gather(*(one() for _ in range(plan.during)))

    during = asyncio.create_task(without_master())
    # Read before the promotion: the reconciler may put a lost job back the moment there is a
    # master again (a pass that was waiting for Redis), before anyone could look.
    lost = await _lost(runtime, group, workflow_id, killed_wall)
    promoted = await asyncio.to_thread(group.wait_for_promotion)
    promoted_wall = killed_wall + (promoted - killed)
    back, done = await _follow(runtime, lost, plan.within)
    await during
    deadline = began + plan.within
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = await statuses(runtime, workflow_id)
        if sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled")) == len(ids):
            break
        await asyncio.sleep(0.2)
    ended = time.monotonic()

    finished = await _finished_at(runtime, workflow_id)
    # Executions a worker held at the kill still finish (their steps need PostgreSQL only);
    # then none can start until there is a master: the longest gap from the kill on.
    since = [max((f for f in finished if f < killed_wall), default=killed_wall)]
    since += [f for f in finished if f >= killed_wall]
    pause = max((b - a for a, b in itertools.pairwise(since)), default=float("nan"))
    after = min((f for f in finished if f > promoted_wall), default=float("nan"))
    calls = recorder.snapshot()
    recovery = (plan.lock_ms + plan.stalled_ms) / 1000
    window = Interruption(
        "redis_failover",
        cut,
        max([promoted, *back.values()]) + recovery + 1.0,
        capacity=plan.workers * plan.concurrency,
    )
    rows = await finished_rows(runtime, [workflow_id])
    succeeded = await _succeeded_ids(runtime, workflow_id)
    flow_keys = [f"s{n}" for n in range(1, plan.steps + 1)]
    facts = read_logs([w.output() for w in workers])
    return Outcome(
        submitted=len(ids),
        counts=counts,
        promotion_seconds=promoted - killed,
        pause_seconds=pause,
        resumed_after_promotion_seconds=after - promoted_wall,
        lost=len(lost),
        lost_back_seconds=max(back.values()) - killed if back else None,
        lost_finished_seconds=max(done.values()) - killed if done else None,
        during_accept_seconds=sorted(during_accept),
        during_refused=refused,
        elapsed_seconds=ended - began,
        duplicates=judge(calls, [window], ended),
        missing_calls=missing_calls(calls, succeeded, flow_keys),
        called_after_finish=called_after_finish(calls, rows),
        logs=facts,
        reconciled=facts.events.get("reconciled", 0),
        not_succeeded=sorted(set(ids) - set(succeeded)),
    )


async def _terminal(runtime: Runtime, workflow_id: str) -> int:
    counts = await statuses(runtime, workflow_id)
    return sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))


async def _lost(
    runtime: Runtime, group: SentinelGroup, workflow_id: str, before: float
) -> list[tuple[str, str]]:
    """(org, execution) of executions created before the kill that PostgreSQL has as queued or
    running and the replica (the next master; cut off, so as it will be) knows nothing of: no
    job, not in the fair scheduler's lists. Read on the replica itself, with plain commands."""
    async with runtime.database.system_engine.connect() as conn:
        rows = (await conn.execute(UNFINISHED_BEFORE, {"wf": workflow_id, "before": before})).all()
    queue = ExecutionQueue(runtime)
    with group.client(group.replica_port) as replica:
        pipe = replica.pipeline(transaction=False)
        for row in rows:
            pipe.exists(queue.jobs.queue.toKey(str(row.id)))
            pipe.zscore(queue.fair.key("admitted", str(row.org_id)), str(row.id))
            pipe.zscore(queue.fair.key("ready", str(row.org_id)), str(row.id))
        found = await asyncio.to_thread(pipe.execute)
    return [
        (str(row.org_id), str(row.id))
        for n, row in enumerate(rows)
        if not found[3 * n] and found[3 * n + 1] is None and found[3 * n + 2] is None
    ]


async def _follow(
    runtime: Runtime, lost: list[tuple[str, str]], within: float
) -> tuple[dict[str, float], dict[str, float]]:
    """When each lost execution was back in Redis (a job, or in its organization's ready
    list), and when it finished."""
    queue, back, done = ExecutionQueue(runtime), {}, {}
    deadline = time.monotonic() + within
    while len(done) < len(lost) and time.monotonic() < deadline:
        pending = [(o, e) for o, e in lost if e not in back]
        places = await queue.fair.placement([(uuid.UUID(o), uuid.UUID(e)) for o, e in pending])
        now = time.monotonic()
        for (_, execution), place in zip(pending, places, strict=True):
            if place is not None or await queue.state(uuid.UUID(execution)) != "unknown":
                back[execution] = now
        async with runtime.database.system_engine.connect() as conn:
            ids = [uuid.UUID(e) for _, e in lost if e not in done]
            for (finished,) in await conn.execute(TERMINAL_AMONG, {"ids": ids}):
                done[str(finished)] = now
                back.setdefault(str(finished), now)
        await asyncio.sleep(POLL_SECONDS)
    return back, done


async def _finished_at(runtime: Runtime, workflow_id: str) -> list[float]:
    async with runtime.database.system_engine.connect() as conn:
        return [row[0] for row in await conn.execute(FINISHED_AT, {"wf": workflow_id})]


async def _succeeded_ids(runtime: Runtime, workflow_id: str) -> list[str]:
    query = text(
        "select id from workflow_executions where workflow_id = :wf and status = 'succeeded'"
    )
    async with runtime.database.system_engine.connect() as conn:
        return [str(row[0]) for row in await conn.execute(query, {"wf": workflow_id})]


def summary(outcome: Outcome) -> str:
    """The figures in one paragraph."""
    back = outcome.lost_back_seconds
    done = outcome.lost_finished_seconds
    during = outcome.during_accept_seconds
    return (
        f"sentinel failover: {outcome.submitted} executions in {outcome.elapsed_seconds:.1f} s, "
        f"{outcome.counts}; promotion {outcome.promotion_seconds:.2f} s after the kill, pause "
        f"{outcome.pause_seconds:.2f} s (completions again "
        f"{outcome.resumed_after_promotion_seconds:.2f} s after the promotion); {outcome.lost} "
        f"jobs lost with the old master, all back in Redis "
        f"{'-' if back is None else f'{back:.2f}'} s after the kill, finished "
        f"{'-' if done is None else f'{done:.2f}'} s after it; executions submitted without a "
        f"master accepted in {min(during, default=0):.2f}-{max(during, default=0):.2f} s "
        f"({outcome.during_refused} refused first); "
        f"{outcome.duplicates.calls} calls, {outcome.duplicates.duplicated} duplicated "
        f"({outcome.duplicates.explained}, unexplained {outcome.duplicates.unexplained}); "
        f"reconciler passes that repaired something: {outcome.reconciled}"
    )


def ok(outcome: Outcome) -> bool:
    return (
        outcome.counts == {"succeeded": outcome.submitted}
        and not outcome.missing_calls
        and not outcome.called_after_finish
        and not outcome.logs.succeeded_twice
        and not outcome.duplicates.unexplained
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Executions across a Redis Sentinel failover")
    defaults = Plan()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL")
        or os.environ.get("BENCH_DATABASE_URL")
        or DEFAULT_DATABASE_URL,
    )
    args = vars(parser.parse_args())
    database_url = args.pop("database_url")
    plan = Plan(**args)
    with tempfile.TemporaryDirectory(prefix="taskloom-sentinel-") as directory:
        outcome = asyncio.run(run_failover(plan, database_url, Path(directory)))
    print(summary(outcome))
    result = asdict(outcome) | {"plan": asdict(plan)}
    print("RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0 if ok(outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
