"""bench/queue_throughput.py still runs: `--quick --fanout` end to end against the suite's servers
(TEST_DATABASE_URL / TEST_REDIS_URL, or the embedded ones), every figure positive, the 10-step
fan-out's executions all succeeded. The speed
itself is recorded in docs/PERFORMANCE.md, not asserted: CI machines vary too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli_support import clean_env

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "queue_throughput.py"


def test_quick_run_prints_positive_figures(pg_server_url: str, redis_url: str) -> None:
    env = clean_env(BENCH_DATABASE_URL=pg_server_url, BENCH_REDIS_URL=redis_url)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--fanout"],
        env=env,
        cwd=SCRIPT.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["ok"] is True
    metrics = {k: v for k, v in result.items() if isinstance(v, int | float) and k != "ok"}
    assert set(metrics) >= {
        "raw_jobs_per_s",
        "e2e_1_per_s",
        "e2e_2_per_s",
        "api_1_per_s",
        "api_2_per_s",
        "ratio_e2e1_raw",
        "ratio_e2e2_e2e1",
        "fanout_1_per_s",
        "fanout_2_per_s",
        "fanout_1_steps_per_s",
        "fanout_2_steps_per_s",
        "ratio_fanout_1_steps_one_step",
        "ratio_fanout_2_steps_one_step",
    }
    assert all(value > 0 for value in metrics.values()), metrics
    assert result["fanout_steps"] == 10
    assert result["statuses"] == {
        "e2e_1": {"succeeded": 50},
        "e2e_2": {"succeeded": 50},
        "fanout_1": {"succeeded": 10},
        "fanout_2": {"succeeded": 10},
    }
