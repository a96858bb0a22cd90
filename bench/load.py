"""Load: Taskloom's authenticated list and execute endpoints over HTTP at increasing concurrency,
against a bare FastAPI + asyncpg app running the same SQL, in one run.

Two `taskloom api` processes and two bare processes (FastAPI, uvicorn, an asyncpg pool, no
middleware, no authentication, the database owner's role so no row-level security) serve one
deployment of their own. This process is the client (asyncio + httpx, one event loop): it keeps
C requests in flight and sends each to the next process of the pair in turn (round-robin, like a
load balancer), for a fixed time per concurrency level after a warm-up. Measured:

- `GET /api/workflows` (all of the organization's workflows, 50 by default) and
  `GET /api/executions?limit=50` (newest first), on Taskloom and on the bare app: the bare app
  runs the SELECT inside Taskloom's list function as a plain statement, and both answer the same
  JSON (checked before measuring), so the ratio Taskloom / bare is what Taskloom adds per
  request: token check, session lookup, the function call that sets the tenant under row-level
  security, and the middleware (request id, metrics, security headers, body
  limit, input guard, error handling);
- `POST /api/workflows/{id}/execute` on Taskloom: the time to accept an execution (row + job,
  202). No worker runs, so the queue only grows (its keys are removed at the end).

Per phase: requests/s, p50/p95/p99 latency, errors, and CPU per request of the servers, of
this deployment's PostgreSQL backends and of the client, plus how busy the machine was and how
much of it went to other processes, and the connections opened to the database per second. The
client shares the machine with the servers, so absolute throughput is understated (the more so the
fewer the cores); the ratios, above all of CPU per request, are the useful numbers.

    python bench/load.py [--levels 1,4,16,64] [--duration 10] [--warmup 2] [--workflows 50]
        [--executions 1000] [--pool-size 20] [--profile DIR] [--quick]

The defaults take about 4.5 minutes (setup, then 20 phases of 12 s); --quick about 1 minute.

--database-url (else BENCH_DATABASE_URL, TEST_DATABASE_URL, postgresql://postgres@127.0.0.1:5432/
postgres; the role must create databases and roles) and --redis-url (else BENCH_REDIS_URL,
TEST_REDIS_URL, redis://127.0.0.1:6379/0) name the servers. The run uses a database, role and
Redis key prefix of its own and removes them, and stops every process it started, at the end
(Ctrl-C and SIGTERM included). Prints tables and one `RESULT {json}` line; exits 1 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import psutil
import uvicorn
from fastapi import FastAPI, Query
from sqlalchemy.engine import make_url

from taskloom.executions.schemas import ExecutionOut, ExecutionPage
from taskloom.pagination import encode_cursor
from taskloom.workflows.schemas import WorkflowOut

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PROCESSES = 2  # per server kind
# Variables a server must not inherit from this shell: the bench names its own servers.
FOREIGN_ENV = ("DATABASE_", "REDIS_", "TASKLOOM_", "JWT_", "TEST_", "CREDENTIAL_", "BENCH_")
THIS_FILE = Path(__file__).resolve()
BARE_ENV = "TASKLOOM_LOAD_BARE"  # the bare server's configuration (JSON), for --serve-bare
STEPS = [
    {"id": "fetch", "type": "transform", "args": {"value": "{{ input.n }}"}},
    {"id": "shape", "type": "transform", "args": {"value": "{{ input.n }}-shaped"}},
    {"id": "store", "type": "transform", "args": {"value": {"n": "{{ input.n }}", "ok": True}}},
]
SEED_EXECUTIONS = """
insert into workflow_executions (id, org_id, workflow_id, workflow_version, definition,
    triggered_by, status, input, output, attempts, created_at, started_at, finished_at)
select gen_random_uuid(), w.org_id, w.id, w.version, w.definition, $2,
    (array['succeeded', 'succeeded', 'succeeded', 'failed'])[1 + g % 4],
    jsonb_build_object('n', g, 'customer', 'customer-' || g),
    jsonb_build_object('fetch', g, 'shape', g || '-shaped', 'store', jsonb_build_object('n', g)),
    1, now() - g * interval '1 minute', now() - g * interval '1 minute',
    now() - g * interval '1 minute' + interval '40 milliseconds'
