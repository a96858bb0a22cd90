"""Triggers: how fast a webhook trigger accepts deliveries against `POST …/execute`, and whether
500 schedules fire every tick exactly once, on time.

1. Acceptance. On an in-process API (32 calls in flight, no worker: the executions stay queued),
   M `POST /api/workflows/{id}/execute` calls with a person's access token, M with an API key,
   then M `POST /hooks/{id}` deliveries to a webhook trigger of the same workflow signed with
   Taskloom's HMAC scheme, each with its own delivery id; then the same again, so that none is
   favoured by going first. Prints accepted/s of each (the better of the two runs) and the
   ratios hooks ÷ execute.
2. Schedules. With 2 `taskloom worker` processes up, S schedules (default 500) are created
   over 10 organizations, each a six-field cron firing every 10 s at a second of its own
   (`<s>/10 * * * * *`, s = 0…9), and run for D seconds (default 120). Then, for every
   schedule, the ticks between its first and last recorded tick must each have exactly one
   tick row, `started`, with exactly one execution whose input names that tick. Lag is
   measured from the tick's time to its execution row (`created_at`: queued, and submitted in
   the same moment) and to its bullmq job (the job's `timestamp`), and to the execution
   starting (`started_at`, which depends on throughput: issue 20).

    python bench/triggers.py [--deliveries M] [--schedules S] [--seconds D] [--quick]

BENCH_DATABASE_URL and BENCH_REDIS_URL name the servers (bench/README.md). Prints tables and
one `RESULT {json}` line; exits 1 when a tick was missed or doubled, or a delivery refused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

try:
    from bench.queue_throughput import (
        cpu_times,
        cpu_usage,
        start_worker,
        stop_workers,
        wait_until_started,
    )
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from queue_throughput import (  # type: ignore[no-redef]
        cpu_times,
        cpu_usage,
        start_worker,
        stop_workers,
        wait_until_started,
    )
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.observability.logging import configure_logging
from taskloom.redis import create_redis
from taskloom.runtime import Runtime, open_runtime
from taskloom.webhooks.signing import signature_header

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
IN_FLIGHT = 32
ORGS = 10
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def register(api: httpx.AsyncClient, label: str) -> dict[str, str]:
    email, password = f"{label}-{secrets.token_hex(4)}@example.test", secrets.token_hex(16)
    registered = await api.post(
        "/auth/register",
        json={
            "email": email,
            "password": password,
            "display_name": label,
            "organization_name": label,
        },
    )
    registered.raise_for_status()
    return {"Authorization": f"Bearer {registered.json()['access_token']}"}


async def workflow(api: httpx.AsyncClient, headers: dict[str, str], name: str) -> str:
    created = await api.post(
        "/api/workflows", json={"name": name, "definition": {"steps": STEPS}}, headers=headers
    )
    created.raise_for_status()
    return str(created.json()["id"])


# --- 1. acceptance -------------------------------------------------------------------------------


async def accepted_per_second(
    api: httpx.AsyncClient, m: int, send: Any, expected: int = 202
) -> float:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(n: int) -> None:
        async with gate:
            response = await send(n)
        if response.status_code != expected:
            raise RuntimeError(f"answered {response.status_code}: {response.text}")

    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(m)))
    return m / (time.perf_counter() - began)


async def acceptance(api: httpx.AsyncClient, m: int) -> dict[str, Any]:
    headers = await register(api, "bench-accept")
    key = await api.post("/auth/api-keys", json={"name": "bench"}, headers=headers)
    key.raise_for_status()
    key_headers = {"Authorization": f"Bearer {key.json()['key']}"}
    workflow_id = await workflow(api, headers, "accept")
    created = await api.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "taskloom", "response": "async"},
        headers=headers,
    )
    created.raise_for_status()
    trigger, secret = created.json()["id"], created.json()["secret"]
    url = f"/api/workflows/{workflow_id}/execute"

    async def execute(n: int) -> httpx.Response:  # a person's session (access token)
        return await api.post(url, json={"input": {"n": n}}, headers=headers)

    async def execute_key(n: int) -> httpx.Response:  # a program's API key
        return await api.post(url, json={"input": {"n": n}}, headers=key_headers)

    async def deliver(n: int) -> httpx.Response:
        body = json.dumps({"n": n}).encode()
        signed = signature_header([secret], int(time.time()), body)
        return await api.post(
            f"/hooks/{trigger}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "Taskloom-Signature": signed,
                "Taskloom-Delivery": secrets.token_hex(8),
            },
        )

    senders = {"execute": execute, "execute_key": execute_key, "hooks": deliver}
    rates: dict[str, list[float]] = {name: [] for name in senders}
    for _ in range(2):  # interleaved, so that none is favoured by going first
        for name, send in senders.items():
            rates[name].append(await accepted_per_second(api, m, send))
    best = {k: max(v) for k, v in rates.items()}
    return {
        "deliveries": m,
        "execute_per_s": round(best["execute"], 1),
        "execute_key_per_s": round(best["execute_key"], 1),
        "hooks_per_s": round(best["hooks"], 1),
        "ratio_hooks_execute": round(best["hooks"] / best["execute"], 3),
        "ratio_hooks_execute_key": round(best["hooks"] / best["execute_key"], 3),
        "runs": {k: [round(r, 1) for r in v] for k, v in rates.items()},
    }


# --- 2. schedules --------------------------------------------------------------------------------


TICKS = text(
    """
    select s.id as schedule_id, t.tick_at, t.status, t.execution_id,
           e.created_at, e.started_at, e.input ->> 'tick' as input_tick
    from schedule_ticks t
    join workflow_schedules s on s.id = t.schedule_id
    left join workflow_executions e on e.id = t.execution_id
    order by s.id, t.tick_at
    """
)
EXECUTIONS_PER_TICK = text(
    """
    select trigger_id, input ->> 'tick' as tick, count(*) from workflow_executions
    where trigger_kind = 'schedule' group by trigger_id, input ->> 'tick' having count(*) > 1
    """
)


async def job_timestamps(runtime: Runtime, execution_ids: list[str]) -> dict[str, float]:
    """Each execution's bullmq job creation time (epoch seconds), read from its job hash."""
    redis = create_redis(runtime.settings, purpose="bench-read")
    prefix = runtime.settings.bullmq_prefix
    found: dict[str, float] = {}
    try:
        for start in range(0, len(execution_ids), 500):
            chunk = execution_ids[start : start + 500]
            async with redis.pipeline(transaction=False) as pipe:
                for execution_id in chunk:
                    pipe.hget(f"{prefix}:orchestration:{execution_id}", "timestamp")
                values = await pipe.execute()
            for execution_id, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[execution_id] = int(value) / 1000
    finally:
        await redis.aclose()
    return found


