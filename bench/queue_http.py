"""`bench/queue_throughput.py --http`: Taskloom end to end over real HTTP, limits at their defaults.

A real `taskloom api` (with `--workers A`) on a free port and W `taskloom worker` processes serve
the scratch deployment; `POST /api/workflows/{id}/execute` is driven by a load generator in a
process of its own (bench/loadgen.py, or autocannon from npm) that reports its own CPU per
request. The API's rate limits stay on at their defaults (RATE_LIMIT_EXECUTE per API key and
window, GCRA: a full quota at once, then quota/window a second), and so does MAX_RUNNING_PER_ORG:
the load is spread over enough organizations, one API key and one workflow each, that neither is
reached at `--target-rate` (see `tenants_needed`). Each run has organizations of its own.

Reported per run: executions/s from the first request to the last `succeeded` row, the API-only
rate (first request to last 202), and CPU per execution by process group, from /proc: the API
process(es), the worker process(es) (with their template render processes), PostgreSQL (the
backends of this run's database plus the server's WAL writer, checkpointer and background writer;
other databases' backends are left out), the Redis server (its own pid, from INFO), the load
generator (its own figure), and the machine's busy %.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

try:
    from bench.queue_throughput import (
        FOREIGN_ENV,
        start_worker,
        stop_workers,
        wait_until_started,
    )
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from queue_throughput import (  # type: ignore[no-redef]
        FOREIGN_ENV,
        start_worker,
        stop_workers,
        wait_until_started,
    )
try:
    from bench.proc_cpu import Snapshot, descendants, processes, ticks
except ModuleNotFoundError:
    from proc_cpu import Snapshot, descendants, processes, ticks  # type: ignore[no-redef]
from taskloom.audit.service import AuditContext
from taskloom.auth.accounts import create_account
from taskloom.config import Settings
from taskloom.runtime import Runtime

BENCH_DIR = Path(__file__).resolve().parent
SAFETY = 1.5  # more keys than the arithmetic says: the runs are bursty
AUTOCANNON = "autocannon@9.0.0"
POSTGRES_SHARED = ("walwriter", "checkpointer", "background writer")
BODY = json.dumps({"input": {"n": 1}})


def tenants_needed(settings: Settings, executions: int, rate: float, slots: int) -> dict[str, Any]:
    """Organizations (one API key each) so that no key meets RATE_LIMIT_EXECUTE at `rate`
    executions/s and `slots` worker slots are not held back by MAX_RUNNING_PER_ORG.

    A key may send a full quota at once, then quota/window a second (GCRA), so over a run of
    executions/rate seconds it sends quota * (1 + seconds/window); request i goes to key i mod K,
    so each key sends executions/K."""
    quota, window = settings.rate_limit_execute, settings.rate_limit_window_seconds
    seconds = executions / rate
    per_key = quota * (1 + seconds / window)
    by_rate = math.ceil(SAFETY * executions / per_key)
    by_cap = math.ceil(slots / settings.max_running_per_org)
    return {
        "orgs": max(by_rate, by_cap, 1),
        "by_rate_limit": by_rate,
        "by_running_cap": by_cap,
        "per_key_allowed": round(per_key),
        "run_seconds_at_target": round(seconds, 2),
    }


# --- processes of the run ---------------------------------------------------------------------
def server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    return env | {
        "TASKLOOM_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_APP_ROLE": settings.database_app_role,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.key_prefix,
        "PASSWORD_HASH_TIME_COST": "1",
        "PASSWORD_HASH_MEMORY_KIB": "1024",
        "PASSWORD_HASH_PARALLELISM": "1",
        "LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_api(
    settings: Settings, processes_: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`taskloom api --workers N` on a free port, once /health/ready answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "taskloom", "api", "--port", str(port)]
    if processes_ > 1:  # (one: the plain command, which a commit before --workers also has)
        command += ["--workers", str(processes_)]
    proc = _spawn(command, server_env(settings), log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"taskloom api exited (its log: {log})")
            try:
                if (await client.get(f"{base}/health/ready")).status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    raise RuntimeError("taskloom api did not become ready within 60 s")


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=handle)


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Tenant:
    token: str  # an API key (role member)
    workflow_id: str


async def make_tenants(
    runtime: Runtime, base: str, count: int, definition: dict[str, Any]
) -> list[Tenant]:
    """`count` organizations, each with an owner (created as `taskloom user create` does), one
    API key and one workflow, made over HTTP with the owner's session."""
    tenants = []
    context = AuditContext(user_agent="bench")
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(count):
            email, password = f"bench-{secrets.token_hex(4)}@example.test", secrets.token_hex(16)
            await create_account(
                runtime=runtime,
                email=email,
                password=password,
                display_name=f"Bench {i}",
                org_name=f"Bench {i}",
                is_superuser=False,
                context=context,
            )
            login = await client.post("/auth/login", json={"email": email, "password": password})
            login.raise_for_status()
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            key = await client.post("/auth/api-keys", json={"name": "bench"}, headers=headers)
            key.raise_for_status()
            body = {"name": f"bench-{i}", "definition": definition}
            workflow = await client.post("/api/workflows", json=body, headers=headers)
            workflow.raise_for_status()
            tenants.append(Tenant(key.json()["key"], workflow.json()["id"]))
    return tenants


