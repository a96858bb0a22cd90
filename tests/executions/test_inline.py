"""Inline executions (ADR 0018, executions/inline.py, migration 0028): the API carries a small
input in the job of a one-step `transform` execution, and a worker that knows the workflow
version's definition finishes it in one call, without a claim; the call writes nothing unless
the row is still the one the job describes. The input leaves Redis with the job. Against real
PostgreSQL and Redis, and a real worker process."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskloom.db import driver
from taskloom.executions import state
from taskloom.executions.engine import Engine
from taskloom.executions.inline import (
    INLINE_INPUT_BYTES,
    INLINE_QUEUED_MOST,
    Definitions,
    as_stored,
    inline_definition,
)
from taskloom.executions.models import ExecutionStatus
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.state import Run
from taskloom.executions.template_process import TemplateRenderer
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.gdpr.traces import scan_redis
from tests.workers import (
    StartWorker,
    create_workflow,
    execute,
    execution_rows,
    wait_for_status,
)

pytestmark = pytest.mark.usefixtures("withdrawn_after")

STEP = {"id": "t", "type": "transform", "args": {"value": "{{ input.n * 2 }}"}}


async def _rows(runtime: Runtime, execution_id: uuid.UUID) -> tuple[dict[str, Any], list[Any]]:
    """The execution's row, and its steps' as (step id, status, attempts, input, output)."""
    execution, steps = await execution_rows(runtime, execution_id)
    keys = ("step_id", "status", "attempts", "input", "output")
    return execution, [tuple(step[k] for k in keys) for step in steps]


async def _job_data(runtime: Runtime, execution_id: uuid.UUID) -> dict[str, Any]:
    job = await ExecutionQueue(runtime).job(execution_id)
    assert job is not None
    return dict(job.data)


async def _learned(
    api: httpx.AsyncClient,
    runtime: Runtime,
    owner: Account,
    workflow_id: str,
    definitions: Definitions,
) -> None:
    """Claim one execution of the workflow, as a worker does, so `definitions` knows it (then
    end it and free its place in the fair scheduler, which admits the next ones)."""
    assert owner.org_id is not None
    first = uuid.UUID(await execute(api, owner, workflow_id, {"n": 1}))
    data = await _job_data(runtime, first)
    _, run = await state.claim(
        runtime.database, execution_id=first, org_id=owner.org_id, max_running=5
    )
    assert run is not None
    definitions.learn(data, run)
    await state.finish(runtime.database, run, ExecutionStatus.SUCCEEDED)
    await _free(runtime, owner, first)


async def _free(runtime: Runtime, owner: Account, execution_id: uuid.UUID) -> None:
    """Done with the queue: the session's scheduler admits only a few while no worker runs."""
    assert owner.org_id is not None
    await ExecutionQueue(runtime).remove(execution_id)
    await ExecutionQueue(runtime).finished(execution_id=execution_id, org_id=owner.org_id)


async def _unclaimed(
    api: httpx.AsyncClient,
    runtime: Runtime,
    owner: Account,
    workflow_id: str,
    definitions: Definitions,
    n: int,
    **changes: Any,
) -> tuple[uuid.UUID, Run, str]:
    """A new execution and the unclaimed run a worker knowing `definitions` makes of its job
    (the job's data with `changes`), with the definition's JSON text."""
    execution_id = uuid.UUID(await execute(api, owner, workflow_id, {"n": n}))
    data = {**await _job_data(runtime, execution_id), **changes}
    found = definitions.unclaimed_run(data)
    assert found is not None
    return execution_id, *found