from generate_series(1, $3) g
join (select id, org_id, version, definition, row_number() over (order by id) - 1 as k
      from workflows where org_id = $1) w on w.k = g % $4
"""


# --- the bare app (a subprocess: bench/load.py --serve-bare) ------------------------------------


def bare_app(config: dict[str, Any]) -> FastAPI:
    """FastAPI + one asyncpg pool, the same SQL and response models as Taskloom's list
    endpoints, for one organization fixed at start: no authentication, no transaction, no
    row-level security (the owner role), no middleware."""
    org_id = uuid.UUID(config["org_id"])
    workflows_sql, executions_sql = config["sql"]["workflows"], config["sql"]["executions"]
    pools: list[asyncpg.Pool] = []

    async def init(conn: asyncpg.Connection) -> None:  # jsonb as Python values, like SQLAlchemy
        for name in ("json", "jsonb"):
            await conn.set_type_codec(
                name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            config["dsn"],
            min_size=1,
            max_size=config["pool_max"],
            # Never closed for being idle: a pool that closes and reopens connections between
            # phases pays for new backends in the next one (and its p99 shows it).
            max_inactive_connection_lifetime=0,
            init=init,
        )
        pools.append(pool)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/workflows")
    async def list_workflows() -> list[WorkflowOut]:
        rows = await pools[0].fetch(workflows_sql, org_id)
        return [WorkflowOut.model_validate(dict(row)) for row in rows]

    @app.get("/api/executions")
    async def list_executions(limit: Annotated[int, Query(ge=1, le=200)] = 50) -> ExecutionPage:
        rows = await pools[0].fetch(executions_sql, org_id, limit + 1)
        items = [dict(row) for row in rows[:limit]]
        cursor = None
        if len(rows) > limit:
            cursor = encode_cursor(items[-1]["created_at"], items[-1]["id"])
        return ExecutionPage(
            items=[ExecutionOut.model_validate(item) for item in items], next_cursor=cursor
        )

    return app


def serve_bare() -> None:
    """The bare app on the port of its configuration (BARE_ENV, JSON)."""
    config = json.loads(os.environ[BARE_ENV])
    # As `taskloom api` runs uvicorn: no logging config, no access log, and uvloop (the CLI runs
    # its services on uvloop).
    uvicorn.run(
        bare_app(config),
        host="127.0.0.1",
        port=config["port"],
        loop="uvloop",
        log_config=None,
        access_log=False,
    )


# --- the deployment -----------------------------------------------------------------------------


@dataclass
class Deployment:
    settings: Any  # taskloom.config.Settings
    database: str
    admin_dsn: str  # the bench database, as the role of --database-url (bypasses RLS)
    jwt_secret: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, list[str]] = field(default_factory=dict)  # server kind => base URLs


@asynccontextmanager
async def deployment(pg_url: str, redis_url: str) -> AsyncIterator[Deployment]:
    """A migrated database, its app role and a Redis key prefix of our own; on exit every
    process started is stopped, the database and role dropped and the prefix's keys UNLINKed
    (SCAN, never FLUSH), and the log directory removed (logs with warnings are shown first)."""
    from taskloom.config import Settings
    from taskloom.db.migrate import migrate
    from taskloom.observability.logging import configure_logging
    from taskloom.redis import Keys, create_redis, purge_matching

    suffix = secrets.token_hex(4)
    database = f"taskloom_load_{suffix}"
    url = make_url(pg_url).set(database=database)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        taskloom_env="test",
        database_url=url.render_as_string(hide_password=False),
        database_app_role=f"taskloom_load_app_{suffix}",
        redis_url=redis_url,
        redis_key_prefix=f"load-{suffix}:",
        log_level="warning",
    )
    configure_logging(settings)
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-load-"))
    deploy = Deployment(settings, database, admin_dsn, secrets.token_urlsafe(48), workdir)

    async def clean_up() -> None:
        stop_processes(list(deploy.procs.values()))
        show_logs(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{settings.database_app_role}"')
        finally:
            await admin.close()
        redis = create_redis(settings, purpose="bench-cleanup")
        try:
            await purge_matching(redis, Keys(settings.key_prefix).pattern)
        finally:
            await redis.aclose()

    try:
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        await migrate(settings)
        yield deploy
    finally:
        await to_the_end(clean_up())


async def to_the_end(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` to completion even if this task is cancelled meanwhile (Ctrl-C or SIGTERM
    while cleaning up); the cancellation is passed on afterwards."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent
        )


async def start_server(
    deploy: Deployment, kind: str, index: int, port: int, command: list[str], env: dict[str, str]
) -> None:
    """Start one server (listening on `port`) and wait until its /health/live answers."""
    name = f"{kind}-{index}"
    proc = spawn(command, env, deploy.workdir / f"{name}.log")
    deploy.procs[name] = proc
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=1) as client:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up (status {proc.returncode})")
            try:
                if (await client.get("/health/live")).status_code == 200:
                    deploy.urls.setdefault(kind, []).append(url)
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not answer /health/live within 90 s")


def server_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


async def start_taskloom(deploy: Deployment, pool_size: int, profile: Path | None) -> None:
    """PROCESSES `taskloom api`, configured only by environment variables, as in production,
    one after the other (the deployment is migrated already: `taskloom api` never migrates)."""
    s = deploy.settings
    env = server_env(
        {
            "TASKLOOM_ENV": "test",
            "DATABASE_URL": s.database_url or "",
            "DATABASE_APP_ROLE": s.database_app_role,
            "REDIS_URL": s.redis_url or "",
            "REDIS_KEY_PREFIX": s.key_prefix,
            "JWT_SECRET": deploy.jwt_secret,  # one secret: a token from either process works
            "ACCESS_TOKEN_TTL_SECONDS": "86400",  # no expiry during a long run
            "LOG_LEVEL": "warning",
            "DATABASE_POOL_SIZE": str(pool_size),
            # One session drives the whole load: the limits stay on (their cost is part of
            # what is measured) but far above it (bench/README.md).
            "RATE_LIMIT_READS": "100000000",
            "RATE_LIMIT_WRITES": "100000000",
            "RATE_LIMIT_EXECUTE": "100000000",
            # No worker runs, so every accepted execution stays queued: at 400+/s the default
            # cap (10,000 per organization) fills within a phase and answers 429 after that.
            "MAX_QUEUED_PER_ORG": "1000000",
        }
    )
    for i in range(PROCESSES):
        prefix = [sys.executable]
        if profile is not None:
            prefix += ["-m", "cProfile", "-o", str(profile / f"api-{i}.prof")]
        port = free_port()
        command = [*prefix, "-m", "taskloom", "api", "--port", str(port)]
        await start_server(deploy, "taskloom", i, port, command, env)


async def start_bare(deploy: Deployment, org_id: uuid.UUID, sql: dict[str, str], pool: int) -> None:
    for i in range(PROCESSES):
        port = free_port()
        config = {"dsn": deploy.admin_dsn, "org_id": str(org_id), "sql": sql, "pool_max": pool}
        env = server_env({BARE_ENV: json.dumps(config | {"port": port})})
        command = [sys.executable, str(THIS_FILE), "--serve-bare"]
        await start_server(deploy, "bare", i, port, command, env)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (graceful shutdown; a profiled API writes its profile then), then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def show_logs(workdir: Path) -> None:
    """Server output other than the start-up banner (warnings and errors only are logged)."""
    for log in sorted(workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        lines = [line for line in lines if "(Ctrl-C to stop)" not in line and line.strip()]
        if lines:
            print(f"--- {log.name} ---", *lines[-40:], sep="\n", file=sys.stderr)


async def connection_headroom(deploy: Deployment, pool_size: int) -> str:
    """PostgreSQL connections other clients use now, the server's limit, and the most this run
    holds at once: an API process up to pool size (app engine) + max(2, pool size // 4)
    (system engine), a bare process up to pool size (each kept open once opened), the client
    two."""
    system = max(2, pool_size // 4)
    most = PROCESSES * (pool_size + system) + PROCESSES * pool_size + 2
    admin = await asyncpg.connect(deploy.admin_dsn)
    try:
        used = await admin.fetchval(
            "select count(*) from pg_stat_activity where backend_type = 'client backend' "
            "and datname is distinct from $1",
            deploy.database,
        )
        limit = await admin.fetchval(
            "select setting::int from pg_settings where name = 'max_connections'"
        )
        reserved = await admin.fetchval(
            "select setting::int from pg_settings where name = 'superuser_reserved_connections'"
        )
    finally:
        await admin.close()
    note = (
        f"PostgreSQL connections: {used} used by other clients, limit {limit} ({reserved} "
        f"reserved); this run holds at most {most} at once."
    )
    if used + most > limit - reserved:
        note += (
            " WARNING: that may exceed the limit (errors 'remaining connection slots are "
            "reserved'); lower --pool-size or wait for the other clients to finish."
        )
    return note


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Tenant:
    headers: dict[str, str]
    org_id: uuid.UUID
    user_id: uuid.UUID
    workflow_ids: list[uuid.UUID]


async def seed(deploy: Deployment, workflows: int, executions: int) -> Tenant:
    """A user who owns an organization (registered over HTTP), `workflows` workflows created
    over HTTP (each with its audit row), and `executions` finished executions inserted in SQL."""
    email, password = f"load-{secrets.token_hex(4)}@example.test", secrets.token_hex(16)
    async with httpx.AsyncClient(base_url=deploy.urls["taskloom"][0], timeout=60) as api:
        body = {"email": email, "password": password, "display_name": "Load"}
        registered = await api.post("/auth/register", json=body | {"organization_name": "Load"})
        registered.raise_for_status()
        headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
        ids = []
        for i in range(workflows):
            definition = {"steps": STEPS}
            body = {
                "name": f"workflow {i:03d}",
                "description": f"Load {i}",
                "definition": definition,
            }
            created = await api.post("/api/workflows", json=body, headers=headers)
            created.raise_for_status()
            ids.append(uuid.UUID(created.json()["id"]))
    admin = await asyncpg.connect(deploy.admin_dsn)
    try:
        row = await admin.fetchrow(
            "select m.org_id, m.user_id from memberships m join users u on u.id = m.user_id "
            "where u.email = $1",
            email,
        )
        assert row is not None
        if executions:
            await admin.execute(
                SEED_EXECUTIONS, row["org_id"], row["user_id"], executions, workflows
            )
        await admin.execute("analyze")
    finally:
        await admin.close()
    return Tenant(headers, row["org_id"], row["user_id"], ids)


def list_sql() -> dict[str, str]:
    """The statements the bare app runs: the queries inside Taskloom's list functions
    (migration 0024: `taskloom_workflows`, `taskloom_recent_executions`), as plain SELECTs of
    the columns the API shows, the organization a parameter. `same_answers` checks that both
    answer the same JSON."""
    from taskloom.executions import service as executions
    from taskloom.workflows.schemas import WorkflowOut

    columns = ", ".join(name for name in WorkflowOut.model_fields if name != "warnings")
    return {
        "workflows": f"select {columns} from workflows where org_id = $1 order by name, id",
        "executions": f"select {executions._LISTED} from workflow_executions "
        "where org_id = $1 order by created_at desc, id desc limit $2",
    }


async def same_answers(deploy: Deployment, tenant: Tenant, paths: list[str]) -> None:
    """Taskloom and the bare app answer the same JSON on every list path (else the comparison
    would not be like for like)."""
    async with httpx.AsyncClient(timeout=30, headers=tenant.headers) as client:
        for path in paths:
            ours = await client.get(deploy.urls["taskloom"][0] + path)
            bare = await client.get(deploy.urls["bare"][0] + path)
            ours.raise_for_status()
            bare.raise_for_status()
            if ours.json() != bare.json():
                raise RuntimeError(f"{path}: Taskloom and the bare app answer differently")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    wall: float
    machine_total: float  # CPU seconds of all cores (busy + idle)
    machine_busy: float
    client: float
    servers: dict[int, float]
    postgres: dict[int, float]
    sessions: int  # connections ever opened to this database (pg_stat_database, PostgreSQL 14+)


class CpuProbe:
    """CPU seconds of the machine, this client, the servers under test, and this deployment's
    PostgreSQL backends (found in pg_stat_activity; a backend that exits mid-phase is lost)."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin, self.database = admin, database

    @staticmethod
    def _cpu(pids: list[int]) -> dict[int, float]:
        out = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                out[pid] = times.user + times.system
        return out

    async def snapshot(self, server_pids: list[int]) -> CpuSnapshot:
        rows = await self.admin.fetch(
            "select pid from pg_stat_activity where datname = $1", self.database
        )
        sessions = await self.admin.fetchval(
            "select coalesce((to_jsonb(d) ->> 'sessions')::bigint, -1) "
            "from pg_stat_database d where datname = $1",
            self.database,
        )
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        own = psutil.Process().cpu_times()
        return CpuSnapshot(
            wall=time.perf_counter(),
            machine_total=sum(machine),
            machine_busy=sum(machine) - idle,
            client=own.user + own.system,
            servers=self._cpu(server_pids),
            postgres=self._cpu([r["pid"] for r in rows]),
            sessions=sessions,
        )


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot, requests: int) -> dict[str, float]:
    """CPU ms per request of the servers, PostgreSQL (this database's backends) and the client;
    how busy the machine was, how many cores went to everything else (other load on the
    machine, Redis, PostgreSQL's background processes), and how many connections per second
    were opened to the database: a pool churning connections (more requests in flight than
    pooled connections) pays for a new backend each time, and the CPU of backends that ended
    during the phase is missing from `pg_ms`."""

    def delta(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(v - b.get(pid, 0.0) for pid, v in a.items())

    servers = delta(after.servers, before.servers)
    postgres = delta(after.postgres, before.postgres)
    client = after.client - before.client
    total = after.machine_total - before.machine_total
    busy = after.machine_busy - before.machine_busy
    wall = after.wall - before.wall
    per = 1000 / max(requests, 1)
    opened = after.sessions - before.sessions if before.sessions >= 0 else math.nan
    return {
        "server_ms": round(servers * per, 3),
        "pg_ms": round(postgres * per, 3),
        "client_ms": round(client * per, 3),
        "busy_pct": round(100 * busy / total, 1) if total else math.nan,
        "other_cores": round((busy - servers - postgres - client) / wall, 2),
        "connects_per_s": round(opened / wall, 1),
    }


@dataclass
class Target:
    endpoint: str  # e.g. "GET /api/workflows"
    server: str  # "taskloom" or "bare"
    method: str
    path: str
    expected: int
    execute: bool = False  # POST a JSON body with a fresh input


@dataclass
class Phase:
    endpoint: str
    server: str
    concurrency: int
    requests: int
    seconds: float
    rate: float
    p50: float
    p95: float
    p99: float
    errors: int
    first_error: str | None
    cpu: dict[str, float]


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(
    target: Target,
    urls: list[str],
    pids: list[int],
    headers: dict[str, str],
    concurrency: int,
    warmup: float,
    duration: float,
    probe: CpuProbe,
) -> Phase:
    """`concurrency` loops, each sending one request at a time, round-robin over `urls`;
    requests that end within [warm-up end, warm-up end + duration] are counted."""
    # Idle connections are dropped after 2 s, before the server's keep-alive timeout (uvicorn's
    # 5 s) closes them: at 5 s on both sides a request sent as the server closes fails.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) for url in urls
    ]
    turn, numbers = itertools.count(), itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter() + warmup
    t1 = t0 + duration

    async def user() -> None:
        while (start := time.perf_counter()) < t1:
            client = clients[next(turn) % len(clients)]
            body = {"input": {"n": next(numbers)}} if target.execute else None
            problem = None
            try:
                response = await client.request(target.method, target.path, json=body)
                if response.status_code != target.expected:
                    problem = f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            end = time.perf_counter()
            if t0 <= end <= t1:
                if problem is None:
                    latencies.append(end - start)
                else:
                    errors.append(problem)

    async def window() -> tuple[CpuSnapshot, CpuSnapshot]:
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        before = await probe.snapshot(pids)
        await asyncio.sleep(max(0.0, t1 - time.perf_counter()))
        return before, await probe.snapshot(pids)

    probing = asyncio.create_task(window())
    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
        before, after = await probing
    finally:
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # already reported
            await probing
        for client in clients:
            await client.aclose()
    ordered = sorted(latencies)
    seconds = after.wall - before.wall
    return Phase(
        endpoint=target.endpoint,
        server=target.server,
        concurrency=concurrency,
        requests=len(ordered),
        seconds=round(seconds, 2),
        rate=len(ordered) / duration,
        p50=percentile(ordered, 0.50),
        p95=percentile(ordered, 0.95),
        p99=percentile(ordered, 0.99),
        errors=len(errors),
        first_error=errors[0] if errors else None,
        cpu=cpu_usage(before, after, len(ordered)),
    )


