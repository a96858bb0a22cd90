"""executions/lane.py: the usual `POST …/execute` is answered without FastAPI's machinery, and
every answer is the route's own. Each request goes to the app (lane in front) and to the same
app without the lane (the route alone), on one runtime, and the two answers are compared."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select, text

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.executions.lane import ExecuteLane, Starts, _Waiting
from taskloom.executions.models import WorkflowExecution
from taskloom.executions.service import Origin, Start
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.workers import create_workflow

# No worker runs here: executions left queued are withdrawn after each test.
pytestmark = pytest.mark.usefixtures("withdrawn_after")

STEPS = [{"id": "echo", "type": "transform", "args": {"value": "{{ input }}"}}]
SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


@asynccontextmanager
async def _route_alone(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(runtime=runtime)
    application.user_middleware = [
        m for m in application.user_middleware if m.cls is not ExecuteLane
    ]
    async with (
        application.router.lifespan_context(application),
        asgi_client(application, ip="203.0.113.8") as client,
    ):
        yield client


@pytest.fixture
async def route(queue_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with _route_alone(queue_runtime) as client:
        yield client


@contextmanager
def _transactions(runtime: Runtime) -> Iterator[list[object]]:
    """SQLAlchemy transactions begun on the application engine meanwhile."""
    begun: list[object] = []

    def began(connection: object) -> None:
        begun.append(connection)

    engine = runtime.database.app_engine.sync_engine
    event.listen(engine, "begin", began)
    try:
        yield begun
    finally:
        event.remove(engine, "begin", began)


def _shape(response: httpx.Response) -> dict[str, Any]:
    """What must be the same whichever answered: status, error code and message (or the
    accepted body's shape), and the headers a client reads."""
    body = response.json()
    shape: dict[str, Any] = {"status": response.status_code}
    if "error" in body:
        error = dict(body["error"])
        assert error.pop("request_id") == response.headers["x-request-id"]
        shape["error"] = error
    else:
        assert set(body) == {"execution_id", "status"}
        assert response.headers["location"] == f"/api/executions/{body['execution_id']}"
        shape["accepted"] = body["status"]
    shape["headers"] = {
        name: response.headers.get(name) is not None
        for name in ("ratelimit", "ratelimit-policy", "retry-after", "location")
    }
    shape["content-type"] = response.headers["content-type"]
    return shape


Send = Callable[[httpx.AsyncClient], Any]


async def _both(lane: httpx.AsyncClient, route: httpx.AsyncClient, send: Send) -> dict[str, Any]:
    by_lane, by_route = _shape(await send(lane)), _shape(await send(route))
    assert by_lane == by_route
    return by_lane


async def test_every_answer_is_the_routes_own(
    api: httpx.AsyncClient, route: httpx.AsyncClient, owner: Account
) -> None:
    workflow = await create_workflow(api, owner, STEPS)
    schema = await create_workflow(api, owner, STEPS, name="schema", input_schema=SCHEMA)
    disabled = await create_workflow(api, owner, STEPS, name="off")
    off = await api.patch(
        f"/api/workflows/{disabled}", json={"enabled": False}, headers=owner.headers
    )
    assert off.status_code == 200, off.text
    viewer = await add_member(api, owner, "viewer")
    auth = owner.headers

    def post(workflow_id: str, headers: dict[str, str] | None = None, **kw: Any) -> Send:
        path = f"/api/workflows/{workflow_id}/execute"
        return lambda client: client.post(path, headers=auth if headers is None else headers, **kw)

    cases: list[tuple[Send, int, str | None]] = [
        (post(workflow, json={"input": {"n": 1}}), 202, None),
        (post(workflow), 202, None),  # no body: no input
        (post(workflow, json={}), 202, None),
        (post(schema, json={"input": {"n": 2}}), 202, None),
        (post(schema, json={"input": {"n": "two"}}), 422, "input_invalid"),
        (post(disabled, json={"input": {}}), 409, "workflow_disabled"),
        (post(str(uuid.uuid4()), json={"input": {}}), 404, "not_found"),
        (post(workflow, headers=viewer.headers, json={"input": {}}), 403, "forbidden"),
        (post(workflow, headers={"Authorization": "Bearer nope"}, json={}), 401, "invalid_token"),
        (post(workflow, headers={}, json={}), 401, "unauthorized"),
        # Not the usual request: the lane hands these to the route untouched.
        (post(workflow, json={"input": {}, "extra": 1}), 422, "validation_failed"),
        (post(workflow, json={"input": [1]}), 422, "validation_failed"),
        (post(workflow, content=b"{nope", headers={**auth, "Content-Type": "application/json"}),
         400, "malformed_json"),
        (post("not-a-uuid", json={}), 422, "validation_failed"),
    ]  # fmt: skip
    for send, status, code in cases:
        shape = await _both(api, route, send)
        assert shape["status"] == status, shape
        assert shape.get("error", {}).get("code") == code, shape


async def test_two_authorization_headers_are_read_as_the_route_reads_them(
    api: httpx.AsyncClient, route: httpx.AsyncClient, owner: Account
) -> None:
    """The first counts (Starlette's rule): the owner's token first, a viewer's second, is a
    start; the other way round, a refusal. The lane hands such requests to the route."""
    workflow = await create_workflow(api, owner, STEPS)
    viewer = await add_member(api, owner, "viewer")
    path = f"/api/workflows/{workflow}/execute"
    for first, second, status in ((owner, viewer, 202), (viewer, owner, 403)):
        headers = [
            ("Authorization", first.headers["Authorization"]),
            ("Authorization", second.headers["Authorization"]),
        ]
        shape = await _both(api, route, lambda c, h=headers: c.post(path, headers=h, json={}))
        assert shape["status"] == status, shape


async def test_the_usual_start_opens_no_transaction_and_writes_the_same_row(
    api: httpx.AsyncClient, route: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow = await create_workflow(api, owner, STEPS)
    path = f"/api/workflows/{workflow}/execute"
    warm = await api.post(path, json={"input": {}}, headers=owner.headers)  # principal cached
    assert warm.status_code == 202, warm.text

    with _transactions(queue_runtime) as begun:
        by_lane = await api.post(path, json={"input": {"n": 1}}, headers=owner.headers)
    assert by_lane.status_code == 202, by_lane.text
    assert begun == []  # one autocommit call of taskloom_start, no ORM transaction
    with _transactions(queue_runtime) as begun:
        by_route = await route.post(path, json={"input": {"n": 1}}, headers=owner.headers)
    assert by_route.status_code == 202, by_route.text
    assert len(begun) == 1

    rows = {}
    async with system_transaction(queue_runtime.database) as db:
        for name, response in (("lane", by_lane), ("route", by_route)):
            rows[name] = await db.scalar(
                select(WorkflowExecution).where(
                    WorkflowExecution.id == uuid.UUID(response.json()["execution_id"])
                )
            )
    lane_row, route_row = rows["lane"], rows["route"]
    assert lane_row is not None
    assert route_row is not None
    for row, response in ((lane_row, by_lane), (route_row, by_route)):
        assert row.request_id == response.headers["x-request-id"]
        assert row.org_id == owner.org_id
        assert row.triggered_by == owner.user_id
        assert row.input == {"n": 1}
        assert row.trigger_kind == "api"
        assert row.workflow_version == 1
        assert row.definition["steps"] == STEPS


async def test_an_idempotent_retry_goes_to_the_route(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow = await create_workflow(api, owner, STEPS)
    headers = {**owner.headers, "Idempotency-Key": "lane-key"}
    path = f"/api/workflows/{workflow}/execute"

    first = await api.post(path, json={"input": {"n": 1}}, headers=headers)
    again = await api.post(path, json={"input": {"n": 1}}, headers=headers)

    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json()["execution_id"] == first.json()["execution_id"]


def _remaining(response: httpx.Response) -> int:
    """`r` of the RateLimit field (`"execute";r=…;t=…`)."""
    return int(response.headers["ratelimit"].split(";r=")[1].split(";")[0])


async def test_a_request_is_counted_once_whether_the_lane_or_the_route_answers(
    api: httpx.AsyncClient, owner: Account, queue_settings: Settings
) -> None:
    workflow = await create_workflow(api, owner, STEPS)
    path = f"/api/workflows/{workflow}/execute"
    usual = {"json": {"input": {}}}
    handed_on = {"json": {"input": {}, "extra": 1}}  # the lane reads it, then the route answers

    # Ten an hour: none comes back during the test.
    limited = queue_settings.model_copy(
        update={"rate_limit_execute": 10, "rate_limit_window_seconds": 3600}
    )
    async with (
        opened_runtime(limited) as runtime,
        running_app(runtime) as app,
        asgi_client(app, ip="203.0.113.8") as client,
    ):
        answers = [
            await client.post(path, headers=owner.headers, **kw)  # type: ignore[arg-type]
            for kw in (usual, handed_on, usual, handed_on, usual)
        ]

    assert [a.status_code for a in answers] == [202, 422, 202, 422, 202]
    remaining = [_remaining(a) for a in answers]
    assert remaining == list(range(remaining[0], remaining[0] - 5, -1))


async def test_starts_arriving_together_go_in_one_call_each_under_its_own_tenant(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """Grouped starts share a transaction, never a tenant: another organization's workflow is
    not found even right after a start of that organization in the same call, and each refusal
    stays its own request's."""
    other = await register(api, label="other", organization_name="Other Org")
    plain = await create_workflow(api, owner, STEPS)
    schema = await create_workflow(api, owner, STEPS, name="schema", input_schema=SCHEMA)
    theirs = await create_workflow(api, other, STEPS, name="theirs")
    expected: list[tuple[Account, str, dict[str, Any], int]] = []
    for i in range(6):
        expected += [
            (owner, plain, {"i": i}, 202),
            (other, plain, {"i": i}, 404),  # the owner's workflow, asked by the other org
            (other, theirs, {"i": i}, 202),
            (owner, schema, {"n": "bad"}, 422),
            (owner, schema, {"n": i}, 202),
        ]
    checkouts: list[object] = []

    def checkout(*_: object) -> None:
        checkouts.append(_)

    pool = queue_runtime.database.app_engine.sync_engine.pool
    event.listen(pool, "checkout", checkout)
    try:
        answers = await asyncio.gather(
            *(
                api.post(
                    f"/api/workflows/{workflow}/execute",
                    json={"input": input},
                    headers=account.headers,
                )
                for account, workflow, input, _ in expected
            )
        )
    finally:
        event.remove(pool, "checkout", checkout)

    assert [a.status_code for a in answers] == [status for *_, status in expected]
    assert len(checkouts) < len(expected) / 2  # grouped: far fewer calls than starts
    made = [
        (account, input, uuid.UUID(answer.json()["execution_id"]))
        for (account, _, input, _), answer in zip(expected, answers, strict=True)
        if answer.status_code == 202
    ]
    async with system_transaction(queue_runtime.database) as db:
        rows = {
            row.id: row
            for row in await db.scalars(
                select(WorkflowExecution).where(WorkflowExecution.id.in_([m[2] for m in made]))
            )
        }
    for account, input, execution_id in made:
        assert rows[execution_id].org_id == account.org_id
        assert rows[execution_id].input == input


async def test_a_group_is_bounded_in_starts_and_in_bytes() -> None:
    """An organization sending large inputs shares a group with few others."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    kib = 1024

    def waiting(size: int) -> _Waiting:
        start = Start(workflow_id=uuid.uuid4(), input={}, max_queued=None, origin=Origin())
        return _Waiting(uuid.uuid4(), start, {}, size, loop.create_future())

    sizes = [100 * kib, 100 * kib, 100 * kib, 1, 1, 300 * kib, *([1] * 70)]
    starts._waiting = [waiting(size) for size in sizes]
    groups = []
    while starts._waiting:
        groups.append([w.size for w in starts._next_group()])

    assert groups == [
        [100 * kib, 100 * kib],  # a third would pass 256 KiB
        [100 * kib, 1, 1],
        [300 * kib],  # larger than a group: alone
        [1] * Starts.MOST,
        [1] * 6,
    ]


async def test_a_start_the_database_refuses_fails_alone_in_its_group(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """The group's call fails as a whole; its starts are then made one by one, so only the
    refused one answers 500."""
    workflow = await create_workflow(api, owner, STEPS)
    async with queue_runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text(
                "create function refuse_me_for_a_test() returns trigger language plpgsql as $$ "
                "begin if new.input ? 'refuse_me' then raise exception 'refused by a test'; end if;"
                " return new; end $$"
            )
        )
        await conn.execute(
            text(
                "create trigger refuse_me before insert on workflow_executions for each row "
                "execute function refuse_me_for_a_test()"
            )
        )
    try:
        inputs = [{"i": i} for i in range(5)] + [{"refuse_me": True}] + [{"i": 5}]
        answers = await asyncio.gather(
            *(
                api.post(
                    f"/api/workflows/{workflow}/execute",
                    json={"input": input},
                    headers=owner.headers,
                )
                for input in inputs
            )
        )
    finally:
        async with queue_runtime.database.system_engine.begin() as conn:
            await conn.execute(text("drop trigger refuse_me on workflow_executions"))
            await conn.execute(text("drop function refuse_me_for_a_test()"))

    assert [a.status_code for a in answers] == [202] * 5 + [500] + [202]
    assert answers[5].json()["error"]["code"] == "internal_error"
    async with system_transaction(queue_runtime.database) as db:
        stored = await db.scalars(
            select(WorkflowExecution.input).where(
                WorkflowExecution.workflow_id == uuid.UUID(workflow)
            )
        )
        assert sorted(s["i"] for s in stored) == list(range(6))
