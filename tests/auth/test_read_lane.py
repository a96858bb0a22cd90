"""auth/read_lane.py: the usual list request is answered without FastAPI's machinery, and every
answer is the route's own. Each request goes to the app (lane in front) and to the same app
without the lane (the route alone), on one runtime, and the two answers are compared; whether
the lane answered or handed the request on is seen at the ASGI app behind it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from taskloom.app import create_app
from taskloom.auth.read_lane import ReadLane
from taskloom.db.tenancy import system_transaction
from taskloom.observability.metrics import HTTP_REQUESTS
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.in_process import asgi_client
from tests.workers import create_workflow

STEPS = [{"id": "a", "type": "transform", "args": {"value": "{{ input.n }}"}}]


@asynccontextmanager
async def _app(runtime: Runtime, *, lane: bool) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(runtime=runtime)
    if not lane:
        application.user_middleware = [
            m for m in application.user_middleware if m.cls is not ReadLane
        ]
    async with (
        application.router.lifespan_context(application),
        asgi_client(application, ip="203.0.113.9") as client,
    ):
        yield application, client


class _Behind:
    """The ASGI app behind the lane, counting the requests handed on to it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
async def lane_app(runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, _Behind]]:
    async with _app(runtime, lane=True) as (application, client):
        assert (await client.get("/health/live")).status_code == 200  # builds the stack
        layer: Any = application.middleware_stack
        while not isinstance(layer, ReadLane):
            layer = layer.app
        behind = _Behind(layer.app)
        layer.app = behind
        yield client, behind


@pytest.fixture
async def route(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with _app(runtime, lane=False) as (_, client):
        yield client


async def _seeded(client: httpx.AsyncClient, runtime: Runtime, label: str) -> Account:
    """An owner with three workflows and five finished executions."""
    owner = await register(client, label=label, organization_name=f"{label} org")
    for name in ("b", "a", "c"):
        await create_workflow(client, owner, STEPS, name=f"{label}-{name}")
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version,"
                " definition, status, input, output, attempts, created_at, finished_at) "
                "select gen_random_uuid(), w.org_id, w.id, w.version, w.definition, 'succeeded',"
                " jsonb_build_object('n', g), jsonb_build_object('a', g), 1,"
                " now() - g * interval '1 minute', now() - g * interval '1 minute' "
                "from generate_series(1, 5) g, workflows w "
                "where w.org_id = :org and w.name = :name"
            ),
            {"org": owner.org_id, "name": f"{label}-a"},
        )
    return owner


def _answer(response: httpx.Response) -> tuple[int, Any, str]:
    """Status, body and media type; the request id (each answer's own) left out of errors."""
    body = response.json()
    if isinstance(body, dict) and "error" in body:
        body["error"].pop("request_id", None)
    return response.status_code, body, response.headers["content-type"]


async def test_the_lane_answers_the_usual_lists_as_the_route_does(
    lane_app: tuple[httpx.AsyncClient, _Behind], route: httpx.AsyncClient, runtime: Runtime
) -> None:
    client, behind = lane_app
    owner = await _seeded(client, runtime, "lane")
    first = await client.get("/api/executions?limit=2", headers=owner.headers)
    cursor = first.json()["next_cursor"]
    assert cursor
    paths = [
        "/api/workflows",
        "/api/executions",
        "/api/executions?limit=2",
        f"/api/executions?limit=2&cursor={cursor}",
        f"/api/executions?cursor={cursor}",
    ]
    for path in paths:
        before = behind.calls
        ours = await client.get(path, headers=owner.headers)
        assert behind.calls == before, f"{path} was handed to the route"
        theirs = await route.get(path, headers=owner.headers)
        assert _answer(ours) == _answer(theirs), path
        assert ours.headers["x-request-id"]
        assert ours.headers["ratelimit-policy"] == theirs.headers["ratelimit-policy"]
    listed = (await client.get("/api/workflows", headers=owner.headers)).json()
    assert [w["name"] for w in listed] == ["lane-a", "lane-b", "lane-c"]
    page = await client.get(f"/api/executions?limit=2&cursor={cursor}", headers=owner.headers)
    assert [e["input"]["n"] for e in page.json()["items"]] == [3, 4]