async def _run_inline(runtime: Runtime, run: Run, definition_text: str) -> bool:
    templates = TemplateRenderer.from_settings(runtime.settings)

    async def progressed() -> None:
        return None

    try:
        engine = Engine(runtime, templates, run, on_progress=progressed)
        return await engine.run_inline(definition_text)
    finally:
        await templates.aclose()


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "aa": 2, "a": 3, "é": 4, "ab": {"yy": 1, "x": [{"d": 1, "c": 2}]}},
        [-0.0, 0.0, 1e22, 1e16, 1e15, 1e-07, 1.5, 1e300, -2.5e-10, 0.1, 2.0],
        [123456789012345678901234567890, -7, True, False, None, "1e22", 'ü\n\t"x'],
    ],
)
async def test_as_stored_is_the_value_postgresql_gives_back(
    queue_runtime: Runtime, value: Any
) -> None:
    """What a claim would read (jsonb's key order, its numbers): the input a template sees is
    the same inline and claimed, down to the order a loop goes through an object's keys."""
    async with queue_runtime.database.system_engine.connect() as conn:
        stored = (
            await conn.execute(text("select cast(:v as jsonb)::text"), {"v": json.dumps(value)})
        ).scalar_one()
    assert json.dumps(as_stored(value)) == json.dumps(json.loads(stored))


DEFINITIONS: list[tuple[dict[str, Any], bool]] = [
    ({"steps": [STEP]}, True),
    ({"steps": [{**STEP, "retry": {"max_attempts": 2}}], "max_parallel_steps": 2}, True),
    ({"steps": [STEP, {**STEP, "id": "u"}]}, False),
    ({"steps": [{**STEP, "type": "http"}]}, False),
    ({"steps": [{**STEP, "when": "{{ true }}"}]}, False),
    ({"steps": [{**STEP, "for_each": "{{ input.items }}"}]}, False),
    ({"steps": [STEP], "output": "{{ steps.t.output }}"}, False),
    ({"steps": [STEP], "deadline": "10s"}, False),
    ({"steps": [{**STEP, "args": {"value": "{{ secrets.TOKEN }}"}}]}, False),
    ({"steps": []}, False),
    ({"steps": "t"}, False),
]


@pytest.mark.parametrize(("definition", "expected"), DEFINITIONS)
async def test_the_api_and_the_worker_agree_on_which_definitions_are_inline(
    queue_runtime: Runtime, definition: dict[str, Any], expected: bool
) -> None:
    async with queue_runtime.database.system_engine.connect() as conn:
        told = (
            await conn.execute(
                text("select taskloom_inline_definition(cast(:d as jsonb))"),
                {"d": json.dumps(definition)},
            )
        ).scalar_one()
    assert inline_definition(definition) is expected
    assert told is expected


