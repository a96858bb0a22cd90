"""bench/queue_throughput.py --http still runs: `--quick` over real `taskloom api --workers 2`
and `taskloom worker` processes with the rate limits at their defaults, driven by the lean load
generator: every execute call accepted (no 429), every execution succeeded, each process group's
CPU measured, the generator's own CPU reported. Speeds are recorded in docs/PERFORMANCE.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli_support import clean_env

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "queue_throughput.py"


def test_quick_http_run_accepts_and_finishes_every_execution(
    pg_server_url: str, redis_url: str
) -> None:
    env = clean_env(BENCH_DATABASE_URL=pg_server_url, BENCH_REDIS_URL=redis_url)
    command = [sys.executable, str(SCRIPT), "--http", "--quick", "--steps", "2"]
    command += ["--api-workers-list", "2", "--workers-list", "1"]
    done = subprocess.run(
        command,
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
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["ok"] is True
    (run,) = result["runs"]
    assert (run["api_processes"], run["workers"], run["steps"]) == (2, 1, 2)
    assert run["http_statuses"] == {"202": 50}
    assert run["statuses"] == {"succeeded": 50}
    assert run["orgs"] >= run["tenants"]["by_running_cap"] >= 2
    assert run["e2e_per_s"] > 0
    assert run["api_per_s"] >= run["e2e_per_s"]
    cpu = run["cpu_ms_per_execution"]
    assert all(cpu[f"{group}_ms"] > 0 for group in ("api", "worker", "postgres"))
    assert cpu["server_ms"] >= cpu["api_ms"] + cpu["worker_ms"]
    assert run["client_cpu_ms_per_request"] > 0