async def test_what_the_lane_does_not_take_goes_to_the_route(
    lane_app: tuple[httpx.AsyncClient, _Behind], route: httpx.AsyncClient, runtime: Runtime
) -> None:
    client, behind = lane_app
    owner = await _seeded(client, runtime, "handed")
    auth = owner.headers["Authorization"]
    requests: list[tuple[str, list[tuple[str, str]]]] = [
        ("/api/executions?status=succeeded", [("authorization", auth)]),
        ("/api/executions?limit=0", [("authorization", auth)]),
        ("/api/executions?limit=201", [("authorization", auth)]),
        ("/api/executions?limit=abc", [("authorization", auth)]),
        ("/api/executions?limit=%2B5", [("authorization", auth)]),
        ("/api/executions?limit=2&limit=3", [("authorization", auth)]),
        ("/api/executions?since=2000-01-01T00:00:00Z", [("authorization", auth)]),
        ("/api/workflows?name=x", [("authorization", auth)]),
        ("/api/workflows", []),
        ("/api/workflows", [("authorization", "Basic abc")]),
        ("/api/workflows", [("authorization", auth), ("authorization", "Bearer other")]),
    ]
    for path, headers in requests:
        before = behind.calls
        ours = await client.get(path, headers=headers)
        assert behind.calls == before + 1, f"{path} {headers} was answered by the lane"
        theirs = await route.get(path, headers=headers)
        assert _answer(ours) == _answer(theirs), (path, headers)
    statuses = {
        path: (await client.get(path, headers={"authorization": auth})).status_code
        for path in ("/api/executions?limit=0", "/api/executions?status=succeeded")
    }
    assert statuses == {"/api/executions?limit=0": 422, "/api/executions?status=succeeded": 200}


async def test_refusals_in_the_lane_are_the_routes(
    lane_app: tuple[httpx.AsyncClient, _Behind], route: httpx.AsyncClient, runtime: Runtime
) -> None:
    client, behind = lane_app
    owner = await _seeded(client, runtime, "refused")
    cases = [
        ("/api/workflows", {"Authorization": "Bearer not-a-token"}, 401),
        ("/api/workflows", {"Authorization": "Bearer tlk_nope_nope"}, 401),
        ("/api/executions?cursor=%25%25bad", owner.headers, 400),
    ]
    for path, headers, status in cases:
        before = behind.calls
        ours = await client.get(path, headers=headers)
        assert behind.calls == before  # the lane took it, and refused it as the route does
        theirs = await route.get(path, headers=headers)
        assert ours.status_code == status
        assert _answer(ours) == _answer(theirs)


async def test_each_organization_sees_its_own_and_every_role_may_read(
    lane_app: tuple[httpx.AsyncClient, _Behind], runtime: Runtime
) -> None:
    client, _ = lane_app
    first = await _seeded(client, runtime, "first")
    second = await _seeded(client, runtime, "second")
    viewer = await add_member(client, first, "viewer")
    names = {
        who: [w["name"] for w in (await client.get("/api/workflows", headers=a.headers)).json()]
        for who, a in (("first", first), ("second", second), ("viewer", viewer))
    }
    assert names == {
        "first": ["first-a", "first-b", "first-c"],
        "second": ["second-a", "second-b", "second-c"],
        "viewer": ["first-a", "first-b", "first-c"],
    }
    executions = (await client.get("/api/executions", headers=second.headers)).json()["items"]
    own = {
        uuid.UUID(w["id"])
        for w in (await client.get("/api/workflows", headers=second.headers)).json()
    }
    assert len(executions) == 5
    assert {uuid.UUID(e["workflow_id"]) for e in executions} <= own


async def test_a_lane_request_is_counted_once_and_measured_under_its_route(
    runtime: Runtime,
) -> None:
    settings = runtime.settings.model_copy(
        update={"rate_limit_window_seconds": 3600, "rate_limit_reads": 4}
    )
    async with _app(dataclasses.replace(runtime, settings=settings), lane=True) as (_, client):
        owner = await _seeded(client, runtime, "counted")
        served = HTTP_REQUESTS.labels("GET", "/api/workflows", "200")
        before = served._value.get()
        answers = [await client.get("/api/workflows", headers=owner.headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    assert served._value.get() == before + 4
    remaining = [a.headers["ratelimit"].split(";r=")[1].split(";")[0] for a in answers]
    assert remaining == ["3", "2", "1", "0", "0"]
    assert answers[4].json()["error"]["code"] == "rate_limited"
    assert "retry-after" in answers[4].headers