# --- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


HEADER = (
    f"{'endpoint':<34}{'server':<10}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
    f"{'p99 ms':>9}{'errors':>8}  {'CPU ms/req: server':>18}{'pg':>7}{'client':>8}"
    f"{'busy %':>8}{'other cores':>12}{'connects/s':>11}"
)


def row(p: Phase) -> str:
    c = p.cpu
    return (
        f"{p.endpoint:<34}{p.server:<10}{p.concurrency:>5}{p.rate:>9.0f}{p.p50:>9.2f}"
        f"{p.p95:>9.2f}{p.p99:>9.2f}{p.errors:>8}  {c['server_ms']:>18.2f}{c['pg_ms']:>7.2f}"
        f"{c['client_ms']:>8.2f}{c['busy_pct']:>8.1f}{c['other_cores']:>12.2f}"
        f"{c['connects_per_s']:>11.1f}"
    )


def ratios(phases: list[Phase]) -> list[dict[str, Any]]:
    """Taskloom / bare for each list endpoint and concurrency."""
    bare = {(p.endpoint, p.concurrency): p for p in phases if p.server == "bare"}
    out = []
    for p in phases:
        b = bare.get((p.endpoint, p.concurrency))
        if p.server != "taskloom" or b is None:
            continue
        out.append(
            {
                "endpoint": p.endpoint,
                "concurrency": p.concurrency,
                "throughput": round(p.rate / b.rate, 3) if b.rate else math.nan,
                "p50": round(p.p50 / b.p50, 2),
                "p99": round(p.p99 / b.p99, 2),
                "server_cpu": round(p.cpu["server_ms"] / b.cpu["server_ms"], 2),
                "pg_cpu": round(p.cpu["pg_ms"] / b.cpu["pg_ms"], 2) if b.cpu["pg_ms"] else math.nan,
            }
        )
    return out


