"""UI fixtures: browsers without JavaScript (httpx clients with their own cookie jars) against
the session's app, for the page and security tests. The end-to-end test in Chromium has its own
deployment and processes (test_browser_e2e.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import Account, register
from tests.web.support import sign_in

Browser = Callable[[], Awaitable[httpx.AsyncClient]]


@asynccontextmanager
async def _browsers(app: FastAPI) -> AsyncIterator[Browser]:
    opened: list[httpx.AsyncClient] = []

    async def open_one() -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        await client.aclose()


@pytest.fixture
async def new_browser(app: FastAPI) -> AsyncIterator[Browser]:
    """A factory of clients, each with a cookie jar of its own (one per person)."""
    async with _browsers(app) as open_one:
        yield open_one


@pytest.fixture
async def queue_browser(queue_app: FastAPI) -> AsyncIterator[Browser]:
    """The same, against the app whose queue real workers serve (tests.workers's `queue_app`,
    `start_worker`): what a page enqueues is run. The database is the same as `app`'s, so the
    accounts of `owner` and `client` sign in here too."""
    async with _browsers(queue_app) as open_one:
        yield open_one


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="owner", organization_name="UI Org")


@pytest.fixture
async def owner_browser(new_browser: Browser, owner: Account) -> httpx.AsyncClient:
    browser = await new_browser()
    await sign_in(browser, owner.email)
    return browser
