"""GDPR export and erasure at scale, against the same PostgreSQL in one run.

Prints:
- export rows/s (the streamed JSON document, consumed in-process) against `COPY (SELECT …) TO
  STDOUT` of the same rows as JSON (the ceiling), and the ratio (target >= 50 %);
- peak RSS growth of a real `taskloom api` process streaming a 1k-row and a 100k-row export
  (target: flat);
- the time to erase a person with 100k rows (target < 3 s).

Usage: python bench/gdpr.py [--rows 100000]
Env: BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
     BENCH_REDIS_URL (default redis://127.0.0.1:6379/0). A database, role and key prefix of its
     own are created and removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy import or_, select, text

try:
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.audit.service import AuditContext
from taskloom.config import Settings
from taskloom.gdpr import export, service
from taskloom.gdpr.inventory import child_tables, user_tables
from taskloom.runtime import Runtime, open_runtime

PASSWORD = "correct horse battery staple"


async def _person(runtime: Runtime, rows: int) -> uuid.UUID:
    """A person with `rows` executions (inputs of ~250 bytes) in an organization of their own."""
    user_id, org_id, workflow_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text(
                "insert into users (id, email, display_name, password_hash) "
                "values (:u, :e, 'Bench Person', :h)"
            ),
            {
                "u": user_id,
                "e": f"bench-{user_id.hex[:8]}@example.test",
                "h": runtime.passwords.hash(PASSWORD),
            },
        )
        await conn.execute(
            text("insert into organizations (id, name, slug) values (:o, 'Bench', :s)"),
            {"o": org_id, "s": f"bench-{org_id.hex[:8]}"},
        )
        await conn.execute(
            text(
                "insert into memberships (id, org_id, user_id, role) values (:m, :o, :u, 'owner')"
            ),
            {"m": uuid.uuid4(), "o": org_id, "u": user_id},
        )
        await conn.execute(
            text(
                "insert into workflows (id, org_id, name, definition, created_by) "
                "values (:w, :o, 'bulk', '{\"steps\": []}', :u)"
            ),
            {"w": workflow_id, "o": org_id, "u": user_id},
        )
        await conn.execute(
            text(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version, "
                "definition, triggered_by, status, input) "
                "select gen_random_uuid(), :o, :w, 1, '{}', :u, 'succeeded', "
                "jsonb_build_object('n', g, 'pad', repeat('x', 200)) "
                "from generate_series(1, :n) g"
            ),
            {"o": org_id, "w": workflow_id, "u": user_id, "n": rows},
        )
    return user_id


async def _copy_rate(runtime: Runtime, dsn: str, user_id: uuid.UUID) -> tuple[int, float]:
    """COPY every row the export reads, as JSON, to a sink: the database's own speed."""
    queries = []
    for user_table in user_tables():
        match = or_(*(user_table.table.c[c] == user_id for c in user_table.columns))
        queries.append(select(user_table.table).where(match))
        for child, column in child_tables(user_table.name):
            parents = select(user_table.table.c.id).where(match)
            queries.append(select(child).where(child.c[column].in_(parents)))
    dialect = runtime.database.system_engine.dialect
    connection = await asyncpg.connect(dsn)
    rows, started = 0, time.perf_counter()

    async def sink(chunk: bytes) -> None:
        nonlocal rows
        rows += chunk.count(b"\n")

    try:
        for query in queries:
            sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            await connection.copy_from_query(f"select row_to_json(t) from ({sql}) t", output=sink)
    finally:
        await connection.close()
    return rows, time.perf_counter() - started


async def _export_rate(runtime: Runtime, user_id: uuid.UUID) -> tuple[int, float, int]:
    counted = 0

    def on_row(rows: int) -> None:
        nonlocal counted
        counted += rows

    size, started = 0, time.perf_counter()
    async for chunk in export.json_document(runtime.database, user_id, datetime.now(UTC), on_row):
        size += len(chunk)
    return counted, time.perf_counter() - started, size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _rss_growth(settings: Settings, runtime: Runtime, sizes: list[int]) -> dict[int, int]:
    """Peak RSS growth of a real API process while it streams an export of each size."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
        "TASKLOOM_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_APP_ROLE": settings.database_app_role,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.key_prefix,
        "LOG_LEVEL": "error",
    }
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, outside the measured part
        [sys.executable, "-m", "taskloom", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    growth: dict[int, int] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as api:
            for _ in range(150):
                try:
                    await api.get("/health/live")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            for size in sizes:
                user_id = await _person(runtime, size)
                login = await api.post(
                    "/auth/login",
                    json={"email": f"bench-{user_id.hex[:8]}@example.test", "password": PASSWORD},
                )
                token = login.json()["access_token"]
                process = psutil.Process(server.pid)
                baseline = peak = process.memory_info().rss
                async with api.stream(
                    "GET", "/api/user/data-export", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    async for _chunk in response.aiter_bytes():
                        peak = max(peak, process.memory_info().rss)
                growth[size] = peak - baseline
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return growth


async def run(rows: int) -> dict[str, Any]:
    base_db = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    async with scratch_deployment(
        base_db, redis_url, label="bench", gdpr_export_max_per_hour=1000, log_level="error"
    ) as settings:
        runtime = await open_runtime(settings)
        try:
            user_id = await _person(runtime, rows)
            exported, export_s, size = await _export_rate(runtime, user_id)
            copied, copy_s = await _copy_rate(runtime, settings.database_url or "", user_id)
            growth = await _rss_growth(settings, runtime, [1_000, rows])
            started = time.perf_counter()
            await service.erase_account(runtime, user_id=user_id, context=AuditContext())
            erase_s = time.perf_counter() - started
        finally:
            await runtime.close()
    return {
        "rows": rows,
        "export_rows": exported,
        "export_rows_per_s": round(exported / export_s),
        "export_mib": round(size / 2**20, 1),
        "copy_rows": copied,
        "copy_rows_per_s": round(copied / copy_s),
        "export_vs_copy": round((exported / export_s) / (copied / copy_s), 3),
        "rss_growth_mib_1k": round(growth[1_000] / 2**20, 1),
        f"rss_growth_mib_{rows // 1000}k": round(growth[rows] / 2**20, 1),
        "erase_s": round(erase_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    result = asyncio.run(run(args.rows))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