# --- the run ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, pg_url: str, redis_url: str) -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    async with deployment(pg_url, redis_url) as deploy:
        await start_taskloom(deploy, args.pool_size, args.profile)
        tenant = await seed(deploy, args.workflows, args.executions)
        sql = list_sql()
        # The same connection limit as one Taskloom app engine.
        await start_bare(deploy, tenant.org_id, sql, args.pool_size)
        list_targets = [
            ("GET /api/workflows", "/api/workflows"),
            ("GET /api/executions?limit=50", "/api/executions?limit=50"),
        ]
        await same_answers(deploy, tenant, [path for _, path in list_targets])
        headroom = await connection_headroom(deploy, args.pool_size)
        pids = {
            kind: [deploy.procs[f"{kind}-{i}"].pid for i in range(PROCESSES)]
            for kind in ("taskloom", "bare")
        }
        execute_path = f"/api/workflows/{tenant.workflow_ids[0]}/execute"
        plan = [
            (Target(name, server, "GET", path, 200), level)
            for level in args.levels
            for name, path in list_targets
            for server in ("taskloom", "bare")
        ] + [
            (
                Target(
                    "POST /api/workflows/{id}/execute", "taskloom", "POST", execute_path, 202, True
                ),
                level,
            )
            for level in args.levels
        ]
        print(
            f"\n{PROCESSES} `taskloom api` processes ({', '.join(deploy.urls['taskloom'])}) and "
            f"{PROCESSES} bare FastAPI + asyncpg processes ({', '.join(deploy.urls['bare'])}); "
            "the client (this process, one event loop, httpx) sends each request to the next "
            "process of the pair in turn (round-robin, like a load balancer). Client, servers, "
            f"PostgreSQL and Redis share this machine's {os.cpu_count()} cores.\n"
            f"Data: {args.workflows} workflows, {args.executions} executions seeded (the "
            "execute phases, run last, add more; no worker runs, so their jobs stay queued). "
            f"{args.warmup:g} s warm-up + {args.duration:g} s per phase. "
            f"Load average before: {' '.join(f'{v:.2f}' for v in load_before)}.\n"
            f"DATABASE_POOL_SIZE={args.pool_size} in each API process, the same maximum for "
            f"each bare pool. {headroom}\n",
            flush=True,
        )
        print(HEADER, flush=True)
        phases = []
        admin = await asyncpg.connect(deploy.admin_dsn)
        try:
            probe = CpuProbe(admin, deploy.database)
            for target, level in plan:
                phase = await measure(
                    target,
                    deploy.urls[target.server],
                    pids[target.server],
                    tenant.headers,
                    level,
                    args.warmup,
                    args.duration,
                    probe,
                )
                phases.append(phase)
                print(row(phase), flush=True)
                if phase.first_error:
                    print(f"    first error: {phase.first_error}", flush=True)
        finally:
            await admin.close()
    load_after = os.getloadavg()
    compared = ratios(phases)
    print("\nTaskloom / bare (throughput < 1 and latency > 1 are Taskloom's overhead):")
    columns = f"{'req/s':>8}{'p50':>7}{'p99':>7}{'server CPU/req':>16}{'pg CPU/req':>12}"
    print(f"{'endpoint':<34}{'conc':>5}{columns}")
    for r in compared:
        print(
            f"{r['endpoint']:<34}{r['concurrency']:>5}{r['throughput']:>8.2f}{r['p50']:>7.2f}"
            f"{r['p99']:>7.2f}{r['server_cpu']:>16.2f}{r['pg_cpu']:>12.2f}"
        )
    print(
        f"\nLoad average after: {' '.join(f'{v:.2f}' for v in load_after)}; "
        f"run took {time.monotonic() - started:.0f} s."
    )
    return {
        "machine": machine(),
        "processes_per_server": PROCESSES,
        "levels": args.levels,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workflows": args.workflows,
        "executions_seeded": args.executions,
        "pool_size": args.pool_size,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "phases": [
            {
                k: (round(v, 2) if isinstance(v, float) else v)
                for k, v in vars(p).items()
                if k != "first_error"
            }
            for p in phases
        ],
        "ratios": compared,
        "errors": sum(p.errors for p in phases),
    }


