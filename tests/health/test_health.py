"""Health endpoints answer within 2 s whatever their dependencies do, and say what is wrong."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from taskloom.ai.executor import instance_breaker
from taskloom.app import create_app
from taskloom.breakers import BREAKERS, CircuitOpen
from taskloom.config import Settings
from taskloom.runtime import Runtime, open_runtime
from tests.factories import Account, add_member, make_superuser, register
from tests.servers import free_port, plain_redis_config, start_redis


async def test_ready_db_and_redis_when_all_is_well(client: httpx.AsyncClient) -> None:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["migrations_current"] is True
    assert body["checks"]["redis"]["status"] == "ok"
    db = (await client.get("/health/db")).json()
    assert db["status"] == "ok"
    assert db["latency_ms"] >= 0
    redis = (await client.get("/health/redis")).json()
    assert redis["tls"] is False
    assert "password" not in str(redis).lower()
    assert (await client.get("/health/live")).json() == {"status": "ok"}


@pytest.fixture
async def own_redis_client(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """An app whose Redis is a server of this test's own (so it can be stopped)."""
    port = free_port()
    process = start_redis(tmp_path, plain_redis_config(tmp_path, port), port)
    runtime = await open_runtime(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    )
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            yield client, process.pid
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)
        await runtime.close()


async def _timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path)
    return response, time.monotonic() - started


async def test_a_hung_redis_makes_ready_503_within_2_s_and_it_recovers(
    own_redis_client: tuple[httpx.AsyncClient, int],
) -> None:
    client, redis_pid = own_redis_client
    assert (await client.get("/health/ready")).status_code == 200

    os.kill(redis_pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        for path in ("/health/ready", "/health/redis", "/health/queue"):
            response, took = await _timed_get(client, path)
            assert response.status_code == 503, (path, response.text)
            assert took < 2.0, (path, took)
        body = (await client.get("/health/ready")).json()
        assert body["status"] == "not_ready"
        assert "Redis" in body["checks"]["redis"]["error"]
        assert body["checks"]["database"]["status"] == "ok"
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    deadline = time.monotonic() + 10
    while (await client.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, "did not recover after Redis came back"
        await asyncio.sleep(0.1)


async def test_circuits_turn_503_when_a_breaker_opens_and_200_once_it_closes(
    client: httpx.AsyncClient,
) -> None:
    name = f"tool:test-{uuid.uuid4()}"
    breaker = BREAKERS.get(name, failure_threshold=2, reset_seconds=0.2)
    try:
        assert (await client.get("/health/circuits")).status_code == 200

        async def failing() -> None:
            raise ConnectionError("provider down")

        for _ in range(2):
            with pytest.raises(ConnectionError):
                await breaker.call(failing)
        with pytest.raises(CircuitOpen):  # open: fails at once, the provider is not called
            await breaker.call(failing)
        opened = await client.get("/health/circuits")
        assert opened.status_code == 503
        assert opened.json()["status"] == "degraded"
        assert opened.json()["states"]["open"] >= 1
        assert REGISTRY.get_sample_value("circuit_breaker_state", {"name": name}) == 2

        await asyncio.sleep(0.25)  # after reset_seconds one trial call goes through

        async def working() -> str:
            return "ok"

        assert await breaker.call(working) == "ok"
        assert (await client.get("/health/circuits")).status_code == 200
        assert REGISTRY.get_sample_value("circuit_breaker_state", {"name": name}) == 0
    finally:
        BREAKERS.remove(name)


async def _connection(client: httpx.AsyncClient, account: Account, name: str) -> str:
    created = await client.post(
        "/api/connections",
        json={
            "provider": "github",
            "name": name,
            "base_url": "https://github.example.test",
            "credentials": {"token": "ghp_circuit_test"},
            "config": {},
        },
        headers=account.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _opened(name: str) -> None:
    breaker = BREAKERS.get(name, failure_threshold=1, reset_seconds=60)
    await breaker.record_failure()


async def test_circuits_by_connection_go_to_their_organizations_admins_and_instance_admins(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Breaker names carry connection ids: anyone sees counts by state, an organization admin
    their own connections' breakers, an instance admin every breaker."""
    a = await register(client, label="circuits-a", organization_name="Circuits A")
    b = await register(client, label="circuits-b", organization_name="Circuits B")
    a_tool = f"tool:{await _connection(client, a, 'a-github')}"
    a_ai = f"ai:{await _connection(client, a, 'a-other')}"
    b_tool = f"tool:{await _connection(client, b, 'b-github')}"
    instance = f"ai:instance:test-{uuid.uuid4()}"
    # An organization's calls with the instance's AI key have their own breaker (ai/executor).
    a_on_instance_key = instance_breaker("anthropic", a.org_id)
    b_on_instance_key = instance_breaker("anthropic", b.org_id)
    names = [a_tool, a_ai, b_tool, instance, a_on_instance_key, b_on_instance_key]
    for name in names:
        await _opened(name)
    try:
        public = await client.get("/health/circuits")
        assert public.status_code == 503
        assert not [name for name in names if name.split(":")[-1] in public.text]
        assert "circuits" not in public.json()
        assert public.json()["states"]["open"] >= 6

        as_a = await client.get("/health/circuits", headers=a.headers)
        assert as_a.status_code == 503
        assert {c["name"] for c in as_a.json()["circuits"]} == {a_tool, a_ai, a_on_instance_key}
        assert as_a.json()["circuits"][0]["state"] == "open"
        assert b_tool.split(":")[-1] not in as_a.text

        viewer = await add_member(client, a, role="viewer")
        refused = await client.get("/health/circuits", headers=viewer.headers)
        assert refused.status_code == 403
        forged = await client.get("/health/circuits", headers={"Authorization": "Bearer x.y.z"})
        assert forged.status_code == 401

        root = await make_superuser(client, runtime)
        as_root = await client.get("/health/circuits", headers=root.headers)
        assert {c["name"] for c in as_root.json()["circuits"]} >= set(names)
    finally:
        for name in names:
            BREAKERS.remove(name)
