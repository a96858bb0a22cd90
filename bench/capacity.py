"""Capacity figures for docs/SCALING.md "Capacity plan": what one execution costs in Redis memory
and PostgreSQL rows, bytes and WAL, and how many connections an API and a worker process open.

Most of these do not depend on timing, so they hold on a busy machine: bytes, rows and
connections. One run:

1. a private `redis-server` on a free loopback port (no persistence), so that `INFO memory`
   counts this run's keys only; a scratch database on BENCH_DATABASE_URL's server;
2. a real `taskloom api` (one process) and, for a few seconds, one `taskloom worker`: the
   connections each holds when idle (its sockets matched to `pg_stat_activity` by client port
   and to `CLIENT LIST` by address);
3. with no worker running, `--executions` execute calls over HTTP (`--connections` in flight,
   spread over `--orgs` organizations, one API key each, every limit at its default): Redis
   memory per queued execution (`INFO` delta and `MEMORY USAGE` of every key, by pattern), the
   API's connections under load, and PostgreSQL's rows, bytes and WAL for the accepted starts;
4. one worker drains the backlog (a chain of `--steps` `transform` steps): its connections
   under load, busy PostgreSQL backends, Redis memory per finished execution (retained BullMQ
   jobs and live-event streams) and PostgreSQL's rows, bytes and WAL for running them;
5. the retention purge deletes them all (`purge_expired_executions` as of a day past
   EXECUTION_RETENTION_DAYS): rows and WAL per purged execution.

WAL is attributed with pg_walinspect (PostgreSQL 15+, created in the scratch database): the
records that touch this database's relations plus the other records of their transactions
(commits), so other databases on the server do not count; the server-wide LSN difference is
printed beside it. A temporary physical replication slot keeps the run's WAL until it is read.
Table statistics are read after the process that wrote them exited (a backend flushes them when
it ends). Rates (executions/s) are printed too, but they depend on whatever else the machine
runs. Prints a report and `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis
from redis.exceptions import RedisError

try:
    from bench.proc_cpu import Snapshot, descendants, ticks
    from bench.queue_http import free_port, make_tenants, start_api, stop_api
    from bench.queue_throughput import chain, start_worker, stop_workers, wait_until_started
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/capacity.py`: bench/ is on sys.path
    from proc_cpu import Snapshot, descendants, ticks  # type: ignore[no-redef]
    from queue_http import free_port, make_tenants, start_api, stop_api  # type: ignore[no-redef]
    from queue_throughput import (  # type: ignore[no-redef]
        chain,
        start_worker,
        stop_workers,
        wait_until_started,
    )
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.config import Settings
from taskloom.executions.retention import purge_expired_executions
from taskloom.runtime import Runtime, open_runtime

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SAMPLE_SECONDS = 0.25
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

TABLES = """
select relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       pg_total_relation_size(relid) as bytes, pg_relation_size(relid) as heap
from pg_stat_user_tables
"""
DATABASE = """
select tup_inserted, tup_updated, tup_deleted, xact_commit
from pg_stat_database where datname = current_database()
"""
# Records touching this database's relations, and the other records of their transactions.
WAL = """
with r as (select * from pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)),
ours as (select distinct xid from r where block_ref like $3 and xid <> 0)
select count(*) as records, coalesce(sum(record_length), 0) as bytes,
       coalesce(sum(fpi_length), 0) as fpi
from r where block_ref like $3 or (xid <> 0 and xid in (select xid from ours))
"""


# --- a private redis-server -------------------------------------------------------------------
@asynccontextmanager
async def private_redis() -> AsyncIterator[str]:
    """redis-server on a free loopback port, no RDB or AOF; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("bench/capacity.py needs redis-server (apt-get install redis-server)")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="taskloom-capacity-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        for _ in range(100):
            try:
                await client.ping()
                break
            except (OSError, RedisError):
                await asyncio.sleep(0.05)
        await client.aclose()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