def autocannon_path() -> str:
    """NODE_PATH of an autocannon install (AUTOCANNON_DIR, else a cache directory), installed
    with npm on first use."""
    root = Path(
        os.environ.get("AUTOCANNON_DIR", Path.home() / ".cache" / "taskloom-bench" / "autocannon")
    )
    if not (root / "node_modules" / "autocannon").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("--generator autocannon needs npm (node 18+)")
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", AUTOCANNON],
            check=True,
            capture_output=True,
        )
    return str(root / "node_modules")


async def generate(
    generator: str, spec: dict[str, Any], workdir: Path, on_ready: Any, watch: Any
) -> tuple[dict[str, Any], Any]:
    """Run the generator in its own process: connect, `on_ready()` (the CPU snapshot), go, and
    `watch()` until it returns; (the generator's result, what `watch` returned)."""
    spec_file = workdir / f"spec-{generator}.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    if generator == "autocannon":
        env["NODE_PATH"] = autocannon_path()
        command = ["node", str(BENCH_DIR / "autocannon_driver.js"), str(spec_file)]
    else:
        command = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--spec", str(spec_file)]
        command.append("--wait-for-go")
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    if ready.strip() != b"READY":
        raise RuntimeError(f"{generator} did not start: {ready!r}")
    on_ready()
    proc.stdin.write(b"GO\n")
    await proc.stdin.drain()
    proc.stdin.close()  # an open pipe would keep node's event loop alive after the run
    output = asyncio.create_task(proc.stdout.read())
    watched = await watch(output)
    await asyncio.wait_for(proc.wait(), 60)
    return json.loads((await output).decode().strip().splitlines()[-1]), watched


STATUS_COUNTS = (
    "select status::text, count(*) from workflow_executions where workflow_id = any($1::uuid[]) "
    "group by status"
)


def _finished(output: asyncio.Task[bytes], executions: int) -> bool:
    """The generator has ended without every request accepted (nothing more will come)."""
    if not output.done():
        return False
    result = json.loads(output.result().decode().strip().splitlines()[-1])
    return bool(result["statuses"] != {"202": executions})


