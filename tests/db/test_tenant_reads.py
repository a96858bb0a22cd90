"""db/tenancy.tenant_reads against a real PostgreSQL: the list endpoints' read-only tenant
transaction on the asyncpg connection, which SQLAlchemy does not know of. Row-level security
holds (the tenant's rows only, none without a tenant), nothing can be written, and whatever
happens inside it (success, a failed statement, a cancellation mid-statement) the connection
goes back to the pool outside any transaction, with no tenant set."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from taskloom.config import Settings
from taskloom.db.driver import app_connection
from taskloom.db.engine import Database, create_database
from taskloom.db.tenancy import tenant_reads
from taskloom.observability.request_id import (
    bound_request_id,
    current_request_id,
    is_valid_request_id,
)
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.workers import create_workflow

STEPS = [{"id": "a", "type": "transform", "args": {"value": 1}}]


@pytest.fixture
async def pool_of_one(settings: Settings) -> AsyncIterator[Database]:
    """A pool of one connection: the next checkout is the connection the reads used."""
    database = create_database(settings.model_copy(update={"database_pool_size": 1}))
    try:
        yield database
    finally:
        await database.dispose()


async def _two_tenants(client: httpx.AsyncClient) -> tuple[Account, str, Account, str]:
    first = await register(client, label="reads-a", organization_name="Reads A")
    second = await register(client, label="reads-b", organization_name="Reads B")
    return (
        first,
        await create_workflow(client, first, STEPS, name="a"),
        second,
        await create_workflow(client, second, STEPS, name="b"),
    )


async def _left_clean(database: Database) -> tuple[int, str]:
    """The pooled connection's backend and its tenant setting, checked to be outside any
    transaction (a transaction left open would carry the last tenant to the next user)."""
    async with app_connection(database) as statements:
        assert not statements.connection.is_in_transaction()
        pid = await statements.fetchval("select pg_backend_pid()")
        setting = await statements.fetchval("select current_setting('app.org_id', true)")
    return int(pid), setting or ""


async def test_reads_see_their_tenants_rows_only_and_none_without_a_tenant(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    first, first_workflow, second, second_workflow = await _two_tenants(client)
    query = "select id from workflows where id = any($1::uuid[])"
    both = [uuid.UUID(first_workflow), uuid.UUID(second_workflow)]
    seen = {}
    for account in (first, second):
        async with tenant_reads(
            runtime.database, org_id=account.org_id, user_id=account.user_id
        ) as reads:
            seen[account.org_id] = [str(row["id"]) for row in await reads.fetch(query, both)]
    assert seen == {first.org_id: [first_workflow], second.org_id: [second_workflow]}
    async with tenant_reads(runtime.database, org_id=None, user_id=None) as reads:
        assert await reads.fetch("select id from workflows") == []


async def test_reads_cannot_write(client: httpx.AsyncClient, runtime: Runtime) -> None:
    first, first_workflow, _, _ = await _two_tenants(client)
    with pytest.raises(DBAPIError, match="read-only transaction"):
        async with tenant_reads(
            runtime.database, org_id=first.org_id, user_id=first.user_id
        ) as reads:
            await reads.execute(
                "update workflows set name = 'changed' where id = $1", uuid.UUID(first_workflow)
            )
    answer = await client.get(f"/api/workflows/{first_workflow}", headers=first.headers)
    assert answer.json()["name"] == "a"


async def test_the_tenant_ends_with_the_transaction_and_the_connection_is_reused(
    pool_of_one: Database,
) -> None:
    org, user = uuid.uuid4(), uuid.uuid4()
    with bound_request_id("reads-request-0001"):
        async with tenant_reads(pool_of_one, org_id=org, user_id=user) as reads:
            pid = await reads.fetchval("select pg_backend_pid()")
            settings = await reads.fetchrow(
                "select current_setting('app.org_id') as org, "
                "current_setting('app.user_id') as user, "
                "current_setting('app.request_id') as request"
            )
    assert dict(settings) == {"org": str(org), "user": str(user), "request": "reads-request-0001"}
    assert await _left_clean(pool_of_one) == (pid, "")


async def test_a_failed_statement_is_rolled_back_and_the_connection_pooled_clean(
    pool_of_one: Database,
) -> None:
    pids: list[int] = []

    async def read() -> None:
        async with tenant_reads(pool_of_one, org_id=uuid.uuid4(), user_id=None) as reads:
            pids.append(await reads.fetchval("select pg_backend_pid()"))
            await reads.fetchval("select 1 / 0")

    with pytest.raises(DBAPIError, match="division by zero"):
        await read()
    assert await _left_clean(pool_of_one) == (pids[0], "")


async def test_a_read_cancelled_mid_statement_never_pools_its_transaction(
    pool_of_one: Database,
) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def read() -> None:
        async with tenant_reads(pool_of_one, org_id=uuid.uuid4(), user_id=None) as reads:
            pids.append(await reads.fetchval("select pg_backend_pid()"))
            started.set()
            await reads.fetchval("select pg_sleep(5)")

    task = asyncio.create_task(read())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.1)  # inside pg_sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid, setting = await asyncio.wait_for(_left_clean(pool_of_one), 10)
    assert setting == ""
    assert pid != pids[0]  # that connection was closed, not pooled mid-transaction


@pytest.mark.parametrize(
    "candidate",
    ["reads-'; drop table workflows; --", "abcdefgh\n", "abc\\defgh", "short", "x" * 129],
)
def test_request_ids_that_could_reach_a_literal_are_refused(candidate: str) -> None:
    assert not is_valid_request_id(candidate)
    with bound_request_id(candidate):
        assert current_request_id() is None
