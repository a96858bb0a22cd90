"""Queue throughput: raw bullmq no-op jobs/s against Taskloom's end-to-end executions/s.

On one PostgreSQL and one Redis: a bare bullmq Worker drains N no-op jobs (the queue's
ceiling); then, with 1 and with 2 `taskloom worker` processes, M executions of a one-step
`transform` workflow go API call ⇒ worker ⇒ `succeeded` row. The gap is Taskloom's own cost.
With `--fanout`, each worker count also runs F executions of a 10-step fan-out/fan-in graph
(one root, 8 parallel `transform` steps, one join: ADR 0008's tasks inside one job) right
after the one-step run, and prints its steps/s against the one-step run's (one step each).

    python bench/queue_throughput.py [--jobs N] [--executions M] [--fanout [--fanout-executions F]]
        [--steps K] [--workers-list 1,2] [--quick]
    python bench/queue_throughput.py --http [--api-workers-list 1] [--workers-list 1,2] [--steps K]
        [--generator loadgen,autocannon] [--connections C] [--target-rate R] [--executions M]

`--steps K` makes the workflow a chain of K `transform` steps, each needing the one before.
`--http` measures over real HTTP instead, every rate limit at its default (bench/queue_http.py).

BENCH_DATABASE_URL (may create databases and roles) and BENCH_REDIS_URL name the servers. The
run uses a database, role and Redis key prefix of its own and removes them at the end. Prints a
table and one `RESULT {json}` line; exits 1 if any execution did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bullmq import Job, Queue, Worker
from sqlalchemy import text

try:
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.observability.logging import configure_logging
from taskloom.queue.worker import live_workers
from taskloom.redis import bullmq_options
from taskloom.runtime import Runtime, open_runtime

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
IN_FLIGHT = 32  # execute calls in flight at once, like a busy API process
RAW_CONCURRENCY = 50
POLL_SECONDS = 0.05
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input.n }}"}}]
FANOUT_WIDTH = 8
# One root, FANOUT_WIDTH parallel middle steps reading it, one join of them all: 10 steps.
FANOUT: dict[str, Any] = {
    "max_parallel_steps": FANOUT_WIDTH,
    "steps": [
        {"id": "root", "type": "transform", "args": {"value": "{{ input.n }}"}},
        *(
            {
                "id": f"m{i}",
                "type": "transform",
                "needs": ["root"],
                "args": {"value": "{{ steps.root.output }}"},
            }
            for i in range(1, FANOUT_WIDTH + 1)
        ),
        {
            "id": "join",
            "type": "transform",
            "needs": [f"m{i}" for i in range(1, FANOUT_WIDTH + 1)],
            "args": {"value": "done"},
        },
    ],
}
# Variables a worker must not inherit from this shell: the bench names its own servers.
FOREIGN_ENV = ("DATABASE_", "REDIS_", "TASKLOOM_", "JWT_", "TEST_", "CREDENTIAL_", "BENCH_")
COUNT_BY_STATUS = text(
    "select status, count(*) from workflow_executions where workflow_id = :wf group by status"
)


def chain(k: int) -> dict[str, Any]:
    """A workflow of K `transform` steps, each needing the one before (K = 1: STEPS)."""
    if k == 1:
        return {"steps": STEPS}
    steps = [{"id": "s1", "type": "transform", "args": {"value": "{{ input.n }}"}}]
    steps += [
        {
            "id": f"s{i}",
            "type": "transform",
            "needs": [f"s{i - 1}"],
            "args": {"value": f"{{{{ steps.s{i - 1}.output }}}}"},
        }
        for i in range(2, k + 1)
    ]
    return {"steps": steps}


@dataclass
class Run:
    """One end-to-end measurement with `workers` worker processes."""

    workers: int
    rate: float  # executions/s, first request to last `succeeded` row
    api_rate: float  # executions/s, first request to last 202
    statuses: dict[str, int]
    cpu: dict[str, float]
    executions: int
    steps: int = 1  # steps per execution

    @property
    def step_rate(self) -> float:
        return self.rate * self.steps

    @property
    def ok(self) -> bool:
        return self.statuses == {"succeeded": self.executions}


def cpu_times(pids: list[int]) -> tuple[float, float, float, float] | None:
    """(machine total, machine busy, `pids`, this process) CPU seconds from /proc: the deltas
    say whether the machine is saturated and who spends it. None off Linux."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        ticks = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(stat[11]) + int(stat[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    total, idle = sum(fields), fields[3] + fields[4]  # idle + iowait
    return total / tick, (total - idle) / tick, ticks / tick, own.user + own.system


