"""An app and runtime whose outbound guard lets connections reach the fakes on 127.0.0.1, with
a small breaker threshold and a short cool-down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.in_process import asgi_client, opened_runtime, running_app

TOOL_TEST_SETTINGS: dict[str, Any] = {
    "outbound_allowed_hosts": "127.0.0.1",
    "breaker_failure_threshold": 3,
    "breaker_reset_seconds": 1.0,
    "tool_cache_ttl_seconds": 60,
    "tool_timeout_seconds": 5.0,
    "ai_max_retries": 0,
    "ai_timeout_seconds": 5.0,
}


@pytest.fixture(scope="session")
def tools_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=TOOL_TEST_SETTINGS)


@pytest.fixture(scope="session")
async def tools_runtime(tools_settings: Settings) -> AsyncIterator[Runtime]:
    async with opened_runtime(tools_settings) as runtime:
        yield runtime


@pytest.fixture(scope="session")
async def tools_app(tools_runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(tools_runtime) as application:
        yield application


@pytest.fixture
async def tools_api(tools_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(tools_app, ip="203.0.113.9") as client:
        yield client


@pytest.fixture
async def admin(tools_api: httpx.AsyncClient) -> Account:
    """An organization's owner (owners may do everything admins may)."""
    return await register(tools_api, label="admin", organization_name="Tools Org")


async def connect(
    api: httpx.AsyncClient,
    account: Account,
    provider: str,
    base_url: str,
    credentials: dict[str, Any],
    *,
    name: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response = await api.post(
        "/api/connections",
        json={
            "provider": provider,
            "name": name or provider,
            "base_url": base_url,
            "credentials": credentials,
            "config": config or {},
        },
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