async def schedules(
    runtime: Runtime, api: httpx.AsyncClient, count: int, seconds: float
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-bench-"))
    procs = [start_worker(runtime.settings, workdir / f"worker-{i}.log") for i in range(2)]
    try:
        # The workers first: ticks that fell while they started would be late by their start.
        await wait_until_started(runtime, procs)
        per_org = count // ORGS
        for org in range(ORGS):
            headers = await register(api, f"bench-sched-{org}")
            workflow_id = await workflow(api, headers, "ticks")
            for i in range(per_org):
                created = await api.post(
                    f"/api/workflows/{workflow_id}/schedules",
                    json={
                        "cron": f"{(org * per_org + i) % 10}/10 * * * * *",
                        "timezone": "UTC",
                        "input": {"tick": "{{ schedule.tick }}"},
                    },
                    headers=headers,
                )
                if created.status_code != 201:
                    raise RuntimeError(f"schedule refused: {created.status_code} {created.text}")
        cpu_before = cpu_times([p.pid for p in procs])
        await asyncio.sleep(seconds)
        cpu = cpu_usage(cpu_before, cpu_times([p.pid for p in procs]))
    finally:
        stop_workers(procs, workdir)
    async with runtime.database.system_engine.connect() as conn:
        rows = (await conn.execute(TICKS)).mappings().all()
        doubled = (await conn.execute(EXECUTIONS_PER_TICK)).all()
    by_schedule: dict[Any, list[Any]] = {}
    for row in rows:
        by_schedule.setdefault(row["schedule_id"], []).append(row)
    problems: list[str] = []
    for schedule_id, ticks in by_schedule.items():
        times = [t["tick_at"].timestamp() for t in ticks]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if any(abs(g - 10) > 0.001 for g in gaps):
            problems.append(f"{schedule_id}: ticks not every 10 s: {gaps}")
        for t in ticks:
            if t["status"] != "started" or t["execution_id"] is None:
                problems.append(f"{schedule_id} {t['tick_at']}: {t['status']}")
            elif t["input_tick"] is None:
                problems.append(f"{schedule_id} {t['tick_at']}: execution without its tick")
    if len(by_schedule) != count:
        problems.append(f"{count - len(by_schedule)} schedules never fired")
    problems += [f"{row[0]} {row[1]}: {row[2]} executions" for row in doubled]
    started = [r for r in rows if r["execution_id"] is not None]
    jobs = await job_timestamps(runtime, [str(r["execution_id"]) for r in started])
    row_lag = [(r["created_at"] - r["tick_at"]).total_seconds() for r in started]
    job_lag = [
        jobs[str(r["execution_id"])] - r["tick_at"].timestamp()
        for r in started
        if str(r["execution_id"]) in jobs
    ]
    start_lag = [
        (r["started_at"] - r["tick_at"]).total_seconds() for r in started if r["started_at"]
    ]

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(percentile(values, 50), 3),
            "p99": round(percentile(values, 99), 3),
            "max": round(max(values), 3) if values else float("nan"),
            "n": len(values),
        }

    return {
        "schedules": count,
        "seconds": seconds,
        "ticks": len(rows),
        "expected_ticks_about": int(count * seconds / 10),
        "problems": problems[:20],
        "problem_count": len(problems),
        "lag_row_s": summary(row_lag),
        "lag_job_s": summary(job_lag),
        "lag_started_s": summary(start_lag),
        "cpu": cpu,
    }