def cpu_usage(before: Any, after: Any) -> dict[str, float]:
    """Busy % of the machine; cores used by the workers, this (API) process, everything else."""
    if before is None or after is None:
        return {}
    total, busy, workers, api = (a - b for a, b in zip(after, before, strict=True))
    wall = total / (os.cpu_count() or 1)
    return {
        "machine_busy_pct": round(100 * busy / total, 1),
        "workers_cores": round(workers / wall, 2),
        "api_process_cores": round(api / wall, 2),
        "other_cores": round((busy - workers - api) / wall, 2),  # PostgreSQL, Redis, ...
    }


@asynccontextmanager
async def environment(pg_url: str, redis_url: str, concurrency: int) -> AsyncIterator[Settings]:
    async with scratch_deployment(
        pg_url,
        redis_url,
        label="bench",
        worker_concurrency=concurrency,
        # One session submits every execution: the rate limits stay on, far above the load.
        rate_limit_reads=100_000_000,
        rate_limit_writes=100_000_000,
        rate_limit_execute=100_000_000,
        max_running_per_org=10_000,  # the per-org cap is not what we measure
    ) as settings:
        configure_logging(settings)
        yield settings


async def noop(job: Job, token: str) -> None:
    return None


async def close_worker(worker: Worker) -> None:
    """`Worker.close()` shields itself from cancellation, so `wait_for` cannot bound it, and it
    can hang on its fetch loop: give it 10 s, then force."""
    closing = asyncio.ensure_future(worker.close())
    if not (await asyncio.wait({closing}, timeout=10))[0]:
        await worker.close(force=True)
        await asyncio.wait({closing}, timeout=5)


async def raw_bullmq(settings: Settings, jobs: int) -> float:
    """No-op jobs/s of one in-process bullmq Worker over a pre-filled queue."""
    name = f"bench-raw-{secrets.token_hex(3)}"
    queue = Queue(name, bullmq_options(settings, purpose="bench-producer"))
    extra = {"concurrency": RAW_CONCURRENCY, "autorun": False}
    worker = Worker(name, noop, bullmq_options(settings, purpose="bench-worker", **extra))
    finished, completed = asyncio.Event(), 0

    def on_completed(job: Job, result: Any) -> None:
        nonlocal completed
        completed += 1
        if completed >= jobs:
            finished.set()

    worker.on("completed", on_completed)
    running: asyncio.Task[Any] | None = None
    try:
        job = {"name": "noop", "data": {}, "opts": {"removeOnComplete": True}}
        for start in range(0, jobs, 1000):
            await queue.addBulk([job] * min(1000, jobs - start))
        await worker.blockingRedisConnection.getRedisVersion()
        began = time.perf_counter()
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(finished.wait(), timeout=60 + jobs / 100)
        return jobs / (time.perf_counter() - began)
    finally:
        await close_worker(worker)
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await queue.obliterate(force=True)
        await queue.close()


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """`taskloom worker`, configured only by environment variables, as in production."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env |= {
        "TASKLOOM_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_APP_ROLE": settings.database_app_role,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.key_prefix,
        "WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "MAX_RUNNING_PER_ORG": str(settings.max_running_per_org),
        "LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "taskloom", "worker"]
        return subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=log_path.parent)


async def wait_until_started(runtime: Runtime, procs: list[subprocess.Popen[bytes]]) -> None:
    """Each process has written its heartbeat (it does so as its bullmq Worker starts)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker process exited during start-up")
        alive = {w.get("pid") for w in await live_workers(runtime)}
        if all(p.pid in alive for p in procs):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("worker processes did not start within 60 s")


