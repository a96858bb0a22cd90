"""Fairness across organizations: does one organization's flood delay everyone else?

On one PostgreSQL and one Redis, with `taskloom worker` processes: 19 quiet organizations each
submit EACH one-step executions with the workers idle (the baseline); then a 20th organization
floods FLOOD executions, and once the flood is queued the 19 submit again. Their time from the
202 to `succeeded` is compared between the two phases (p50/p99); the target is

    p99 with the flood <= 2 x idle p99 + 1 s

Meanwhile the flooding organization's running executions are sampled (its BullMQ `active` jobs
and its `running` rows) and must never exceed MAX_RUNNING_PER_ORG.

    python bench/fairness.py [--flood N] [--each M] [--workers W] [--quick]

BENCH_DATABASE_URL / BENCH_REDIS_URL as for bench/queue_throughput.py (a scratch deployment,
removed at the end). Prints a table and one `RESULT {json}` line; exits 1 if an execution was
lost (not `succeeded`) or the flooding organization held more than its cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

try:
    from bench.queue_throughput import start_worker, stop_workers, wait_until_started
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from queue_throughput import (  # type: ignore[no-redef]
        start_worker,
        stop_workers,
        wait_until_started,
    )
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.observability.logging import configure_logging
from taskloom.runtime import Runtime, open_runtime

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET_ORGS = 19
CAP = 5  # MAX_RUNNING_PER_ORG (the default)
IN_FLIGHT = 32  # execute calls in flight at once
SAMPLE_SECONDS = 0.05
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input.n }}"}}]
FINISHED = text(
    "select id, status, extract(epoch from finished_at) from workflow_executions "
    "where id = any(:ids)"
)
RUNNING_ROWS = text(
    "select count(*) from workflow_executions where org_id = :org and status = 'running'"
)
STATUSES = text(
    "select status, count(*) from workflow_executions where org_id = any(:orgs) group by status"
)


@dataclass
class Org:
    org_id: uuid.UUID
    headers: dict[str, str]
    execute_url: str


@dataclass
class Sampled:
    samples: int = 0
    max_active_jobs: int = 0  # the flooder's BullMQ jobs being run by workers
    max_running_rows: int = 0  # the flooder's executions `running` in PostgreSQL
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def new_org(api: httpx.AsyncClient, n: int) -> Org:
    email = f"fair-{n}-{secrets.token_hex(3)}@example.test"
    body = {
        "email": email,
        "password": secrets.token_hex(16),
        "display_name": f"Org {n}",
        "organization_name": f"Org {n}",
    }
    registered = await api.post("/auth/register", json=body)
    registered.raise_for_status()
    headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
    created = await api.post(
        "/api/workflows",
        json={"name": f"one step {n}", "definition": {"steps": STEPS}},
        headers=headers,
    )
    created.raise_for_status()
    org_id = uuid.UUID(registered.json()["org_id"])
    return Org(org_id, headers, f"/api/workflows/{created.json()['id']}/execute")


async def submit(
    api: httpx.AsyncClient, org: Org, count: int, gate: asyncio.Semaphore
) -> dict[uuid.UUID, float]:
    """`count` executions; returns each one's id and the wall-clock time of its 202."""
    accepted: dict[uuid.UUID, float] = {}

    async def one(n: int) -> None:
        async with gate:
            response = await api.post(
                org.execute_url, json={"input": {"n": n}}, headers=org.headers
            )
        if response.status_code != 202:
            raise RuntimeError(f"execute answered {response.status_code}: {response.text}")
        accepted[uuid.UUID(response.json()["execution_id"])] = time.time()

    await asyncio.gather(*(one(n) for n in range(count)))
    return accepted


