"""/health/ready during a rolling upgrade: a process stays ready while the database is at its
head or ahead of it by migrations the previous release can run on, and is not ready when the
database is behind it or ahead by a migration that breaks_previous (docs/OPERATIONS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.db.migrate import alembic_config
from taskloom.db.revisions import lineage
from taskloom.runtime import open_runtime
from tests.conftest import fresh_deployment

NEWER = "9001"  # a revision of a newer release: this build has no file for it


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="rolling") as settings:
        yield settings


@pytest.fixture
async def client(deployment: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """This build's API (the "old code" once a newer release migrates) on that database."""
    runtime = await open_runtime(deployment)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            yield client
    finally:
        await runtime.close()


async def _newer_release_migrates(settings: Settings, *, breaks_previous: bool) -> None:
    """What `taskloom migrate` of a newer release leaves: its revision in alembic_version and
    its declaration in schema_revisions, written in one transaction."""
    admin = await asyncpg.connect(settings.database_url)
    try:
        async with admin.transaction():
            await admin.execute(
                "insert into schema_revisions (revision, breaks_previous) values ($1, $2)",
                NEWER,
                breaks_previous,
            )
            await admin.execute("update alembic_version set version_num = $1", NEWER)
    finally:
        await admin.close()


async def _database_check(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    ready = await client.get("/health/ready")
    assert ready.status_code == status, ready.text
    database: dict[str, Any] = ready.json()["checks"]["database"]
    return database


async def test_the_previous_release_stays_ready_after_an_additive_migration(
    deployment: Settings, client: httpx.AsyncClient
) -> None:
    assert (await _database_check(client, 200))["schema"] == "current"

    await _newer_release_migrates(deployment, breaks_previous=False)

    database = await _database_check(client, 200)
    assert database["status"] == "ok"
    assert database["schema"] == "ahead"
    assert database["revision"] == NEWER
    assert database["head"] == lineage()[0]
    assert (await client.get("/health/db")).status_code == 200


async def test_the_previous_release_is_not_ready_after_a_breaking_migration(
    deployment: Settings, client: httpx.AsyncClient
) -> None:
    await _newer_release_migrates(deployment, breaks_previous=True)

    database = await _database_check(client, 503)
    assert database["schema"] == "ahead_breaking"
    assert f"migration {NEWER} breaks the release" in database["error"]


async def test_a_newer_build_is_not_ready_while_the_database_is_behind_it(
    deployment: Settings, client: httpx.AsyncClient
) -> None:
    url = deployment.database_url
    assert url
    await asyncio.to_thread(command.downgrade, alembic_config(url), "-1")

    database = await _database_check(client, 503)
    assert database["schema"] == "behind"
    assert database["revision"] == lineage()[1]
    assert "run taskloom migrate" in database["error"]


async def test_an_unknown_revision_without_this_build_in_its_history_is_not_ready(
    deployment: Settings, client: httpx.AsyncClient
) -> None:
    """A revision this build does not know, from a history that does not include its head
    (another branch, a restored dump of something else): no way to tell, so not ready."""
    admin = await asyncpg.connect(deployment.database_url)
    try:
        await admin.execute("delete from schema_revisions where revision = $1", lineage()[0])
    finally:
        await admin.close()
    await _newer_release_migrates(deployment, breaks_previous=False)

    database = await _database_check(client, 503)
    assert database["schema"] == "unknown"