async def http_run(
    settings: Settings,
    runtime: Runtime,
    *,
    api_processes: int,
    workers: int,
    executions: int,
    definition: dict[str, Any],
    generator: str,
    connections: int,
    target_rate: float,
) -> dict[str, Any]:
    """One measurement: A API processes, W workers, `executions` execute calls spread over
    organizations of the run's own, until every row is `succeeded` (or the run gives up)."""
    need = tenants_needed(settings, executions, target_rate, workers * settings.worker_concurrency)
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-bench-http-"))
    api, base = await start_api(settings, api_processes, workdir / "api.log")
    procs: list[subprocess.Popen[bytes]] = []
    worker_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="workers-"))
    database = make_url(settings.database_url or "").database
    poll = await asyncpg.connect(settings.database_url)
    try:
        tenants = await make_tenants(runtime, base, need["orgs"], definition)
        procs = [start_worker(settings, worker_dir / f"worker-{i}.log") for i in range(workers)]
        await wait_until_started(runtime, procs)
        poll_pid = await poll.fetchval("select pg_backend_pid()")
        postmaster = processes()[poll_pid][0]
        redis_pid = int((await runtime.redis.info("server"))["process_id"])
        workflows = [t.workflow_id for t in tenants]
        spec = {
            "targets": [
                {"url": f"{base}/api/workflows/{t.workflow_id}/execute", "token": t.token}
                | {"body": BODY}
                for t in tenants
            ],
            "requests": executions,
            "connections": connections,
        }
        before: list[Snapshot] = []

        async def watch(output: asyncio.Task[bytes]) -> tuple[float, dict[str, int]]:
            deadline, statuses = time.monotonic() + 120 + executions / 10, dict[str, int]()
            while statuses.get("succeeded", 0) < executions and time.monotonic() < deadline:
                if _finished(output, executions):
                    break
                # Every count reads each of the run's rows: often only near the end, where the
                # moment matters (polling 20 times a second throughout took a tenth of a core).
                left = executions - statuses.get("succeeded", 0)
                await asyncio.sleep(0.05 if left < executions // 10 else 0.5)
                rows = await poll.fetch(STATUS_COUNTS, workflows)
                statuses = {row[0]: int(row[1]) for row in rows}
            return time.monotonic(), statuses

        gen, (ended, statuses) = await generate(
            generator, spec, workdir, lambda: before.append(Snapshot.take()), watch
        )
        after = Snapshot.take()
        activity = await poll.fetch("select pid, datname, backend_type from pg_stat_activity")
    finally:
        await poll.close()
        stop_workers(procs, worker_dir)
        stop_api(api)
        _show_log(workdir / "api.log")
        shutil.rmtree(workdir, ignore_errors=True)
    start = before[0]
    ours = {r["pid"] for r in activity if r["datname"] == database and r["pid"] != poll_pid}
    shared = {r["pid"] for r in activity if r["backend_type"] in POSTGRES_SHARED}
    postgres = (ours | shared) & descendants(after.table, [postmaster])
    groups = {
        "api": descendants(start.table, [api.pid]) | descendants(after.table, [api.pid]),
        "worker": set().union(
            *(descendants(start.table, [p.pid]) | descendants(after.table, [p.pid]) for p in procs)
        ),
        "postgres": postgres,
        "redis": {redis_pid},
    }
    used = {name: ticks(start, after, pids) for name, pids in groups.items()}
    busy = after.busy - start.busy
    ms = {f"{name}_ms": round(1000 * seconds / executions, 3) for name, seconds in used.items()}
    server = sum(used.values())
    tick = os.sysconf("SC_CLK_TCK")
    client_s = gen["client_cpu_ms_per_request"] * gen["requests"] / 1000
    return {
        "api_processes": api_processes,
        "workers": workers,
        "generator": generator,
        "executions": executions,
        "steps": len(definition["steps"]),
        "orgs": need["orgs"],
        "tenants": need,
        "e2e_per_s": round(executions / (ended - gen["first_sent"]), 1),
        "api_per_s": round(gen["requests"] / (gen["last_response"] - gen["first_sent"]), 1),
        "http_statuses": gen["statuses"],
        "statuses": statuses,
        "ok": statuses == {"succeeded": executions} and gen["statuses"] == {"202": executions},
        "client_cpu_ms_per_request": gen["client_cpu_ms_per_request"],
        "latency_ms": gen["latency_ms"],
        "cpu_ms_per_execution": ms
        | {
            "server_ms": round(1000 * server / executions, 3),
            "other_ms": round(1000 * (busy / tick - server - client_s) / executions, 3),
        },
        "machine_busy_pct": round(100 * busy / (after.total - start.total), 1),
        "sample_error": gen.get("sample_error"),
    }


def _show_log(log: Path) -> None:
    if log.exists():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        lines = [line for line in lines if "Taskloom API on" not in line]
        if lines:
            print(f"--- {log.name} ---", *lines[-40:], sep="\n", file=sys.stderr)


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        f"\n{'API+workers':<12}{'generator':<11}{'steps':>6}{'execs':>7}{'e2e/s':>8}"
        f"{'API/s':>8}{'orgs':>6}  CPU ms per execution: api worker postgres redis = server"
        " | client ms/req, p50/p99 ms, busy %"
    )
    for r in runs:
        cpu = r["cpu_ms_per_execution"]
        print(
            f"{r['api_processes']}+{r['workers']:<10}{r['generator']:<11}{r['steps']:>6}"
            f"{r['executions']:>7}{r['e2e_per_s']:>8.0f}{r['api_per_s']:>8.0f}{r['orgs']:>6}  "
            f"{cpu['api_ms']:.2f} {cpu['worker_ms']:.2f} {cpu['postgres_ms']:.2f} "
            f"{cpu['redis_ms']:.2f} = {cpu['server_ms']:.2f} | {r['client_cpu_ms_per_request']:.3f}"
            f", {r['latency_ms']['p50']}/{r['latency_ms']['p99']}, {r['machine_busy_pct']}"
        )
        if not r["ok"]:
            print(f"  NOT ALL SUCCEEDED: http {r['http_statuses']}, rows {r['statuses']}")
            if r["sample_error"]:
                print(f"  first error: {r['sample_error']}")


