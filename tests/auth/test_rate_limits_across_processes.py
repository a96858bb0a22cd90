"""An API key's limit holds across API processes: they count in the same Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from taskloom.config import Settings
from tests.cli_support import deployment_env, serve_api
from tests.factories import register
from tests.servers import free_port

QUOTA = 7


async def test_two_api_processes_together_allow_exactly_the_limit(
    settings: Settings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    owner = await register(client, label="procs", organization_name="Processes Org")
    created = await client.post("/auth/api-keys", json={"name": "shared"}, headers=owner.headers)
    headers = {"Authorization": f"Bearer {created.json()['key']}"}
    env = deployment_env(
        settings,
        JWT_SECRET=settings.jwt_secret.get_secret_value(),  # the keys' hashes are keyed by it
        RATE_LIMIT_WINDOW_SECONDS="3600",
        RATE_LIMIT_READS=str(QUOTA),
    )
    ports = [free_port(), free_port()]
    servers = [serve_api(env, port, tmp_path / f"api-{port}.log") for port in ports]
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def get(n: int) -> int:
                url = f"http://127.0.0.1:{ports[n % 2]}/api/workflows"
                return (await http.get(url, headers=headers)).status_code

            statuses = await asyncio.gather(*(get(n) for n in range(4 * QUOTA)))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=15)
    assert statuses.count(200) == QUOTA, statuses
    assert statuses.count(429) == 3 * QUOTA, statuses
