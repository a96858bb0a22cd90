"""Failed sign-ins are counted in Redis per account and per IP; over the limit ⇒ 429."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from taskloom.app import create_app
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, register


@pytest.fixture
async def strict_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose limits are small: 3 failures per account, 5 per IP."""
    settings = runtime.settings.model_copy(
        update={"login_max_failures_per_account": 3, "login_max_failures_per_ip": 5}
    )
    strict = dataclasses.replace(runtime, settings=settings)
    app: FastAPI = create_app(runtime=strict)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.23", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_account_is_throttled_after_repeated_failures(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account = await register(strict_client, label="throttle")
    for _ in range(3):
        bad = await strict_client.post(
            "/auth/login", json={"email": account.email, "password": "wrong password"}
        )
        assert bad.status_code == 401
    blocked = await strict_client.post(
        "/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "rate_limited"
    assert 0 < int(blocked.headers["retry-after"]) <= runtime.settings.login_failure_window_seconds
    # The counters live under this deployment's key prefix.
    keys = [k async for k in runtime.redis.scan_iter(match=runtime.keys("ratelimit", "*"))]
    assert keys
    assert all(k.startswith(runtime.settings.key_prefix) for k in keys)
    assert not any(account.email in k for k in keys)  # only a hash of the email reaches Redis


async def test_ip_is_throttled_across_accounts(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    for key in [k async for k in runtime.redis.scan_iter(match=runtime.keys("ratelimit", "*"))]:
        await runtime.redis.delete(key)
    for i in range(5):
        bad = await strict_client.post(
            "/auth/login", json={"email": f"ghost{i}@example.test", "password": "whatever"}
        )
        assert bad.status_code == 401
    blocked = await strict_client.post(
        "/auth/login", json={"email": "ghost-new@example.test", "password": "whatever"}
    )
    assert blocked.status_code == 429