async def http_bench(args: Any, settings: Settings) -> dict[str, Any]:
    """Every (API processes, workers, generator) combination in turn, one table, one result."""
    try:
        from bench.queue_throughput import chain, raw_bullmq
    except ModuleNotFoundError:
        from queue_throughput import chain, raw_bullmq  # type: ignore[no-redef]
    from taskloom.runtime import open_runtime

    raw = await raw_bullmq(settings, args.jobs) if args.jobs else None
    runtime = await open_runtime(settings)
    runs = []
    try:
        for api_processes in args.api_workers_list:
            for workers in args.workers_list:
                for generator in args.generator:
                    runs.append(
                        await http_run(
                            settings,
                            runtime,
                            api_processes=api_processes,
                            workers=workers,
                            executions=args.executions,
                            definition=chain(args.steps),
                            generator=generator,
                            connections=args.connections,
                            target_rate=args.target_rate,
                        )
                    )
    finally:
        await runtime.close()
    need = runs[0]["tenants"]
    print(
        f"\nrate limits at their defaults: RATE_LIMIT_EXECUTE={settings.rate_limit_execute} per "
        f"{settings.rate_limit_window_seconds} s per API key, MAX_RUNNING_PER_ORG="
        f"{settings.max_running_per_org}; at {args.target_rate:.0f}/s a run of "
        f"{args.executions} takes {need['run_seconds_at_target']} s, a key may send "
        f"{need['per_key_allowed']} in it: {need['by_rate_limit']} keys for the rate limit "
        f"(x{SAFETY} margin), {need['by_running_cap']} organizations for the running cap -> "
        f"{need['orgs']} organizations, one API key each"
    )
    if raw is not None:
        print(f"raw bullmq no-op jobs/s (in-process Worker, same run): {raw:.0f}")
    print_table(runs)
    return {
        "mode": "http",
        "executions": args.executions,
        "steps": args.steps,
        "connections": args.connections,
        "target_rate": args.target_rate,
        "worker_concurrency": settings.worker_concurrency,
        "raw_jobs_per_s": None if raw is None else round(raw, 1),
        "runs": runs,
        "ok": all(r["ok"] for r in runs),
    }
