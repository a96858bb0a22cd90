"""bench/capacity.py, reduced (200 executions of a three-step chain, 4 organizations): the
figures docs/SCALING.md "Capacity plan" is built on come out, and are the ones the code implies
(one execution row and one row per step, two updates, four deletes by the purge, a live-event
stream and a kept BullMQ job per finished execution, a worker's application connections bounded
by its slots). The full run is recorded in docs/SCALING.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from tests.cli_support import clean_env
from tests.servers import missing_program

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "capacity.py"
N = 200


async def _has_walinspect(pg_server_url: str) -> bool:
    url = make_url(pg_server_url).set(drivername="postgresql")
    host = url.query.get("host")
    connection = await asyncpg.connect(
        user=url.username or "postgres",
        database=url.database or "postgres",
        host=(host[0] if isinstance(host, tuple) else host) or url.host or "127.0.0.1",
        port=url.port or 5432,
    )
    try:
        found = await connection.fetchval(
            "select 1 from pg_available_extensions where name = 'pg_walinspect'"
        )
    finally:
        await connection.close()
    return found is not None


def test_capacity_bench_counts_what_an_execution_writes_and_holds(pg_server_url: str) -> None:
    # The bench attributes WAL with pg_walinspect (PostgreSQL 15+ contrib); the embedded
    # pgserver ships no contrib extensions.
    if not asyncio.run(_has_walinspect(pg_server_url)):
        missing_program(
            "bench/capacity.py needs PostgreSQL's pg_walinspect extension (apt-get install "
            "postgresql-15, or postgresql-contrib; the embedded pgserver has none)"
        )
    env = clean_env(BENCH_DATABASE_URL=pg_server_url)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--executions", str(N), "--orgs", "4"],
        env=env,
        cwd=SCRIPT.parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout
    r = json.loads(lines[0].removeprefix("RESULT "))

    accept, run, purge = r["accept_pg"]["tables"], r["run_pg"]["tables"], r["purge_pg"]["tables"]
    assert accept["workflow_executions"]["n_tup_ins"] == N
    assert run["execution_steps"]["n_tup_ins"] == 3 * N
    assert run["workflow_executions"]["n_tup_upd"] == 2 * N
    assert "audit_logs" not in accept
    assert "audit_logs" not in run
    assert purge["workflow_executions"]["n_tup_del"] == N
    assert purge["execution_steps"]["n_tup_del"] == 3 * N
    assert r["purge"]["workflow_executions"] == N
    for phase in ("accept_pg", "run_pg", "purge_pg"):
        assert r[phase]["wal"]["bytes"] > 0
        assert r[phase]["wal"]["bytes"] <= r[phase]["server_wal_bytes"]

    queued = r["queued_redis"]["keys"]
    ready = sum(v["elements"] for k, v in queued.items() if ":fair}:ready:" in k)
    waiting = sum(v["elements"] for k, v in queued.items() if k.endswith("orchestration:wait"))
    assert ready + waiting == N
    finished = r["finished_redis"]["keys"]
    assert finished["live:<id>"]["keys"] == N
    assert finished["bull:orchestration:<id>"]["keys"] == N
    assert r["queued_redis"]["per_execution"] > 0

    worker = r["run"]["connections_peak"]["worker"]
    assert 1 <= worker["pg:taskloom-app"] <= 10  # WORKER_CONCURRENCY
    assert r["idle"]["api"]["pg:taskloom-app"] >= 1
    assert set(r["accept"]["connections_peak"]) == {"api"}