async def test_the_job_carries_a_small_input_of_an_inline_execution_only(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    inline_id = await create_workflow(api, owner, [STEP])
    chain_id = await create_workflow(api, owner, [STEP, {**STEP, "id": "u"}])
    small = uuid.UUID(await execute(api, owner, inline_id, {"n": 2}))
    padded = {"n": 2, "pad": "x" * INLINE_INPUT_BYTES}
    large = uuid.UUID(await execute(api, owner, inline_id, padded))
    chain = uuid.UUID(await execute(api, owner, chain_id, {"n": 2}))

    carried = await _job_data(queue_runtime, small)
    assert carried["input"] == {"n": 2}
    assert carried["workflow_id"] == inline_id
    assert carried["workflow_version"] == 1
    # An organization lately seen with a flood waiting: its inputs stay out of Redis.
    assert owner.org_id is not None
    queue_runtime.fair._note_queued(owner.org_id, INLINE_QUEUED_MOST)
    flooded = uuid.UUID(await execute(api, owner, inline_id, {"n": 2}))
    for plain in (large, chain, flooded):
        assert set(await _job_data(queue_runtime, plain)) <= {
            "execution_id",
            "org_id",
            "request_id",
            "trace",
        }
    for made in (small, large, chain, flooded):  # the scheduler admits the next ones
        await _free(queue_runtime, owner, made)
    # ... while another organization's inline executions still carry theirs.
    other = await register(api, label="inline-other", organization_name="Inline Other")
    theirs = await create_workflow(api, other, [STEP])
    carried_too = uuid.UUID(await execute(api, other, theirs, {"n": 3}))
    assert (await _job_data(queue_runtime, carried_too))["input"] == {"n": 3}
    await _free(queue_runtime, other, carried_too)


async def test_an_inline_run_commits_the_step_and_the_end_in_one_call(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflow_id = await create_workflow(api, owner, [STEP])
    definitions = Definitions()
    await _learned(api, queue_runtime, owner, workflow_id, definitions)
    execution_id, run, definition_text = await _unclaimed(
        api, queue_runtime, owner, workflow_id, definitions, 21
    )

    calls: list[str] = []
    call = driver.Statements._call

    async def counted(statements: Any, method: Any, query: str, args: Any) -> Any:
        calls.append(query.split("(")[0].removeprefix("select "))
        return await call(statements, method, query, args)

    monkeypatch.setattr(driver.Statements, "_call", counted)
    assert await _run_inline(queue_runtime, run, definition_text) is True
    assert calls == ["taskloom_run_inline"]

    execution, steps = await _rows(queue_runtime, execution_id)
    assert execution["status"] == "succeeded"
    assert execution["attempts"] == 1
    assert execution["output"] == 42  # a chain's last step's, as the claimed path writes it
    assert execution["started_at"] == execution["finished_at"]  # one transaction
    assert steps == [("t", "succeeded", 1, {"value": 42}, 42)]
    # The job's own data says nothing else: run again, it finds the execution finished.
    assert await _run_inline(queue_runtime, run, definition_text) is False
    assert (await _rows(queue_runtime, execution_id))[1] == steps
    await _free(queue_runtime, owner, execution_id)


async def test_an_inline_run_writes_nothing_unless_the_row_is_as_the_job_says(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    assert owner.org_id is not None
    workflow_id = await create_workflow(api, owner, [STEP])
    definitions = Definitions()
    await _learned(api, queue_runtime, owner, workflow_id, definitions)
    stranger = await register(api, label="inline-stranger", organization_name="Inline Stranger")

    async def unclaimed(**changes: Any) -> tuple[uuid.UUID, Run, str]:
        return await _unclaimed(api, queue_runtime, owner, workflow_id, definitions, 5, **changes)

    async def untouched(execution_id: uuid.UUID, status: str = "queued") -> None:
        execution, steps = await _rows(queue_runtime, execution_id)
        assert (execution["status"], steps) == (status, [])
        await _free(queue_runtime, owner, execution_id)

    # Another input than the row's (a job's data changed in Redis): the row's input rules.
    execution_id, run, definition_text = await unclaimed(input={"n": 6})
    assert await _run_inline(queue_runtime, run, definition_text) is False
    assert (await _rows(queue_runtime, execution_id))[0]["attempts"] == 0
    await untouched(execution_id)

    # Another definition than the row's.
    execution_id, run, _ = await unclaimed()
    changed = json.dumps({"steps": [{**STEP, "args": {"value": 7}}]})
    assert await _run_inline(queue_runtime, run, changed) is False
    await untouched(execution_id)

    # Another organization's tenant: its worker knows no definition of this workflow, and
    # row-level security hides the row from a call made in its name anyway.
    execution_id, run, definition_text = await unclaimed()
    data = {**await _job_data(queue_runtime, execution_id), "org_id": str(stranger.org_id)}
    assert definitions.unclaimed_run(data) is None
    assert stranger.org_id is not None
    theirs = dataclasses.replace(run, org_id=stranger.org_id)
    assert await _run_inline(queue_runtime, theirs, definition_text) is False
    await untouched(execution_id)

    # Claimed meanwhile by another worker: it is that worker's to run.
    execution_id, run, definition_text = await unclaimed()
    await state.claim(
        queue_runtime.database, execution_id=execution_id, org_id=owner.org_id, max_running=5
    )
    assert await _run_inline(queue_runtime, run, definition_text) is False
    await untouched(execution_id, "running")
    await state.finish(queue_runtime.database, run, ExecutionStatus.CANCELLED)

    # Cancelled before a worker took it.
    execution_id, run, definition_text = await unclaimed()
    cancelled = await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
    assert cancelled.status_code in (200, 202), cancelled.text
    assert await _run_inline(queue_runtime, run, definition_text) is False
    await untouched(execution_id, "cancelled")


async def test_a_step_that_fails_inline_writes_nothing(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """The usual path records the failure (its start, the error, the retries): inline only ever
    commits a success."""
    failing = {**STEP, "args": {"value": "{{ input.n.missing.deeper }}"}}
    workflow_id = await create_workflow(api, owner, [failing])
    definitions = Definitions()
    await _learned(api, queue_runtime, owner, workflow_id, definitions)
    execution_id, run, definition_text = await _unclaimed(
        api, queue_runtime, owner, workflow_id, definitions, 5
    )
    assert await _run_inline(queue_runtime, run, definition_text) is False
    execution, steps = await _rows(queue_runtime, execution_id)
    assert (execution["status"], execution["attempts"], steps) == ("queued", 0, [])
    await _free(queue_runtime, owner, execution_id)


async def test_a_worker_runs_a_known_version_inline_and_the_input_leaves_redis(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    start_worker: StartWorker,
) -> None:
    """The first execution of a version is claimed (the worker learns the definition), the
    next run inline; both end alike, and neither job nor input stays in Redis."""
    needle = f"inline-needle-{uuid.uuid4().hex[:8]}"
    step = {"id": "t", "type": "transform", "args": {"value": "{{ input.word ~ '!' }}"}}
    workflow_id = await create_workflow(api, owner, [step])
    start_worker()
    ends = []
    for _ in range(2):
        execution_id = await execute(api, owner, workflow_id, {"word": needle})
        body = await wait_for_status(api, owner, execution_id)
        assert body["status"] == "succeeded", body
        execution, steps = await _rows(queue_runtime, uuid.UUID(execution_id))
        assert steps == [("t", "succeeded", 1, {"value": f"{needle}!"}, f"{needle}!")]
        assert execution["output"] == f"{needle}!"
        assert execution["attempts"] == 1
        ends.append(execution["started_at"] == execution["finished_at"])
        assert await ExecutionQueue(queue_runtime).state(uuid.UUID(execution_id)) == "unknown"
    assert ends == [False, True]  # claimed, then inline (one transaction)
    assert await scan_redis(queue_runtime, [needle]) == []


def test_a_worker_remembers_inline_definitions_only_and_a_bounded_number() -> None:
    definitions = Definitions(kept=2)
    org = str(uuid.uuid4())

    def data(workflow: int, version: int = 1, **extra: Any) -> dict[str, Any]:
        return {
            "execution_id": str(uuid.uuid4()),
            "org_id": org,
            "workflow_id": f"00000000-0000-0000-0000-{workflow:012d}",
            "workflow_version": version,
            "input": {"n": 1},
            **extra,
        }

    def claimed(definition: dict[str, Any]) -> Run:
        return Run(
            execution_id=uuid.uuid4(), org_id=uuid.UUID(org), definition=definition, input={}
        )

    definitions.learn(data(1), claimed({"steps": [STEP]}))
    definitions.learn(data(2), claimed({"steps": [STEP, {**STEP, "id": "u"}]}))  # not inline
    assert definitions.unclaimed_run(data(1)) is not None
    assert definitions.unclaimed_run(data(1, version=2)) is None  # another version
    assert definitions.unclaimed_run(data(2)) is None
    assert definitions.unclaimed_run({**data(1), "input": None}) is None  # no input carried
    # An input nested deeper than the walk to jsonb's form goes: the usual path reads it.
    deep: Any = 1
    for _ in range(2_000):
        deep = [deep]
    assert definitions.unclaimed_run(data(1, input={"deep": deep})) is None

    definitions.learn(data(3), claimed({"steps": [STEP]}))
    definitions.learn(data(4), claimed({"steps": [STEP]}))  # the least recently used goes
    assert definitions.unclaimed_run(data(1)) is None
    assert definitions.unclaimed_run(data(3)) is not None
    assert definitions.unclaimed_run(data(4)) is not None