def stop_workers(procs: list[subprocess.Popen[bytes]], workdir: Path) -> None:
    """SIGTERM (graceful shutdown), then show the logs if anything was logged at warning+."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for log in sorted(workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        lines = [line for line in lines if not line.endswith("running (Ctrl-C to stop)")]
        if lines:
            print(f"--- {log.name} ---", *lines[-40:], sep="\n", file=sys.stderr)
        log.unlink()
    workdir.rmdir()


async def end_to_end(
    runtime: Runtime,
    api: httpx.AsyncClient,
    headers: dict[str, str],
    workers: int,
    m: int,
    definition: dict[str, Any] | None = None,
) -> Run:
    """From the first of M execute calls (IN_FLIGHT at a time) until all M rows are
    `succeeded`. A workflow of its own per run, so its rows are easy to count."""
    definition = definition or {"steps": STEPS}
    name = f"bench-{workers}-{len(definition['steps'])}-steps"
    body = {"name": name, "definition": definition}
    created = await api.post("/api/workflows", json=body, headers=headers)
    created.raise_for_status()
    url = f"/api/workflows/{created.json()['id']}/execute"
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-bench-"))
    procs = [start_worker(runtime.settings, workdir / f"worker-{i}.log") for i in range(workers)]
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def execute(n: int) -> None:
        async with gate:
            response = await api.post(url, json={"input": {"n": n}}, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"execute answered {response.status_code}: {response.text}")

    async def submit() -> float:
        await asyncio.gather(*(execute(n) for n in range(m)))
        return time.perf_counter()

    try:
        await wait_until_started(runtime, procs)
        cpu_before = cpu_times([p.pid for p in procs])
        began = time.perf_counter()
        submitting = asyncio.create_task(submit())
        deadline, statuses = began + 120 + m / 10, dict[str, int]()
        while statuses.get("succeeded", 0) < m and time.perf_counter() < deadline:
            if submitting.done():
                submitting.result()  # an API error ends the run here
            # Each count reads every row of the run: often only near the end, where it matters.
            left = m - statuses.get("succeeded", 0)
            await asyncio.sleep(POLL_SECONDS if left < m // 10 else 10 * POLL_SECONDS)
            async with runtime.database.system_engine.connect() as conn:
                rows = await conn.execute(COUNT_BY_STATUS, {"wf": created.json()["id"]})
                statuses = {status: int(count) for status, count in rows}
        seconds = time.perf_counter() - began
        cpu = cpu_usage(cpu_before, cpu_times([p.pid for p in procs]))
        api_seconds = await submitting - began
        steps = len(definition["steps"])
        return Run(workers, m / seconds, m / api_seconds, statuses, cpu, m, steps)
    finally:
        stop_workers(procs, workdir)


async def bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    raw = await raw_bullmq(settings, args.jobs) if args.jobs else None
    runtime = await open_runtime(settings)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    fanouts: list[Run] = []
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as api,
        ):
            email, password = f"bench-{secrets.token_hex(4)}@example.test", secrets.token_hex(16)
            account = {"display_name": "Bench", "organization_name": "Bench"}
            registered = await api.post(
                "/auth/register", json={"email": email, "password": password, **account}
            )
            registered.raise_for_status()
            headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
            runs = []
            for k in args.workers_list:
                runs.append(
                    await end_to_end(
                        runtime, api, headers, k, args.executions, definition=chain(args.steps)
                    )
                )
                if args.fanout:  # right after the one-step run it is compared with
                    fanouts.append(
                        await end_to_end(
                            runtime, api, headers, k, args.fanout_executions, definition=FANOUT
                        )
                    )
    finally:
        await runtime.close()
    rate = {r.workers: r.rate for r in runs}
    ok = all(r.ok for r in runs + fanouts)
    print(f"\n{'measurement':<36}{'count':>7}{'per s':>8}{'API-only/s':>12}  CPU during the run")
    if raw is not None:
        print(f"{'raw bullmq no-op jobs':<36}{args.jobs:>7}{raw:>8.0f}")
    for r in runs + fanouts:
        shape = "one-step" if r.steps == 1 else f"{r.steps}-step fan-out"
        if r.steps > 1 and r not in fanouts:
            shape = f"{r.steps}-step chain"
        label = f"{shape}, {r.workers} worker process" + ("es" if r.workers > 1 else "")
        figures = f"{r.executions:>7}{r.rate:>8.0f}{r.api_rate:>12.0f}  "
        print(f"{label:<36}{figures}" + " ".join(f"{k}={v}" for k, v in r.cpu.items()))
        if not r.ok:
            print(f"  NOT ALL SUCCEEDED: {r.statuses}")
    if 1 in rate and raw is not None:
        ratios = f"ratio e2e(1)/raw = {rate[1] / raw:.3f}"
        print(ratios + (f", e2e(2)/e2e(1) = {rate[2] / rate[1]:.2f}" if 2 in rate else ""))
    for one, fan in zip(runs, fanouts, strict=False):
        print(
            f"fan-out, {fan.workers} worker process{'es' if fan.workers > 1 else ''}: "
            f"{fan.step_rate:.0f} steps/s, {fan.rate:.1f} executions/s; steps/s ÷ the one-step "
            f"run's = {fan.step_rate / one.step_rate:.2f}"
        )
    result = {
        "jobs": args.jobs,
        "executions": args.executions,
        "worker_concurrency": settings.worker_concurrency,
        "raw_jobs_per_s": round(raw, 1) if raw is not None else None,
        **{f"e2e_{r.workers}_per_s": round(r.rate, 1) for r in runs},
        **{f"api_{r.workers}_per_s": round(r.api_rate, 1) for r in runs},
        **({"ratio_e2e1_raw": round(rate[1] / raw, 4)} if 1 in rate and raw else {}),
        **({"ratio_e2e2_e2e1": round(rate[2] / rate[1], 3)} if {1, 2} <= set(rate) else {}),
        **({"steps": args.steps} if args.steps != 1 else {}),
        "cpu": {f"e2e_{r.workers}": r.cpu for r in runs},
        "statuses": {f"e2e_{r.workers}": r.statuses for r in runs},
        "ok": ok,
    }
    if fanouts:
        result |= {
            "fanout_executions": args.fanout_executions,
            "fanout_steps": fanouts[0].steps,
            **{f"fanout_{r.workers}_per_s": round(r.rate, 1) for r in fanouts},
            **{f"fanout_{r.workers}_steps_per_s": round(r.step_rate, 1) for r in fanouts},
            **{
                f"ratio_fanout_{f.workers}_steps_one_step": round(f.step_rate / o.step_rate, 3)
                for o, f in zip(runs, fanouts, strict=True)
            },
        }
        result["cpu"] |= {f"fanout_{r.workers}": r.cpu for r in fanouts}
        result["statuses"] |= {f"fanout_{r.workers}": r.statuses for r in fanouts}
    return result


def _counts(value: str) -> list[int]:
    counts = [int(v) for v in value.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of counts >= 1")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description="Raw bullmq vs end-to-end executions per second")
    parser.add_argument("--jobs", type=int, default=20_000, help="raw bullmq no-op jobs")
    parser.add_argument("--executions", type=int, default=2_000, help="per worker count")
    parser.add_argument("--concurrency", type=int, default=10, help="WORKER_CONCURRENCY")
    parser.add_argument(
        "--fanout", action="store_true", help="also a 10-step fan-out/fan-in workflow"
    )
    parser.add_argument(
        "--fanout-executions", type=int, default=None, help="per worker count (default M / 5)"
    )
    parser.add_argument("--quick", action="store_true", help="200 jobs, 50 executions")
    parser.add_argument("--steps", type=int, default=1, help="a chain of K transform steps")
    parser.add_argument("--workers-list", type=_counts, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--http", action="store_true", help="over HTTP, limits at defaults")
    parser.add_argument("--api-workers-list", type=_counts, default=[1], help="--http: e.g. 1,2")
    parser.add_argument(
        "--generator",
        type=lambda v: v.split(","),
        default=["loadgen"],
        help="--http: loadgen and/or autocannon (npm), e.g. loadgen,autocannon",
    )
    parser.add_argument("--connections", type=int, default=IN_FLIGHT, help="--http")
    parser.add_argument(
        "--statement-cache-size",
        type=int,
        help="--http: DATABASE_STATEMENT_CACHE_SIZE (0: no prepared statements kept, as behind "
        "PgBouncer in transaction mode)",
    )
    parser.add_argument(
        "--target-rate", type=float, default=1000.0, help="--http: executions/s to size keys for"
    )
    args = parser.parse_args()
    if args.steps < 1 or not set(args.generator) <= {"loadgen", "autocannon"}:
        parser.error("--steps is at least 1; --generator is loadgen and/or autocannon")
    if args.quick:
        args.jobs, args.executions = 200, 50
    if args.fanout_executions is None:
        args.fanout_executions = max(args.executions // 5, 10)
    pg_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)

    async def run() -> dict[str, Any]:
        if args.http:
            try:
                from bench.queue_http import http_bench
            except ModuleNotFoundError:
                from queue_http import http_bench  # type: ignore[no-redef]
            # Every limit at its default: only the worker concurrency is this run's.
            extra: dict[str, Any] = {}
            if args.statement_cache_size is not None:
                extra["database_statement_cache_size"] = args.statement_cache_size
            async with scratch_deployment(
                pg_url, redis_url, label="bench", worker_concurrency=args.concurrency, **extra
            ) as settings:
                configure_logging(settings)
                return await http_bench(args, settings)
        async with environment(pg_url, redis_url, args.concurrency) as settings:
            return await bench(args, settings)

    result = asyncio.run(run())
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
