"""The worker's hot path (migrations 0016 and 0018, executions/state.py): the claim and a step's
writes are one call each, run as the application role under row-level security with the tenant
the call sets; a step's success also answers whether a cancel was requested, so a chain of
`transform` steps costs one call per step boundary. Called here directly, as the runner calls
them, and through the engine, against real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from taskloom.db import driver
from taskloom.db.driver import app_connection
from taskloom.db.tenancy import system_transaction
from taskloom.executions import state
from taskloom.executions.engine import Engine
from taskloom.executions.state import Claim
from taskloom.executions.template_process import TemplateRenderer
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.workers import create_workflow, execute, execution_rows

STEP = {"id": "t", "type": "transform", "args": {"value": "{{ input.n * 2 }}"}}


async def _queued(api: httpx.AsyncClient, owner: Account, n: int = 21) -> uuid.UUID:
    workflow_id = await create_workflow(api, owner, [STEP])
    return uuid.UUID(await execute(api, owner, workflow_id, {"n": n}))


async def test_a_claim_marks_the_execution_running_and_reads_what_it_needs(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    execution_id = await _queued(api, owner)
    assert owner.org_id is not None
    claimed, run = await state.claim(
        queue_runtime.database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert claimed is Claim.RUN
    assert run is not None
    assert run.definition["steps"] == [STEP]
    assert run.input == {"n": 21}
    assert run.root_execution_id == execution_id
    assert run.parent_execution_id is None
    assert run.states == {}
    assert run.step_runs == 0
    execution, steps = await execution_rows(queue_runtime, execution_id)
    assert execution["status"] == "running"
    assert execution["attempts"] == 1
    assert run.started_at == execution["started_at"]
    assert steps == []  # a step's start is recorded by the step, not by the claim


async def test_a_one_step_transform_is_recorded_and_finished_in_one_call(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    execution_id = await _queued(api, owner)
    assert owner.org_id is not None
    _, run = await state.claim(
        queue_runtime.database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    await state.step_succeeded(
        queue_runtime.database,
        run,
        step_id="t",
        position=0,
        type_="transform",
        args={"value": 42, "api_key": "hidden"},
        output=42,
        started=False,
        last=True,
        execution_output={"t": 42},
    )
    execution, steps = await execution_rows(queue_runtime, execution_id)
    assert execution["status"] == "succeeded"
    assert execution["output"] == {"t": 42}
    [step] = steps
    assert step["status"] == "succeeded"
    assert step["attempts"] == 1
    assert step["output"] == 42
    assert step["input"] == {"value": 42, "api_key": "***"}  # redacted as before
    assert step["org_id"] == owner.org_id
    assert step["started_at"] is not None
    assert step["finished_at"] is not None


async def test_a_step_started_then_succeeded_counts_one_attempt_and_a_rerun_another(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    execution_id = await _queued(api, owner)
    assert owner.org_id is not None
    database = queue_runtime.database
    _, run = await state.claim(
        database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    started = {"step_id": "t", "position": 0, "type_": "transform"}
    assert await state.start_step(database, run, **started) == 1
    assert await state.start_step(database, run, **started) == 2  # a crash, then a re-run
    await state.step_succeeded(database, run, **started, args={}, output=1, started=True)
    execution, [step] = await execution_rows(queue_runtime, execution_id)
    assert step["attempts"] == 2
    assert step["status"] == "succeeded"
    assert execution["status"] == "running"  # not `last`: the execution goes on
    # The next claim (the job run again) reads the finished step and its attempts.
    _, again = await state.claim(
        database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert again is not None
    assert again.step_runs == 2
    assert again.states["t"].status == "succeeded"
    assert again.states["t"].output == 1


async def test_another_organization_can_neither_claim_nor_write_steps_of_an_execution(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """The org a call names is its tenant: with another's, the execution is not there, and no
    step row is written against it (the foreign key alone would not stop that)."""
    execution_id = await _queued(api, owner)
    intruder = await register(api, label="intruder", organization_name="Other Org")
    assert intruder.org_id is not None
    database = queue_runtime.database
    claimed, run = await state.claim(
        database, execution_id=execution_id, org_id=intruder.org_id, max_running=5
    )
    assert (claimed, run) == (Claim.GONE, None)
    async with app_connection(database) as statements:
        with pytest.raises(DBAPIError, match="not found"):
            await statements.fetchval(
                state._STEP_STARTED, intruder.org_id, execution_id, "t", 0, "transform", None
            )
        with pytest.raises(DBAPIError, match="not found"):
            await statements.execute(
                state._STEP_DONE,
                intruder.org_id,
                execution_id,
                "t",
                0,
                "transform",
                "{}",
                "1",
                False,
                True,
                "1",
                None,
            )
        # Nor does it learn whether a cancel was requested: the execution is not there.
        assert (
            await statements.fetchval(state._CANCEL_REQUESTED, intruder.org_id, execution_id, None)
            is False
        )
    execution, steps = await execution_rows(queue_runtime, execution_id)
    assert execution["status"] == "queued"
    assert execution["attempts"] == 0
    assert steps == []


async def test_a_claim_defers_at_the_organizations_cap_and_finds_a_cancel(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    first, second = await _queued(api, owner), await _queued(api, owner)
    assert owner.org_id is not None
    database = queue_runtime.database
    claimed, _ = await state.claim(database, execution_id=first, org_id=owner.org_id, max_running=1)
    assert claimed is Claim.RUN
    claimed, _ = await state.claim(
        database, execution_id=second, org_id=owner.org_id, max_running=1
    )
    assert claimed is Claim.DEFER
    assert (await execution_rows(queue_runtime, second))[0]["status"] == "queued"
    response = await api.post(f"/api/executions/{second}/cancel", headers=owner.headers)
    assert response.status_code == 200, response.text
    claimed, _ = await state.claim(
        database, execution_id=second, org_id=owner.org_id, max_running=1
    )
    assert claimed is Claim.FINISHED  # cancelled while queued: nothing to run


CHAIN = [
    {"id": "a", "type": "transform", "args": {"value": "{{ input.n + 1 }}"}},
    {"id": "b", "type": "transform", "args": {"value": "{{ steps.a.output * 2 }}"}},
    {"id": "c", "type": "transform", "args": {"value": "{{ steps.b.output + 3 }}"}},
]


class _Calls:
    """What the engine sends PostgreSQL: hot-path calls (one round trip each), SQLAlchemy
    tenant transactions (four or more each), and separate cancel checks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hot: list[str] = []
        self.transactions = 0
        self.cancel_checks = 0
        call, transaction, check = (
            driver.Statements._call,
            state.tenant_transaction,
            state.cancel_requested,
        )

        async def counted_call(statements: Any, method: Any, query: str, args: Any) -> Any:
            self.hot.append(query.split("(")[0].removeprefix("select "))
            return await call(statements, method, query, args)

        @asynccontextmanager
        async def counted_transaction(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            self.transactions += 1
            async with transaction(*args, **kwargs) as db:
                yield db

        async def counted_check(*args: Any, **kwargs: Any) -> bool:
            self.cancel_checks += 1
            return await check(*args, **kwargs)

        monkeypatch.setattr(driver.Statements, "_call", counted_call)
        monkeypatch.setattr(state, "tenant_transaction", counted_transaction)
        monkeypatch.setattr(state, "cancel_requested", counted_check)


async def _run_chain(
    runtime: Runtime,
    owner: Account,
    execution_id: uuid.UUID,
    calls: _Calls,
    claimed: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Claim the execution (then await `claimed`, if given) and run its graph in this process,
    as the runner does."""
    assert owner.org_id is not None
    _, run = await state.claim(
        runtime.database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    if claimed is not None:
        await claimed()
    calls.hot.clear()
    templates = TemplateRenderer.from_settings(runtime.settings)

    async def progressed() -> None:
        return None

    try:
        finished = await Engine(runtime, templates, run, on_progress=progressed).execute()
    finally:
        await templates.aclose()
    return finished.status


async def test_a_chain_of_transforms_costs_one_call_per_step_and_no_other_transaction(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each step's success is committed on its own, before the next step starts, in one call
    that also says whether a cancel was requested: no separate cancel check, no SQLAlchemy
    transaction; the last one ends the execution."""
    workflow_id = await create_workflow(api, owner, CHAIN)
    execution_id = uuid.UUID(await execute(api, owner, workflow_id, {"n": 1}))
    calls = _Calls(monkeypatch)
    assert await _run_chain(queue_runtime, owner, execution_id, calls) == "succeeded"
    assert calls.hot == ["taskloom_step_done"] * 3
    assert calls.transactions == 0
    assert calls.cancel_checks == 0
    execution, steps = await execution_rows(queue_runtime, execution_id)
    assert execution["status"] == "succeeded"
    assert {s["step_id"]: (s["status"], s["output"]) for s in steps} == {
        "a": ("succeeded", 2),
        "b": ("succeeded", 4),
        "c": ("succeeded", 7),
    }
    assert execution["output"] == 7  # the last step's


async def test_a_cancel_requested_while_a_step_runs_stops_the_chain_before_the_next_step(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first step's success reads the request in its own call: the second never starts,
    the execution ends cancelled."""
    workflow_id = await create_workflow(api, owner, CHAIN)
    execution_id = uuid.UUID(await execute(api, owner, workflow_id, {"n": 1}))
    calls = _Calls(monkeypatch)

    async def cancel() -> None:
        response = await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
        assert response.status_code == 200, response.text

    status = await _run_chain(queue_runtime, owner, execution_id, calls, claimed=cancel)
    assert status == "cancelled"
    # The first step's success, then the execution's end (its own tenant transaction).
    assert calls.hot[0] == "taskloom_step_done"
    assert calls.hot.count("taskloom_step_done") == 1
    assert calls.cancel_checks == 0
    execution, steps = await execution_rows(queue_runtime, execution_id)
    assert execution["status"] == "cancelled"
    assert [(s["step_id"], s["status"]) for s in steps] == [("a", "succeeded")]


async def test_a_steps_success_answers_whether_a_cancel_was_requested(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    execution_id = await _queued(api, owner)
    assert owner.org_id is not None
    database = queue_runtime.database
    _, run = await state.claim(
        database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    step = {"position": 0, "type_": "transform", "args": {}, "output": 1, "started": False}
    assert await state.step_succeeded(database, run, step_id="t", **step) is False
    assert await state.cancel_requested(database, run) is False
    response = await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
    assert response.status_code == 200, response.text
    assert await state.cancel_requested(database, run) is True
    assert await state.step_succeeded(database, run, step_id="t", **step) is True


async def test_a_claim_after_a_retry_reads_the_steps_that_finished_before(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """Migration 0019: a queued execution is claimed in one write, and reads no step rows on
    its first run only; one queued again (a retry) has run before and reads them."""
    execution_id = await _queued(api, owner)
    assert owner.org_id is not None
    database = queue_runtime.database
    _, run = await state.claim(
        database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    await state.step_succeeded(
        database,
        run,
        step_id="t",
        position=0,
        type_="transform",
        args={},
        output=7,
        started=False,
    )
    async with system_transaction(database) as db:  # failed later, then retried: queued again
        await db.execute(
            text("update workflow_executions set status = 'queued' where id = :id"),
            {"id": execution_id},
        )
    claimed, again = await state.claim(
        database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert claimed is Claim.RUN
    assert again is not None
    assert again.states["t"].status == "succeeded"
    assert again.states["t"].output == 7
    execution, _ = await execution_rows(queue_runtime, execution_id)
    assert execution["attempts"] == 2
