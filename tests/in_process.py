"""A Taskloom deployment in the test process: its runtime, the app over it (lifespan started)
and an HTTP client speaking ASGI to it from a given client address. The fixtures of
tests/conftest.py and of the folders that need other settings are built from these."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.runtime import Runtime, open_runtime


@asynccontextmanager
async def opened_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(settings)
    try:
        yield runtime
    finally:
        await runtime.close()


@asynccontextmanager
async def running_app(runtime: Runtime) -> AsyncIterator[FastAPI]:
    application = create_app(runtime=runtime)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def asgi_client(app: FastAPI, *, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
