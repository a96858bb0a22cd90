"""n8n 2.8.4 against Taskloom in the same sitting, driven by the same load generator (issue 20).

The n8n side is the workflow of ../shared/research/n8n-on-this-machine.md (bench/n8n_workflow.json):
a Webhook trigger (POST, answering "When last node finishes") and one Edit Fields node computing
`doubled = n * 2`, n8n in regular mode (one `n8n start` process runs everything), every execution
saved in PostgreSQL (n8n's default), database pool 2, everything else at n8n's defaults.

    python bench/n8n.py [--rounds 3] [--requests 2000] [--warmup 500] [--connections 32]
        [--generator loadgen|autocannon] [--no-with-taskloom] [--n8n-dir DIR]

n8n is installed with npm on first use into `--n8n-dir` (default N8N_BENCH_DIR, else
~/.cache/taskloom-bench/n8n-2.8.4), outside the repository. Once: a scratch database for n8n, the
workflow imported and published with n8n's CLI. Each round: `n8n start` on a free port, `--warmup`
requests, then `--requests` measured ones from the generator `queue_throughput.py --http` uses
(bench/queue_http.py `generate`, `--connections` in flight); executions/s = successful rows of
`execution_entity` that stopped after the first measured request, over the time from that request to
the last answer or stopped row, whichever is later (Taskloom's e2e figure is the same: first request
to last `succeeded` row). CPU per execution by process group from /proc (bench/proc_cpu.py): n8n
(the `n8n start` process and its task runner), PostgreSQL (n8n's database's backends plus the WAL
writer, checkpointer and background writer), the generator (its own figure) and the rest of the
machine ("other": on a shared machine, other sessions' load). n8n is stopped after each round. With
`--with-taskloom` (the default) each round then runs `bench/queue_throughput.py --http` (1 API
process + 1 worker, one-step `transform`, its defaults, `--requests` executions, same generator and
connections), and a side-by-side table gives the ratios Taskloom/n8n per round and their medians.
Prints `RESULT {json}`; exits 1 if a request or execution failed on either side. BENCH_DATABASE_URL
names the PostgreSQL server (default the local one); n8n's database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

try:
    from bench.proc_cpu import Snapshot, descendants, ticks
    from bench.queue_http import POSTGRES_SHARED, free_port, generate
except ModuleNotFoundError:  # run as `python bench/n8n.py`: bench/ is on sys.path
    from proc_cpu import Snapshot, descendants, ticks  # type: ignore[no-redef]
    from queue_http import POSTGRES_SHARED, free_port, generate  # type: ignore[no-redef]

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
N8N_VERSION = "2.8.4"
# n8n depends on SheetJS's xlsx as a tarball on cdn.sheetjs.com, which this machine cannot reach;
# 0.18.5 is the newest xlsx on the npm registry, and an `overrides` entry makes npm take it.
XLSX_OVERRIDE = "0.18.5"
WORKFLOW = BENCH_DIR / "n8n_workflow.json"
WORKFLOW_ID = "TaskloomBench0001"
WEBHOOK_PATH = "taskloom-bench"
BODY = json.dumps({"n": 21})
_JSON = {"content-type": "application/json"}
# Variables n8n reads that must come from this script, not from the shell that runs it.
N8N_ENV_PREFIXES = ("N8N_", "DB_", "EXECUTIONS_", "QUEUE_", "WEBHOOK_", "GENERIC_", "NODE_")


# --- install ----------------------------------------------------------------------------------
def install(root: Path) -> Path:
    """n8n's entry script under `root`, installed with npm if it is not there yet."""
    entry = root / "node_modules" / "n8n" / "bin" / "n8n"
    package = root / "node_modules" / "n8n" / "package.json"
    if entry.is_file() and json.loads(package.read_text())["version"] == N8N_VERSION:
        return entry
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("installing n8n needs npm (node >= 20.19)")
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "taskloom-bench-n8n",
        "private": True,
        "dependencies": {"n8n": N8N_VERSION},
        "overrides": {"xlsx": XLSX_OVERRIDE},
    }
    (root / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installing n8n@{N8N_VERSION} into {root} (a few minutes) ...", flush=True)
    began = time.monotonic()
    command = [npm, "install", "--no-audit", "--no-fund", "--omit=dev"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0 or not entry.is_file():
        raise RuntimeError(f"npm install failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"installed in {time.monotonic() - began:.0f} s", flush=True)
    return entry


# --- n8n's processes --------------------------------------------------------------------------
def n8n_env(pg_url: str, database: str, home: Path, port: int) -> dict[str, str]:
    url = make_url(pg_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(N8N_ENV_PREFIXES)}
    return env | {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": url.host or "127.0.0.1",
        "DB_POSTGRESDB_PORT": str(url.port or 5432),
        "DB_POSTGRESDB_DATABASE": database,
        "DB_POSTGRESDB_USER": url.username or "postgres",
        "DB_POSTGRESDB_PASSWORD": url.password or "",
        "DB_POSTGRESDB_POOL_SIZE": "2",
        "EXECUTIONS_MODE": "regular",
        "N8N_USER_FOLDER": str(home),
        "N8N_ENCRYPTION_KEY": secrets.token_hex(16),
        "N8N_LISTEN_ADDRESS": "127.0.0.1",
        "N8N_PORT": str(port),
        "N8N_RUNNERS_BROKER_PORT": str(free_port()),  # not the fixed 5679: another n8n may run
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_HIRING_BANNER_ENABLED": "false",
        "N8N_LOG_LEVEL": "warn",
    }


def n8n_cli(entry: Path, env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        ["node", str(entry), *args], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"n8n {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _spawn_n8n(entry: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            ["node", str(entry), "start"],
            env=env,
            stdout=handle,
            stderr=handle,
            start_new_session=True,  # a process group of its own: its task runner stops with it
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def start_n8n(
    entry: Path, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`n8n start`, once the production webhook answers {"doubled": 42}; its URL."""
    proc = _spawn_n8n(entry, env, log)
    url = f"http://127.0.0.1:{env['N8N_PORT']}/webhook/{WEBHOOK_PATH}"
    try:
        await _until_answering(proc, url, log)
    except BaseException:
        stop_n8n(proc)
        raise
    return proc, url


async def _until_answering(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"n8n exited during start-up:\n{_tail(log)}")
            try:
                answer = await client.post(url, content=BODY, headers=_JSON)
                # (while it activates the workflow, n8n may answer 200 without the body)
                if answer.status_code == 200 and answer.json() == {"doubled": 42}:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"n8n's webhook did not answer within 120 s:\n{_tail(log)}")


def stop_n8n(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group started with it, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# --- one n8n round ----------------------------------------------------------------------------
SUCCEEDED_SINCE = (
    "select count(*) filter (where status = 'success'),"
    " count(*) filter (where status <> 'success'), max(\"stoppedAt\")"
    ' from execution_entity where "stoppedAt" >= $1'
)
NOT_SUCCEEDED_SINCE = (
    'select id, status, mode, "startedAt", "stoppedAt" from execution_entity'
    " where \"stoppedAt\" >= $1 and status <> 'success' order by id limit 5"
)


async def n8n_round(
    entry: Path, env: dict[str, str], conn: asyncpg.Connection, database: str, args: Any
) -> dict[str, Any]:
    """Start n8n, warm it up, measure `args.requests` webhook calls, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix="taskloom-bench-n8n-"))
    try:
        proc, url = await start_n8n(entry, env, workdir / "n8n.log")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        spec = {
            "targets": [{"url": url, "token": None, "body": BODY}],
            "connections": args.connections,
        }

        async def just_wait(output: asyncio.Task[bytes]) -> None:
            await output

        warm = spec | {"requests": args.warmup}
        warmed, _ = await generate(args.generator, warm, workdir, lambda: None, just_wait)
        wall = time.time() - time.monotonic()  # CLOCK_MONOTONIC to wall clock, this machine
        before: list[Snapshot] = []
        window: list[datetime] = []

        async def watch(output: asyncio.Task[bytes]) -> tuple[Snapshot, tuple[int, int, Any]]:
            """Until every answered execution's row has landed (n8n may save after answering)."""
            gen = json.loads((await output).decode().strip().splitlines()[-1])
            since = datetime.fromtimestamp(wall + gen["first_sent"], UTC)
            window.append(since)
            deadline, rows = time.monotonic() + 15, (0, 0, None)
            while time.monotonic() < deadline:
                record = await conn.fetchrow(SUCCEEDED_SINCE, since)
                rows = (int(record[0]), int(record[1]), record[2])
                if rows[0] + rows[1] >= gen["statuses"].get("200", 0):
                    break
                await asyncio.sleep(0.1)
            return Snapshot.take(), rows

        measured = spec | {"requests": args.requests}
        gen, (after, (succeeded, failed, last_stop)) = await generate(
            args.generator, measured, workdir, lambda: before.append(Snapshot.take()), watch
        )
        activity = await conn.fetch("select pid, datname, backend_type from pg_stat_activity")
        unsuccessful = [dict(r) for r in await conn.fetch(NOT_SUCCEEDED_SINCE, window[0])]
        own_pid = await conn.fetchval("select pg_backend_pid()")
    finally:
        stop_n8n(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    start = before[0]
    postmaster = after.table[own_pid][0]
    ours = {r["pid"] for r in activity if r["datname"] == database and r["pid"] != own_pid}
    shared = {r["pid"] for r in activity if r["backend_type"] in POSTGRES_SHARED}
    groups = {
        "n8n": descendants(start.table, [proc.pid]) | descendants(after.table, [proc.pid]),
        "postgres": (ours | shared) & descendants(after.table, [postmaster]),
    }
    used = {name: ticks(start, after, pids) for name, pids in groups.items()}
    ended = gen["last_response"]
    if last_stop is not None:
        ended = max(ended, last_stop.timestamp() - wall)
    count = max(succeeded, 1)
    server = sum(used.values())
    busy = after.busy - start.busy
    client = gen["client_cpu_ms_per_request"] * gen["requests"] / 1000
    other = busy / os.sysconf("SC_CLK_TCK") - server - client  # other sessions' load, mostly
    return {
        "requests": args.requests,
        "http_statuses": gen["statuses"],
        "warmup_http_statuses": warmed["statuses"],
        "succeeded": succeeded,
        "failed": failed,
        "per_s": round(succeeded / (ended - gen["first_sent"]), 1),
        "latency_ms": gen["latency_ms"],
        "client_cpu_ms_per_request": gen["client_cpu_ms_per_request"],
        "cpu_ms_per_execution": {f"{k}_ms": round(1000 * v / count, 3) for k, v in used.items()}
        | {
            "server_ms": round(1000 * server / count, 3),
            "other_ms": round(1000 * other / count, 3),
        },
        "machine_busy_pct": round(100 * busy / (after.total - start.total), 1),
        "ok": gen["statuses"] == {"200": args.requests}
        and succeeded == args.requests
        and failed == 0,
        "sample_error": gen.get("sample_error"),
        "unsuccessful_sample": [
            {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
            for row in unsuccessful
        ],
    }


# --- one Taskloom round -----------------------------------------------------------------------
def taskloom_round(args: Any) -> dict[str, Any]:
    """`queue_throughput.py --http`, 1 API process + 1 worker, one-step `transform`: its run."""
    command = [sys.executable, str(BENCH_DIR / "queue_throughput.py"), "--http"]
    command += ["--api-workers-list", "1", "--workers-list", "1", "--jobs", "0"]
    command += ["--executions", str(args.requests), "--connections", str(args.connections)]
    command += ["--generator", args.generator]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    print(*(f"  | {line}" for line in lines if line and not line.startswith("RESULT ")), sep="\n")
    if done.stderr.strip():
        print(done.stderr[-3000:], file=sys.stderr)
    results = [line[len("RESULT ") :] for line in lines if line.startswith("RESULT ")]
    if not results:
        raise RuntimeError(f"queue_throughput.py --http gave no RESULT (exit {done.returncode})")
    run: dict[str, Any] = json.loads(results[-1])["runs"][0]
    return run


# --- the comparison ---------------------------------------------------------------------------
def compare(n8n: list[dict[str, Any]], taskloom: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round and as medians: executions/s and server CPU ms per execution of each side, and
    Taskloom/n8n for both (above 1 is better for Taskloom's rate, below 1 for its CPU)."""
    rounds = []
    for a, b in zip(n8n, taskloom, strict=True):
        n8n_cpu = a["cpu_ms_per_execution"]["server_ms"]
        taskloom_cpu = b["cpu_ms_per_execution"]["server_ms"]
        rounds.append(
            {
                "n8n_per_s": a["per_s"],
                "taskloom_per_s": b["e2e_per_s"],
                "ratio_per_s": round(b["e2e_per_s"] / a["per_s"], 2),
                "n8n_server_ms": n8n_cpu,
                "taskloom_server_ms": taskloom_cpu,
                "ratio_server_ms": round(taskloom_cpu / n8n_cpu, 2),
            }
        )
    medians = (
        {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
        if rounds
        else {}
    )
    return {"rounds": rounds, "medians": medians}


def print_n8n(runs: list[dict[str, Any]]) -> None:
    print(
        f"\n{'n8n round':<10}{'execs':>7}{'per s':>8}  CPU ms per execution: n8n postgres = server"
        " | client ms/req, other ms, p50/p99 ms, busy %"
    )
    for i, r in enumerate(runs, 1):
        cpu = r["cpu_ms_per_execution"]
        print(
            f"{i:<10}{r['succeeded']:>7}{r['per_s']:>8.0f}  {cpu['n8n_ms']:.2f} "
            f"{cpu['postgres_ms']:.2f} = {cpu['server_ms']:.2f} | "
            f"{r['client_cpu_ms_per_request']:.3f}, {cpu['other_ms']:.2f}, "
            f"{r['latency_ms']['p50']}/"
            f"{r['latency_ms']['p99']}, {r['machine_busy_pct']}"
        )
        if not r["ok"]:
            print(
                f"  NOT ALL SUCCEEDED: http {r['http_statuses']} (warm-up "
                f"{r['warmup_http_statuses']}), rows ok {r['succeeded']}"
            )
            print(f"  failed rows {r['failed']}; first error: {r['sample_error']}")
            print(*(f"  {row}" for row in r["unsuccessful_sample"]), sep="\n")


def print_comparison(table: dict[str, Any]) -> None:
    print(
        f"\n{'round':<8}{'n8n/s':>8}{'Taskloom/s':>12}{'T/n8n':>7}"
        f"{'n8n ms':>9}{'Taskloom ms':>13}{'T/n8n':>7}   (ms: server CPU per execution)"
    )
    rows = [(str(i), r) for i, r in enumerate(table["rounds"], 1)]
    for label, r in [*rows, ("median", table["medians"])]:
        print(
            f"{label:<8}{r['n8n_per_s']:>8.0f}{r['taskloom_per_s']:>12.0f}"
            f"{r['ratio_per_s']:>7.2f}{r['n8n_server_ms']:>9.2f}"
            f"{r['taskloom_server_ms']:>13.2f}{r['ratio_server_ms']:>7.2f}"
        )


# --- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="n8n 2.8.4 against Taskloom, same generator")
    default_dir = Path.home() / ".cache" / "taskloom-bench" / f"n8n-{N8N_VERSION}"
    parser.add_argument(
        "--n8n-dir", type=Path, default=Path(os.environ.get("N8N_BENCH_DIR", default_dir))
    )
    parser.add_argument("--rounds", type=int, default=3, help="n8n then Taskloom, alternating")
    parser.add_argument("--requests", type=int, default=2000, help="measured, per round and side")
    parser.add_argument("--warmup", type=int, default=500, help="n8n requests before measuring")
    parser.add_argument("--connections", type=int, default=32, help="in flight, both sides")
    parser.add_argument("--generator", choices=["loadgen", "autocannon"], default="loadgen")
    parser.add_argument(
        "--with-taskloom",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also queue_throughput.py --http each round (default on)",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.requests, args.connections) < 1 or args.warmup < 0:
        parser.error("--rounds, --requests and --connections are at least 1, --warmup 0")
    return args


async def bench(args: argparse.Namespace, entry: Path) -> dict[str, Any]:
    pg_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    database = f"n8n_bench_{secrets.token_hex(4)}"
    home = Path(tempfile.mkdtemp(prefix="taskloom-bench-n8n-home-"))
    admin = await asyncpg.connect(pg_url)
    n8n_runs: list[dict[str, Any]] = []
    taskloom_runs: list[dict[str, Any]] = []
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        env = n8n_env(pg_url, database, home, free_port())
        n8n_cli(entry, env, "import:workflow", f"--input={WORKFLOW}")
        n8n_cli(entry, env, "publish:workflow", f"--id={WORKFLOW_ID}")
        conn = await asyncpg.connect(
            make_url(pg_url).set(database=database).render_as_string(False)
        )
        try:
            active = "select active from workflow_entity where id = $1"
            if not await conn.fetchval(active, WORKFLOW_ID):
                raise RuntimeError("n8n import:workflow / publish:workflow left it inactive")
            for i in range(1, args.rounds + 1):
                print(f"round {i}: n8n", flush=True)
                n8n_runs.append(await n8n_round(entry, env, conn, database, args))
                if args.with_taskloom:
                    print(f"round {i}: Taskloom (queue_throughput.py --http)", flush=True)
                    taskloom_runs.append(taskloom_round(args))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(home, ignore_errors=True)
    print_n8n(n8n_runs)
    result: dict[str, Any] = {
        "n8n_version": N8N_VERSION,
        "generator": args.generator,
        "connections": args.connections,
        "requests": args.requests,
        "warmup": args.warmup,
        "n8n": n8n_runs,
        "ok": all(r["ok"] for r in n8n_runs + taskloom_runs),
    }
    if taskloom_runs:
        table = compare(n8n_runs, taskloom_runs)
        print_comparison(table)
        result |= {"taskloom": taskloom_runs, "comparison": table}
    return result


def main() -> int:
    args = parse_args()
    entry = install(args.n8n_dir)
    result = asyncio.run(bench(args, entry))
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
