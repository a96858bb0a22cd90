"""The list endpoints' read functions (migration 0024: `taskloom_workflows`,
`taskloom_recent_executions`) against a real PostgreSQL, called as the API calls them: as the
application role in autocommit, one statement each. They see their tenant's rows only (none for
another organization or without one), leave no tenant on the connection, cannot write, page
with a cursor, and return exactly the columns the API shows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from taskloom.config import Settings
from taskloom.db.driver import app_connection
from taskloom.db.engine import Database, create_database
from taskloom.executions.schemas import ExecutionOut
from taskloom.runtime import Runtime
from taskloom.workflows.schemas import WorkflowOut
from tests.factories import Account, register
from tests.workers import create_workflow, execute

STEPS = [{"id": "a", "type": "transform", "args": {"value": 1}}]
WORKFLOWS = "select * from taskloom_workflows($1, $2, $3)"
RECENT = "select * from taskloom_recent_executions($1, $2, $3, $4, $5, $6)"


@pytest.fixture
async def pool_of_one(settings: Settings) -> AsyncIterator[Database]:
    database = create_database(settings.model_copy(update={"database_pool_size": 1}))
    try:
        yield database
    finally:
        await database.dispose()


async def _start(client: httpx.AsyncClient, account: Account, workflow: str, n: int) -> list[str]:
    return [await execute(client, account, workflow, {"i": i}) for i in range(n)]


async def test_each_tenant_reads_its_own_rows_and_no_tenant_reads_none(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    first = await register(client, label="fn-a", organization_name="Fn A")
    second = await register(client, label="fn-b", organization_name="Fn B")
    first_workflow = await create_workflow(client, first, STEPS, name="zeta")
    await create_workflow(client, first, STEPS, name="alpha")
    second_workflow = await create_workflow(client, second, STEPS, name="b")
    first_runs = await _start(client, first, first_workflow, 2)
    second_runs = await _start(client, second, second_workflow, 1)
    async with app_connection(runtime.database) as calls:
        names = [r["name"] for r in await calls.fetch(WORKFLOWS, first.org_id, None, "")]
        assert names == ["alpha", "zeta"]
        seen = [
            str(r["id"]) for r in await calls.fetch(RECENT, first.org_id, None, "", None, None, 10)
        ]
        assert seen == first_runs[::-1]  # newest first
        theirs = await calls.fetch(RECENT, second.org_id, second.user_id, "", None, None, 10)
        assert [str(r["id"]) for r in theirs] == second_runs
        # The other organization's id in the filter finds nothing: row-level security decides.
        assert await calls.fetch(WORKFLOWS, uuid.uuid4(), None, "") == []
        assert await calls.fetch(RECENT, None, None, "", None, None, 10) == []
        # A plain statement in autocommit has no tenant: no row.
        assert await calls.fetch("select id from workflows") == []


async def test_a_cursor_continues_after_the_last_row_of_the_page(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account = await register(client, label="fn-page", organization_name="Fn Page")
    workflow = await create_workflow(client, account, STEPS, name="w")
    runs = (await _start(client, account, workflow, 5))[::-1]
    async with app_connection(runtime.database) as calls:
        page = await calls.fetch(RECENT, account.org_id, None, "", None, None, 2)
        assert [str(r["id"]) for r in page] == runs[:2]
        last = page[-1]
        rest = await calls.fetch(
            RECENT, account.org_id, None, "", last["created_at"], last["id"], 10
        )
        assert [str(r["id"]) for r in rest] == runs[2:]
    # And through the API, page by page, with the same answer as the filtered statement's.
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = (await client.get("/api/executions", params=query, headers=account.headers)).json()
        seen += [item["id"] for item in answer["items"]]
        if (cursor := answer["next_cursor"]) is None:
            break
    assert seen == runs
    filtered = await client.get(
        "/api/executions", params={"workflow_id": workflow, "limit": 50}, headers=account.headers
    )
    unfiltered = await client.get("/api/executions", params={"limit": 50}, headers=account.headers)
    assert filtered.json() == unfiltered.json()


async def test_the_call_leaves_no_tenant_on_the_pooled_connection(pool_of_one: Database) -> None:
    org, user = uuid.uuid4(), uuid.uuid4()
    async with app_connection(pool_of_one) as calls:
        await calls.fetch(WORKFLOWS, org, user, "list-request-01")
        pid = await calls.fetchval("select pg_backend_pid()")
        assert not calls.connection.is_in_transaction()
        assert await calls.fetchval("select current_setting('app.org_id', true)") in ("", None)
    async with app_connection(pool_of_one) as calls:
        assert await calls.fetchval("select pg_backend_pid()") == pid
        assert await calls.fetchval("select current_setting('app.user_id', true)") in ("", None)


async def test_the_functions_cannot_write(runtime: Runtime) -> None:
    """STABLE: PostgreSQL refuses a write inside them; checked on their definitions, since
    their bodies are fixed."""
    async with app_connection(runtime.database) as calls:
        rows = await calls.fetch(
            "select proname, provolatile::text as provolatile, prosecdef from pg_proc "
            "where proname = any($1)",
            ["taskloom_workflows", "taskloom_recent_executions"],
        )
        assert {r["proname"]: (r["provolatile"], r["prosecdef"]) for r in rows} == {
            "taskloom_workflows": ("s", False),  # stable, SECURITY INVOKER
            "taskloom_recent_executions": ("s", False),
        }
        with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
            await calls.execute(
                "create or replace function taskloom_workflows() returns int "
                "language sql as 'select 1'"
            )


async def test_the_functions_return_the_columns_the_api_shows(runtime: Runtime) -> None:
    async with app_connection(runtime.database) as calls:
        statement = await calls.connection.prepare(RECENT)
        recent = {attribute.name for attribute in statement.get_attributes()}
        statement = await calls.connection.prepare(WORKFLOWS)
        workflows = {attribute.name for attribute in statement.get_attributes()}
    assert recent == set(ExecutionOut.model_fields)
    assert set(WorkflowOut.model_fields) - {"warnings"} <= workflows