def main() -> int:
    if sys.argv[1:2] == ["--serve-bare"]:
        serve_bare()
        return 0
    parser = argparse.ArgumentParser(
        description="HTTP load on two `taskloom api` processes (list and execute endpoints) "
        "against a bare FastAPI + asyncpg app running the same SQL; see the module docstring."
    )
    parser.add_argument(
        "--levels",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 4, 16, 64],
        help="concurrency levels, comma-separated (default 1,4,16,64)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each phase (2)")
    parser.add_argument("--workflows", type=int, default=50, help="workflows to list (50)")
    parser.add_argument("--executions", type=int, default=1000, help="executions seeded (1000)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=20,
        help="DATABASE_POOL_SIZE of each API process (default 20, Taskloom's default); each "
        "bare pool gets the same maximum. Lower it when the PostgreSQL server "
        "is short of connections",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the API processes under cProfile; write DIR/api-N.prof",
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL whose role may create databases and roles (else BENCH_DATABASE_URL, "
        f"TEST_DATABASE_URL, {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--redis-url",
        help=f"Redis (else BENCH_REDIS_URL, TEST_REDIS_URL, {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="levels 1,8, 2 s phases, 0.5 s warm-up (about 1 minute)",
    )
    args = parser.parse_args()
    if args.workflows < 1 or args.executions < 0 or args.pool_size < 1:
        parser.error("--workflows and --pool-size must be at least 1, --executions at least 0")
    if args.quick:
        args.levels, args.duration, args.warmup = [1, 8], 2.0, 0.5
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    env = os.environ.get
    pg_url = args.database_url or env("BENCH_DATABASE_URL") or env("TEST_DATABASE_URL")
    redis_url = args.redis_url or env("BENCH_REDIS_URL") or env("TEST_REDIS_URL")

    async def run() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:  # every Ctrl-C / SIGTERM: stop measuring, keep cleaning up
            print("stopping: cleaning up (servers, database, role, Redis keys)", file=sys.stderr)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop)
        return await bench(args, pg_url or DEFAULT_DATABASE_URL, redis_url or DEFAULT_REDIS_URL)

    try:
        result = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped and removed", file=sys.stderr)
        return 130
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
