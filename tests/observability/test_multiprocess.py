"""Several API processes sharing PROMETHEUS_MULTIPROC_DIR, or started by `taskloom api --workers N`
(a metrics directory of the run's own): one scrape adds them all up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from taskloom.config import Settings
from tests.cli_support import clean_env, deployment_env, run_taskloom, serve_api
from tests.servers import free_port


def _live_200(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            for sample in family.samples:
                labels = sample.labels
                wanted = labels.get("path") == "/health/live" and labels.get("status") == "200"
                if wanted and sample.name == "http_requests_total":
                    return sample.value
    return 0.0


async def test_two_processes_counts_add_up_in_one_scrape(
    settings: Settings, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = clean_env(
        TASKLOOM_ENV="test",
        DATABASE_URL=settings.database_url or "",
        DATABASE_APP_ROLE=settings.database_app_role,
        REDIS_URL=settings.redis_url or "",
        REDIS_KEY_PREFIX=settings.key_prefix,
        PROMETHEUS_MULTIPROC_DIR=str(shared),
    )
    ports = [free_port(), free_port()]
    servers = [serve_api(env, port, tmp_path / f"api-{port}.log") for port in ports]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.get(f"http://127.0.0.1:{ports[0]}/metrics")
            baseline = _live_200(first.text)  # the readiness polls of both processes
            for port, times in zip(ports, (3, 5), strict=True):
                for _ in range(times):
                    await client.get(f"http://127.0.0.1:{port}/health/live")
            scraped = await client.get(f"http://127.0.0.1:{ports[1]}/metrics")
        assert _live_200(scraped.text) - baseline == 8
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def _live_200_by_process(directory: Path) -> dict[int, float]:
    """`http_requests_total{path="/health/live",status="200"}` in each process's own file."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "http_requests_total" and labels.get("path") == "/health/live":
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def _start_workers(env: dict[str, str], port: int, log: Path) -> dict[str, Any]:
    """`taskloom api --workers 2`, once it has logged `api_processes_started` (its fields, and
    the supervisor as `process`)."""
    command = [sys.executable, "-m", "taskloom", "api", "--port", str(port), "--workers", "2"]
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            if '"api_processes_started"' in line:
                return {**json.loads(line), "process": process}
        time.sleep(0.1)
    process.kill()
    raise AssertionError(log.read_text())


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()


def _left_behind(pids: list[int], directory: Path) -> list[str]:
    return [p for p in [*(f"/proc/{pid}" for pid in pids), str(directory)] if Path(p).exists()]


async def test_api_workers_serve_one_port_and_one_scrape_counts_every_process(
    settings: Settings, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "api.log"
    env = deployment_env(settings, LOG_JSON="true", LOG_LEVEL="info")
    started = await asyncio.to_thread(_start_workers, env, port, log)
    pids, directory = started["pids"], Path(started["metrics_dir"])
    base = f"http://127.0.0.1:{port}"
    try:
        assert len(pids) == 2
        await _until_both_answer(base, directory, pids)
        async with httpx.AsyncClient(timeout=10) as client:
            baseline = _live_200((await client.get(f"{base}/metrics")).text)
        # A connection each, so the kernel hands them to both processes.
        for _ in range(4):
            await asyncio.gather(*(_fresh_get(f"{base}/health/live") for _ in range(10)))
        async with httpx.AsyncClient(timeout=10) as client:
            scraped = (await client.get(f"{base}/metrics")).text
        assert _live_200(scraped) - baseline == 40
        per_process = _live_200_by_process(directory)
        assert set(per_process) == set(pids)
        assert sum(per_process.values()) == _live_200(scraped)
    finally:
        await asyncio.to_thread(_stop, started["process"], log)
    # Every process has exited, and the run's own metrics directory is gone.
    assert _left_behind(pids, directory) == []


async def _fresh_get(url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 200


async def _until_both_answer(base: str, directory: Path, pids: list[int]) -> None:
    """Both processes are up: each has counted a readiness poll."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            await _fresh_get(f"{base}/health/live")
        if set(_live_200_by_process(directory)) == set(pids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not both processes answered: {_live_200_by_process(directory)}")


async def test_api_workers_refuse_the_embedded_servers(tmp_path: Path) -> None:
    done = await run_taskloom(
        "api", "--workers", "2", env=clean_env(TASKLOOM_ENV="test"), cwd=tmp_path
    )
    assert done.returncode == 2
    assert "--workers needs DATABASE_URL and REDIS_URL" in " ".join(done.stderr.split())