async def latencies(runtime: Runtime, accepted: dict[uuid.UUID, float], within: float) -> Any:
    """Wait until every execution is finished; return (seconds from 202 to finished for the
    succeeded ones, statuses)."""
    deadline = time.monotonic() + within
    ids = list(accepted)
    while True:
        async with runtime.database.system_engine.connect() as conn:
            rows = (await conn.execute(FINISHED, {"ids": ids})).all()
        finished = {row[0]: (row[1], row[2]) for row in rows if row[2] is not None}
        if len(finished) == len(ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    statuses: dict[str, int] = {}
    for status, _ in finished.values():
        statuses[status] = statuses.get(status, 0) + 1
    missing = len(ids) - len(finished)
    if missing:
        statuses["unfinished"] = missing
    seconds = [
        float(at) - accepted[i] for i, (status, at) in finished.items() if status == "succeeded"
    ]
    return sorted(seconds), statuses


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def sample_flooder(runtime: Runtime, flooder: Org, sampled: Sampled) -> None:
    """The flooding organization's share of the workers, every SAMPLE_SECONDS."""
    queue, org = runtime.queues["orchestration"].queue, str(flooder.org_id)
    while not sampled.stop.is_set():
        jobs = await queue.getJobs(["active"])
        active = sum(1 for job in jobs if job and job.data.get("org_id") == org)
        async with runtime.database.system_engine.connect() as conn:
            running = int((await conn.execute(RUNNING_ROWS, {"org": flooder.org_id})).scalar_one())
        sampled.samples += 1
        sampled.max_active_jobs = max(sampled.max_active_jobs, active)
        sampled.max_running_rows = max(sampled.max_running_rows, running)
        await asyncio.sleep(SAMPLE_SECONDS)


async def bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    runtime = await open_runtime(settings)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-fair-"))
    procs = [start_worker(settings, workdir / f"worker-{i}.log") for i in range(args.workers)]
    gate = asyncio.Semaphore(IN_FLIGHT)
    sampled = Sampled()
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as api,
        ):
            quiet = [await new_org(api, n) for n in range(QUIET_ORGS)]
            flooder = await new_org(api, QUIET_ORGS)
            await wait_until_started(runtime, procs)
            within = 120 + args.flood / 10

            # 1. The 19 alone, workers idle.
            batches = await asyncio.gather(*(submit(api, o, args.each, gate) for o in quiet))
            idle, idle_statuses = await latencies(runtime, _merge(batches), within)

            # 2. The flood, queued in full, then the 19 again; the flooder is watched throughout.
            sampler = asyncio.create_task(sample_flooder(runtime, flooder, sampled))
            began = time.perf_counter()
            flood = await submit(api, flooder, args.flood, gate)
            flood_submit_s = time.perf_counter() - began
            batches = await asyncio.gather(*(submit(api, o, args.each, gate) for o in quiet))
            busy, busy_statuses = await latencies(runtime, _merge(batches), within)
            queued_flood = await _flood_left(runtime, flooder)
            _, flood_statuses = await latencies(runtime, flood, within)
            flood_s = time.perf_counter() - began
            sampled.stop.set()
            await sampler
    finally:
        sampled.stop.set()
        await runtime.close()
        stop_workers(procs, workdir)

    idle_p99, busy_p99 = percentile(idle, 0.99), percentile(busy, 0.99)
    target = 2 * idle_p99 + 1.0
    quiet_n = QUIET_ORGS * args.each
    lost = (
        idle_statuses != {"succeeded": quiet_n}
        or busy_statuses != {"succeeded": quiet_n}
        or flood_statuses != {"succeeded": args.flood}
    )
    capped = max(sampled.max_active_jobs, sampled.max_running_rows) <= CAP
    print(
        f"\n{QUIET_ORGS} quiet organizations x {args.each} one-step executions; flood {args.flood}"
    )
    print(f"{'202 -> succeeded':<34}{'p50 s':>8}{'p99 s':>8}{'max s':>8}")
    for label, values in (
        ("quiet orgs, workers idle", idle),
        ("quiet orgs, during the flood", busy),
    ):
        figures = [percentile(values, 0.5), percentile(values, 0.99), max(values, default=0)]
        print(f"{label:<34}" + "".join(f"{v:>8.3f}" for v in figures))
    print(
        f"target p99 <= 2 x {idle_p99:.3f} + 1 = {target:.3f} s: "
        + ("met" if busy_p99 <= target else "MISSED")
    )
    print(
        f"flood: submitted in {flood_submit_s:.1f} s, {queued_flood} still queued when the quiet "
        f"ones had finished, all done after {flood_s:.1f} s"
    )
    print(
        f"flooder's share, {sampled.samples} samples: at most {sampled.max_active_jobs} active "
        f"jobs, {sampled.max_running_rows} running rows (cap {CAP})"
    )
    if lost:
        print(f"LOST EXECUTIONS: idle={idle_statuses} busy={busy_statuses} flood={flood_statuses}")
    if not capped:
        print("THE FLOODING ORGANIZATION HELD MORE THAN ITS CAP")
    return {
        "quiet_orgs": QUIET_ORGS,
        "each": args.each,
        "flood": args.flood,
        "workers": args.workers,
        "worker_concurrency": settings.worker_concurrency,
        "idle_p50_s": round(percentile(idle, 0.5), 4),
        "idle_p99_s": round(idle_p99, 4),
        "flood_p50_s": round(percentile(busy, 0.5), 4),
        "flood_p99_s": round(busy_p99, 4),
        "target_p99_s": round(target, 4),
        "target_met": busy_p99 <= target,
        "flood_still_queued": queued_flood,
        "flooder_max_active_jobs": sampled.max_active_jobs,
        "flooder_max_running_rows": sampled.max_running_rows,
        "samples": sampled.samples,
        "statuses": {"idle": idle_statuses, "busy": busy_statuses, "flood": flood_statuses},
        "ok": not lost and capped,
    }


def _merge(batches: list[dict[uuid.UUID, float]]) -> dict[uuid.UUID, float]:
    return {k: v for batch in batches for k, v in batch.items()}


async def _flood_left(runtime: Runtime, flooder: Org) -> int:
    async with runtime.database.system_engine.connect() as conn:
        rows = (await conn.execute(STATUSES, {"orgs": [flooder.org_id]})).all()
    return sum(int(n) for status, n in rows if status in ("queued", "running"))


def main() -> int:
    parser = argparse.ArgumentParser(description="Quiet organizations' latency under a flood")
    parser.add_argument("--flood", type=int, default=5_000, help="the flooder's executions")
    parser.add_argument("--each", type=int, default=20, help="executions per quiet organization")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=10, help="WORKER_CONCURRENCY")
    parser.add_argument("--quick", action="store_true", help="flood 1500, 5 each, 1 worker")
    args = parser.parse_args()
    if args.quick:
        args.flood, args.each, args.workers = 1_500, 5, 1
    pg_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)

    async def run() -> dict[str, Any]:
        async with scratch_deployment(
            pg_url,
            redis_url,
            label="fair",
            worker_concurrency=args.concurrency,
            max_running_per_org=CAP,
            # One session per organization submits its executions (the flooder 5,000 at once):
            # the rate limits stay on, far above the load; what is measured is the scheduler.
            rate_limit_reads=100_000_000,
            rate_limit_writes=100_000_000,
            rate_limit_execute=100_000_000,
        ) as settings:
            configure_logging(settings)
            return await bench(args, settings)

    result = asyncio.run(run())
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
