"""Several API processes sharing PROMETHEUS_MULTIPROC_DIR: one scrape adds them all up."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskloom.config import Settings
from tests.cli_support import clean_env, serve_api
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
