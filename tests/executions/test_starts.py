"""What every start goes through (POST /api/workflows/{id}/execute here; schedules and triggers
reuse it): the Idempotency-Key, a disabled workflow, the definition's input_schema."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import func, select, text

from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import IdempotencyKey, WorkflowExecution
from taskloom.runtime import Runtime
from tests.cli_support import deployment_env, serve_api
from tests.factories import Account, add_member, register
from tests.servers import free_port
from tests.workers import create_workflow

STEPS = [{"id": "echo", "type": "transform", "args": {"value": "{{ input }}"}}]


async def _execute(
    api: httpx.AsyncClient, account: Account, workflow_id: str, input: Any, key: str | None
) -> httpx.Response:
    headers = dict(account.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": input}, headers=headers
    )


async def _executions_of(runtime: Runtime, workflow_id: str) -> int:
    async with system_transaction(runtime.database) as db:
        count = await db.scalar(
            select(func.count())
            .select_from(WorkflowExecution)
            .where(WorkflowExecution.workflow_id == uuid.UUID(workflow_id))
        )
    return int(count or 0)


async def test_the_same_idempotency_key_answers_with_the_first_execution(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)

    first = await _execute(api, owner, workflow_id, {"n": 1}, "order-42")
    again = await _execute(api, owner, workflow_id, {"n": 1}, "order-42")
    other_key = await _execute(api, owner, workflow_id, {"n": 1}, "order-43")
    no_key = await _execute(api, owner, workflow_id, {"n": 1}, None)

    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert again.headers["location"] == f"/api/executions/{first.json()['execution_id']}"
    assert other_key.status_code == 202
    assert other_key.json()["execution_id"] != first.json()["execution_id"]
    assert no_key.status_code == 202
    assert await _executions_of(queue_runtime, workflow_id) == 3


async def test_the_same_key_with_another_input_is_refused(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    assert (await _execute(api, owner, workflow_id, {"n": 1}, "k-1")).status_code == 202

    reused = await _execute(api, owner, workflow_id, {"n": 2}, "k-1")

    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert await _executions_of(queue_runtime, workflow_id) == 1
    # Keys are per workflow: another workflow may use the same one.
    other = await create_workflow(api, owner, STEPS, name="other")
    assert (await _execute(api, owner, other, {"n": 2}, "k-1")).status_code == 202


async def test_concurrent_starts_with_one_key_get_one_execution(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)

    answers = await asyncio.gather(
        *(_execute(api, owner, workflow_id, {"n": 7}, "burst") for _ in range(12))
    )

    assert sorted(a.status_code for a in answers) == [200] * 11 + [202], [a.text for a in answers]
    assert len({a.json()["execution_id"] for a in answers}) == 1
    assert await _executions_of(queue_runtime, workflow_id) == 1


async def test_the_key_lives_in_postgresql_and_expires_after_the_ttl(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    first = (await _execute(api, owner, workflow_id, {}, "flush-proof")).json()["execution_id"]

    redis = Redis.from_url(str(queue_runtime.settings.redis_url))
    try:
        await redis.flushdb()  # nothing about the key is in Redis
    finally:
        await redis.aclose()
    replay = await _execute(api, owner, workflow_id, {}, "flush-proof")
    assert replay.status_code == 200
    assert replay.json()["execution_id"] == first

    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            text(
                "update idempotency_keys set created_at = now() - interval '25 hours' "
                "where workflow_id = :w"
            ),
            {"w": workflow_id},
        )
    later = await _execute(api, owner, workflow_id, {"changed": True}, "flush-proof")
    assert later.status_code == 202, later.text
    assert later.json()["execution_id"] != first
    async with system_transaction(queue_runtime.database) as db:
        [key] = (
            await db.execute(
                select(IdempotencyKey).where(IdempotencyKey.workflow_id == uuid.UUID(workflow_id))
            )
        ).scalars()
    assert str(key.execution_id) == later.json()["execution_id"]


async def test_a_bad_idempotency_key_is_a_clear_422(api: httpx.AsyncClient, owner: Account) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    for bad in ("", "x" * 256, "with space"):
        answer = await _execute(api, owner, workflow_id, {}, bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"]["code"] == "validation_failed"


async def test_a_disabled_workflow_refuses_starts_until_enabled(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    member = await add_member(api, owner, "member")
    viewer = await add_member(api, owner, "viewer")

    denied = await api.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=viewer.headers
    )
    assert denied.status_code == 403
    disabled = await api.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=member.headers
    )
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["enabled"] is False
    assert disabled.json()["version"] == 1  # no new version

    refused = await _execute(api, owner, workflow_id, {}, None)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "workflow_disabled"
    # A PUT without `enabled` leaves it disabled; one with it may enable it.
    kept = await api.put(
        f"/api/workflows/{workflow_id}",
        json={"name": "wf", "definition": {"steps": STEPS}},
        headers=owner.headers,
    )
    assert kept.json()["enabled"] is False
    enabled = await api.put(
        f"/api/workflows/{workflow_id}",
        json={"name": "wf", "definition": {"steps": STEPS}, "enabled": True},
        headers=owner.headers,
    )
    assert enabled.json()["enabled"] is True
    assert (await _execute(api, owner, workflow_id, {}, None)).status_code == 202

    audit = await api.get("/api/audit-logs?action=workflow.update&scope=org", headers=owner.headers)
    details = [entry["details"] for entry in audit.json()["items"]]
    assert {"enabled": False} in details


INPUT_SCHEMA = {
    "type": "object",
    "required": ["email", "items"],
    "properties": {
        "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
        "items": {"type": "array", "items": {"type": "integer", "minimum": 1}},
    },
    "additionalProperties": False,
}


async def test_input_not_matching_the_input_schema_is_refused_with_every_path(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS, input_schema=INPUT_SCHEMA)

    refused = await _execute(
        api, owner, workflow_id, {"email": "nobody", "items": [1, 0, "x"], "extra": 1}, None
    )

    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "input_invalid"
    paths = sorted(".".join(e["loc"]) for e in error["details"]["errors"])
    assert paths == ["input", "input.email", "input.items.1", "input.items.2"], paths
    assert await _executions_of(queue_runtime, workflow_id) == 0
    accepted = await _execute(api, owner, workflow_id, {"email": "a@b.c", "items": [2]}, None)
    assert accepted.status_code == 202, accepted.text


async def test_an_invalid_input_schema_is_refused_at_save(
    api: httpx.AsyncClient, owner: Account
) -> None:
    for schema, words in (
        ({"type": "no-such-type"}, "not a valid JSON Schema"),
        ({"properties": {"a": {"minimum": "one"}}}, "not a valid JSON Schema at properties.a"),
    ):
        answer = await api.post(
            "/api/workflows",
            json={"name": "bad", "definition": {"steps": STEPS, "input_schema": schema}},
            headers=owner.headers,
        )
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"]
        assert message.startswith("body.definition.input_schema: "), message
        assert words in message


async def test_the_housekeeping_deletes_expired_keys_only(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    from taskloom.executions.retention import purge_expired_keys

    workflow_id = await create_workflow(api, owner, STEPS)
    for key in ("old-1", "old-2", "fresh"):
        assert (await _execute(api, owner, workflow_id, {}, key)).status_code == 202
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            text(
                "update idempotency_keys set created_at = now() - interval '25 hours' "
                "where workflow_id = :w and key like 'api:old-%'"
            ),
            {"w": workflow_id},
        )

    assert await purge_expired_keys(queue_runtime) >= 2

    async with system_transaction(queue_runtime.database) as db:
        left = (
            await db.execute(
                select(IdempotencyKey.key).where(
                    IdempotencyKey.workflow_id == uuid.UUID(workflow_id)
                )
            )
        ).scalars()
        assert list(left) == ["api:fresh"]
    assert await _executions_of(queue_runtime, workflow_id) == 3  # executions stay


async def test_two_api_processes_racing_on_one_key_make_one_execution(
    settings: Settings, client: httpx.AsyncClient, runtime: Runtime, tmp_path: Path
) -> None:
    """The key is arbitrated by PostgreSQL's unique index, not by a process: starts with one
    key spread over two `taskloom api` processes still make one execution."""
    owner = await register(client, label="keys", organization_name="Keys Org")
    workflow_id = await create_workflow(client, owner, STEPS)
    env = deployment_env(settings, JWT_SECRET=settings.jwt_secret.get_secret_value())
    ports = [free_port(), free_port()]
    servers = [serve_api(env, port, tmp_path / f"api-{port}.log") for port in ports]
    try:
        async with httpx.AsyncClient(timeout=20) as http:

            async def start(n: int) -> httpx.Response:
                url = f"http://127.0.0.1:{ports[n % 2]}/api/workflows/{workflow_id}/execute"
                headers = {**owner.headers, "Idempotency-Key": "two-processes"}
                return await http.post(url, json={"input": {"n": 1}}, headers=headers)

            answers = await asyncio.gather(*(start(n) for n in range(16)))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=15)
    assert sorted(a.status_code for a in answers) == [200] * 15 + [202], [a.text for a in answers]
    assert len({a.json()["execution_id"] for a in answers}) == 1
    assert await _executions_of(runtime, workflow_id) == 1