# --- connections --------------------------------------------------------------------------------
class Connections:
    """Which PostgreSQL and Redis connections each process (with its children) holds, named by
    `application_name` and by Redis client name."""

    def __init__(self, admin: asyncpg.Connection, redis: Redis, pg_port: int, redis_port: int):
        self.admin, self.redis = admin, redis
        self.pg_port, self.redis_port = pg_port, redis_port
        self.peak: dict[str, dict[str, int]] = defaultdict(dict)
        self.active: list[int] = []  # busy backends of this database, one figure per sample

    def _ports(self, pid: int) -> tuple[set[int], set[int]]:
        pg, rd = set(), set()
        for each in descendants(Snapshot.take().table, [pid]):
            try:
                sockets = psutil.Process(each).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for s in sockets:
                if s.raddr and s.status == psutil.CONN_ESTABLISHED:
                    if s.raddr.port == self.pg_port:
                        pg.add(s.laddr.port)
                    elif s.raddr.port == self.redis_port:
                        rd.add(s.laddr.port)
        return pg, rd

    async def take(self, pids: dict[str, int]) -> dict[str, dict[str, int]]:
        """{process: {"pg:<application_name>": n, "redis:<client name>": n, …}}; also keeps the
        peak of each figure and the number of active backends."""
        activity = await self.admin.fetch(
            "select client_port, application_name, state from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
        clients = await self.redis.client_list()
        self.active.append(sum(1 for row in activity if row["state"] == "active"))
        seen: dict[str, dict[str, int]] = {}
        for process, pid in pids.items():
            pg, rd = self._ports(pid)
            counts: dict[str, int] = defaultdict(int)
            for row in activity:
                if row["client_port"] in pg:
                    counts[f"pg:{row['application_name'] or '?'}"] += 1
            for client in clients:
                if int(client["addr"].rsplit(":", 1)[1]) in rd:
                    counts[f"redis:{client.get('name') or '(unnamed)'}"] += 1
            seen[process] = dict(counts)
            for name, n in counts.items():
                self.peak[process][name] = max(n, self.peak[process].get(name, 0))
        return seen

    async def sample(self, pids: dict[str, int], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.take(pids)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)

    def reset(self) -> None:
        self.peak, self.active = defaultdict(dict), []


# --- PostgreSQL and Redis snapshots -------------------------------------------------------------
async def pg_snapshot(admin: asyncpg.Connection) -> dict[str, Any]:
    tables = {row["relname"]: dict(row) for row in await admin.fetch(TABLES)}
    for name in tables:
        tables[name]["rows"] = await admin.fetchval(f'select count(*) from "{name}"')
    return {
        "tables": tables,
        "database": dict(await admin.fetchrow(DATABASE)),
        "lsn": await admin.fetchval("select pg_current_wal_lsn()::text"),
        "size": await admin.fetchval("select pg_database_size(current_database())"),
    }


async def pg_delta(admin: asyncpg.Connection, before: dict[str, Any], n: int) -> dict[str, Any]:
    """What changed since `before`, per table and in all, and per execution (÷ n)."""
    after = await pg_snapshot(admin)
    tables = {}
    for name, now in after["tables"].items():
        was = before["tables"].get(name, {})
        change = {
            k: now[k] - was.get(k, 0)
            for k in ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del", "bytes", "rows")
        }
        if any(change.values()):
            tables[name] = change
    oid = await admin.fetchval("select oid from pg_database where datname = current_database()")
    wal = dict(await admin.fetchrow(WAL, before["lsn"], after["lsn"], f"%/{oid}/%"))
    server_wal = await admin.fetchval(
        "select pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", after["lsn"], before["lsn"]
    )
    db = {k: after["database"][k] - before["database"][k] for k in after["database"]}
    return {
        "tables": tables,
        "database": db,
        "wal": wal,
        "server_wal_bytes": int(server_wal),
        "database_bytes": after["size"] - before["size"],
        "per_execution": {
            "rows_inserted": round(db["tup_inserted"] / n, 2),
            "rows_updated": round(db["tup_updated"] / n, 2),
            "rows_deleted": round(db["tup_deleted"] / n, 2),
            "commits": round(db["xact_commit"] / n, 2),
            "wal_bytes": round(wal["bytes"] / n),
            "wal_fpi_bytes": round(wal["fpi"] / n),
            "table_bytes": round(sum(t["bytes"] for t in tables.values()) / n),
        },
        "after": after,
    }


def pattern(key: str, prefix: str) -> str:
    key = key[len(prefix) :] if key.startswith(prefix) else key
    return re.sub(r"\d{4,}", "<n>", UUID.sub("<id>", key))


async def redis_keys(redis: Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Every key of the deployment by pattern: keys, bytes (MEMORY USAGE, all elements) and
    elements (list/set/zset/hash/stream length)."""
    keys = [k.decode() async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
    found: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0, "elements": 0})
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
            pipe.type(key)
        answers = await pipe.execute()
        sizes = redis.pipeline(transaction=False)
        for key, kind in zip(batch, answers[1::2], strict=True):
            length = {
                b"list": "llen",
                b"set": "scard",
                b"zset": "zcard",
                b"hash": "hlen",
                b"stream": "xlen",
            }
            if (method := length.get(kind)) is not None:
                getattr(sizes, method)(key)
            else:
                sizes.exists(key)
        lengths = await sizes.execute()
        for key, used, length in zip(batch, answers[0::2], lengths, strict=True):
            entry = found[pattern(key, prefix)]
            entry["keys"] += 1
            entry["bytes"] += int(used or 0)
            entry["elements"] += int(length or 0)
    return dict(sorted(found.items(), key=lambda item: -item[1]["bytes"]))


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


# --- the run ------------------------------------------------------------------------------------
async def submit(base: str, tenants: list[Any], n: int, in_flight: int, body: str) -> float:
    """n execute calls, request i to tenant i mod T, `in_flight` at a time; seconds taken."""
    gate = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            tenant = tenants[i % len(tenants)]
            async with gate:
                response = await client.post(
                    f"/api/workflows/{tenant.workflow_id}/execute",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {tenant.token}",
                        "Content-Type": "application/json",
                    },
                )
            if response.status_code != 202:
                raise RuntimeError(f"execute answered {response.status_code}: {response.text}")

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - began


async def wait_finished(admin: asyncpg.Connection, n: int, within: float) -> float:
    began, deadline = time.perf_counter(), time.monotonic() + within
    while time.monotonic() < deadline:
        done = await admin.fetchval(
            "select count(*) from workflow_executions where status = 'succeeded'"
        )
        if done >= n:
            return time.perf_counter() - began
        await asyncio.sleep(0.1)
    raise RuntimeError(f"only {done} of {n} executions succeeded within {within:.0f} s")


def cpu_ms(before: Snapshot, after: Snapshot, pids: set[int], n: int) -> float:
    return round(1000 * ticks(before, after, pids) / n, 3)


async def backend_pids(admin: asyncpg.Connection) -> set[int]:
    rows = await admin.fetch(
        "select pid from pg_stat_activity where datname = current_database() "
        "and pid <> pg_backend_pid()"
    )
    return {row["pid"] for row in rows}


async def measure(args: argparse.Namespace, settings: Settings, redis_url: str) -> dict[str, Any]:
    n = args.executions
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-capacity-"))
    admin = await asyncpg.connect(settings.database_url)
    await admin.execute("create extension if not exists pg_walinspect")
    # Keeps the run's WAL until it is read (other databases' writes would recycle it): a
    # temporary slot, gone with this connection however the run ends.
    await admin.execute(
        "select pg_create_physical_replication_slot($1, true, true)", settings.database_app_role
    )
    redis = Redis.from_url(redis_url)
    pg_port = (
        int(settings.database_url.rsplit(":", 1)[1].split("/")[0])
        if settings.database_url
        else 5432
    )
    connections = Connections(admin, redis, pg_port, int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    runtime: Runtime = await open_runtime(settings)
    api = None
    result: dict[str, Any] = {"executions": n, "steps": args.steps, "orgs": args.orgs}
    try:
        api, base = await start_api(settings, 1, workdir / "api.log")
        tenants = await make_tenants(runtime, base, args.orgs, chain(args.steps))
        await runtime.close()  # nothing of the bench's own on the server while measuring
        # A fresh API process: the set-up's table statistics are flushed as the old one exits.
        stop_api(api)
        api, base = await start_api(settings, 1, workdir / "api.log")

        # Idle: the API after the sign-ins, and a worker that has started and found nothing.
        idle_dir = workdir / "idle"
        idle_dir.mkdir()
        runtime = await open_runtime(settings)
        procs = [start_worker(settings, idle_dir / "worker.log")]
        await wait_until_started(runtime, procs)
        await runtime.close()
        await asyncio.sleep(args.idle_seconds)
        result["idle"] = await connections.take({"api": api.pid, "worker": procs[0].pid})
        connections.reset()
        stop_workers(procs, idle_dir)

        # Accept: no worker runs, so every execution stays queued in Redis.
        memory_before = await used_memory(redis)
        pg_before = await pg_snapshot(admin)
        body = json.dumps(
            {"input": {"n": 1, "pad": "x" * args.input_bytes}}
            if args.input_bytes
            else {"input": {"n": 1}}
        )
        stop = asyncio.Event()
        sampler = asyncio.create_task(connections.sample({"api": api.pid}, stop))
        cpu_before = Snapshot.take()
        seconds = await submit(base, tenants, n, args.connections, body)
        cpu_after = Snapshot.take()
        stop.set()
        await sampler
        backends = await backend_pids(admin)
        result["accept"] = {
            "per_s": round(n / seconds, 1),
            "api_cpu_ms": cpu_ms(cpu_before, cpu_after, descendants(cpu_after.table, [api.pid]), n),
            "postgres_cpu_ms": cpu_ms(cpu_before, cpu_after, backends, n),
            "connections_peak": dict(connections.peak),
        }
        await asyncio.sleep(1)
        stop_api(api)  # its connections' buffers are not the jobs' memory
        api = None
        await asyncio.sleep(0.5)
        queued_memory = await used_memory(redis)
        result["queued_redis"] = {
            "used_memory_delta": queued_memory - memory_before,
            "per_execution": round((queued_memory - memory_before) / n),
            "keys": await redis_keys(redis, settings.key_prefix),
        }
        result["accept_pg"] = await pg_delta(admin, pg_before, n)

        # Run: one worker drains the backlog.
        run_dir = workdir / "run"
        run_dir.mkdir()
        pg_before = result["accept_pg"].pop("after")
        connections.reset()
        procs = [start_worker(settings, run_dir / "worker.log")]
        stop = asyncio.Event()
        sampler = asyncio.create_task(connections.sample({"worker": procs[0].pid}, stop))
        runtime = await open_runtime(settings)
        await wait_until_started(runtime, procs)  # it drains from here on
        cpu_before = Snapshot.take()
        began = time.perf_counter()
        await runtime.close()
        await wait_finished(admin, n, within=120 + n / 5)
        drain = time.perf_counter() - began
        cpu_after = Snapshot.take()
        backends = await backend_pids(admin)
        stop.set()
        await sampler
        await asyncio.sleep(2)  # the last completions, and the jobs' release
        stop_workers(procs, run_dir)
        await asyncio.sleep(0.5)
        finished_memory = await used_memory(redis)
        result["run"] = {
            "per_s": round(n / drain, 1),
            "worker_cpu_ms": cpu_ms(
                cpu_before, cpu_after, descendants(cpu_after.table, [procs[0].pid]), n
            ),
            "postgres_cpu_ms": cpu_ms(cpu_before, cpu_after, backends, n),
            "connections_peak": dict(connections.peak),
            "active_backends": {
                "mean": round(sum(connections.active) / max(1, len(connections.active)), 2),
                "max": max(connections.active, default=0),
                "samples": len(connections.active),
            },
        }
        result["finished_redis"] = {
            "used_memory_delta": finished_memory - memory_before,
            "per_execution": round((finished_memory - memory_before) / n),
            "keys": await redis_keys(redis, settings.key_prefix),
        }
        result["run_pg"] = await pg_delta(admin, pg_before, n)
        result["run_pg"].pop("after")

        # What the executions take once autovacuum has had its way (a lower bound: packed).
        result["packed_bytes"] = {}
        for table in ("workflow_executions", "execution_steps"):
            await admin.execute(f"vacuum full {table}")
            size = await admin.fetchval("select pg_total_relation_size($1::regclass)", table)
            heap = await admin.fetchval("select pg_relation_size($1::regclass)", table)
            result["packed_bytes"][table] = {
                "total": size,
                "heap": heap,
                "per_execution": round(size / n),
            }

        # Purge: the retention as if a day past EXECUTION_RETENTION_DAYS.
        pg_before = await pg_snapshot(admin)
        runtime = await open_runtime(settings)
        later = datetime.now(UTC) + timedelta(days=settings.execution_retention_days + 1)
        began = time.perf_counter()
        report = await purge_expired_executions(runtime, now=later)
        purge_seconds = time.perf_counter() - began
        await runtime.close()
        await asyncio.sleep(0.5)
        result["purge"] = report.counts() | {"seconds": round(purge_seconds, 3)}
        result["purge_pg"] = await pg_delta(admin, pg_before, n)
        result["purge_pg"].pop("after")
        return result
    finally:
        if api is not None:
            stop_api(api)
        await runtime.close()
        await redis.aclose()
        await admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------------
def print_report(r: dict[str, Any]) -> None:
    n = r["executions"]
    print(f"\n{n} executions of a {r['steps']}-step transform chain, {r['orgs']} organizations")
    print("\nconnections, idle (the API after sign-ins; a worker started, nothing queued):")
    for process, counts in r["idle"].items():
        print(f"  {process:<7} {counts}")
    print(f"peak under load: api {r['accept']['connections_peak'].get('api')}")
    print(f"                 worker {r['run']['connections_peak'].get('worker')}")
    print(f"busy PostgreSQL backends while the worker drained: {r['run']['active_backends']}")
    for phase in ("queued_redis", "finished_redis"):
        red, what = r[phase], phase.split("_")[0]
        delta, per = red["used_memory_delta"], red["per_execution"]
        print(f"\nRedis, {what}: used_memory +{delta:,} B = {per:,} B per execution")
        for name, k in list(red["keys"].items())[:12]:
            print(
                f"  {name:<52} {k['keys']:>6} keys {k['elements']:>7} elements "
                f"{k['bytes']:>11,} B {k['bytes'] / n:>8.1f} B/exec"
            )
    for phase in ("accept_pg", "run_pg", "purge_pg"):
        pg, wal = r[phase], r[phase]["wal"]
        print(f"\nPostgreSQL, {phase.split('_')[0]}: per execution {pg['per_execution']}")
        print(
            f"  WAL of this database {wal['bytes']:,} B ({wal['records']:,} records, "
            f"FPI {wal['fpi']:,} B); server-wide {pg['server_wal_bytes']:,} B"
        )
        for name, t in sorted(pg["tables"].items()):
            print(
                f"  {name:<26} ins {t['n_tup_ins']:>6} upd {t['n_tup_upd']:>6} "
                f"(hot {t['n_tup_hot_upd']:>6}) del {t['n_tup_del']:>6} rows {t['rows']:>+7} "
                f"bytes {t['bytes']:>+12,}"
            )
    print(f"\nafter VACUUM FULL (bytes each execution keeps): {r['packed_bytes']}")
    print(f"\npurge report: {r['purge']}")
    a, w = r["accept"], r["run"]
    print("\nrates (timing: they depend on the machine's other load), CPU ms per execution:")
    print(f"  accept {a['per_s']}/s: API {a['api_cpu_ms']}, PostgreSQL {a['postgres_cpu_ms']}")
    print(
        f"  one worker {w['per_s']}/s: worker {w['worker_cpu_ms']}, "
        f"PostgreSQL {w['postgres_cpu_ms']}"
    )
    print(f"load average at the end: {os.getloadavg()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--orgs", type=int, default=10, help="one API key each (RATE_LIMIT_EXECUTE)"
    )
    parser.add_argument("--connections", type=int, default=32, help="execute calls in flight")
    parser.add_argument(
        "--input-bytes", type=int, default=0, help="pad each input with this many bytes"
    )
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()
    pg_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)

    async def run() -> dict[str, Any]:
        async with (
            private_redis() as redis_url,
            scratch_deployment(pg_url, redis_url, label="capacity") as settings,
        ):
            return await measure(args, settings, redis_url)

    result = asyncio.run(run())
    print_report(result)
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