async def bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    runtime = await open_runtime(settings)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as api,
        ):
            # Schedules first: the acceptance runs leave thousands of executions queued, which
            # workers would then run during the schedules' measurement.
            ticks = await schedules(runtime, api, args.schedules, args.seconds)
            accept = await acceptance(api, args.deliveries)
    finally:
        await runtime.close()
    print(f"\n{'acceptance (no worker)':<40}{'per s':>10}")
    print(f"{'POST …/execute (access token)':<40}{accept['execute_per_s']:>10.0f}")
    print(f"{'POST …/execute (API key)':<40}{accept['execute_key_per_s']:>10.0f}")
    print(f"{'POST /hooks/{id} (taskloom HMAC)':<40}{accept['hooks_per_s']:>10.0f}")
    print(
        f"ratio hooks / execute = {accept['ratio_hooks_execute']:.3f} (access token), "
        f"{accept['ratio_hooks_execute_key']:.3f} (API key)"
    )
    print(f"\nschedules: {ticks['schedules']} for {ticks['seconds']:.0f} s, {ticks['ticks']} ticks")
    for name in ("lag_row_s", "lag_job_s", "lag_started_s"):
        s = ticks[name]
        print(
            f"  {name:<16} p50 {s['p50']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}  n {s['n']}"
        )
    print(f"  problems: {ticks['problem_count']}", *ticks["problems"], sep="\n    ")
    ok = ticks["problem_count"] == 0 and ticks["ticks"] > 0
    return {"acceptance": accept, "schedules": ticks, "ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description="Webhook trigger acceptance; schedule ticks")
    parser.add_argument("--deliveries", type=int, default=2_000, help="per acceptance run")
    parser.add_argument("--schedules", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="100 deliveries, 50 schedules, 25 s")
    args = parser.parse_args()
    if args.quick:
        args.deliveries, args.schedules, args.seconds = 100, 50, 25.0
    pg_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)

    async def run() -> dict[str, Any]:
        async with scratch_deployment(
            pg_url,
            redis_url,
            label="bench",
            worker_concurrency=10,
            rate_limit_reads=100_000_000,
            rate_limit_writes=100_000_000,
            rate_limit_execute=100_000_000,
            trigger_rate_limit_per_minute=1_000_000,
            max_running_per_org=10_000,
            max_queued_per_org=1_000_000,  # the acceptance runs leave 6 * M executions queued
        ) as settings:
            configure_logging(settings)
            return await bench(args, settings)

    result = asyncio.run(run())
    print("RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
