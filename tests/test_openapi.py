"""The OpenAPI document as API clients use it: operationIds stable and readable (generated
clients name their methods after them) and the bearer security scheme on every operation that
authenticates, so /docs has a working Authorize button."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, make_superuser, register

PINNED = Path(__file__).with_name("operation_ids.txt")


def _operations(app: FastAPI) -> list[tuple[str, str, dict[str, object]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
    ]


def test_operation_ids_are_readable_unique_and_pinned(app: FastAPI) -> None:
    ids = [str(op["operationId"]) for _, _, op in _operations(app)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", i) for i in ids), ids
    current = sorted(f"{op['operationId']} {m} {p}" for m, p, op in _operations(app))
    pinned = sorted(line for line in PINNED.read_text().splitlines() if line.strip())
    assert current == pinned, (
        "operationIds changed: generated clients would rename their methods. If intended, "
        f"update {PINNED.name}.\n+ {sorted(set(current) - set(pinned))}\n"
        f"- {sorted(set(pinned) - set(current))}"
    )
    assert {"workflows_list", "workflows_execute", "executions_get", "executions_cancel"} <= set(
        ids
    )


def test_every_authenticated_operation_declares_the_bearer_scheme(app: FastAPI) -> None:
    schemes = app.openapi()["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"
    for method, path, operation in _operations(app):
        public = operation["x-taskloom-access"]["level"] == "public"  # type: ignore[index]
        declared = operation.get("security") == [{"bearer": []}]
        assert declared != public, f"{method} {path}"


def test_201_and_202_answers_document_their_location(app: FastAPI) -> None:
    for method, path, operation in _operations(app):
        responses: dict[str, Any] = operation["responses"]  # type: ignore[assignment]
        for status in ("201", "202"):
            if status in responses:
                assert "Location" in responses[status].get("headers", {}), f"{method} {path}"


async def test_a_created_or_accepted_resource_is_read_at_its_location(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="located", organization_name="Located Org")
    answers = []

    async def located(method: str, path: str, json: Any = None, who: Account = owner) -> Any:
        answer = await client.request(method, path, json=json, headers=who.headers)
        assert answer.status_code in (201, 202), answer.text
        followed = await client.get(answer.headers["location"], headers=who.headers)
        assert followed.status_code == 200, (path, answer.headers["location"], followed.text)
        answers.append(answer)
        return answer.json(), followed.json()

    steps = [{"id": "t", "type": "transform", "args": {"value": 1}}]
    workflow, read = await located(
        "POST", "/api/workflows", {"name": "w", "definition": {"steps": steps}}
    )
    assert read["id"] == workflow["id"]
    accepted, read = await located("POST", f"/api/workflows/{workflow['id']}/execute")
    assert read["id"] == accepted["execution_id"]
    hook, read = await located(
        "POST", "/api/webhooks", {"url": "https://example.com/hook", "events": ["ping"]}
    )
    assert read["id"] == hook["id"]
    ping, read = await located("POST", f"/api/webhooks/{hook['id']}/test")
    assert ping["delivery_id"] in [d["id"] for d in read["items"]]
    connection, read = await located(
        "POST",
        "/api/connections",
        {"provider": "github", "name": "gh", "credentials": {"token": "ghp_located"}},
    )
    assert read["id"] == connection["id"]
    export, read = await located("POST", "/api/user/data-export")
    assert read["request_id"] == export["request_id"]
    root = await make_superuser(client, runtime)
    flag, read = await located(
        "POST", "/api/admin/flags", {"key": "located-flag", "description": "x"}, who=root
    )
    assert read["key"] == flag["key"] == "located-flag"
    key, read = await located("POST", "/auth/api-keys", {"name": "ci", "role": "viewer"})
    assert read["id"] == key["id"]
    assert "key" not in read  # the secret is shown once
    org, read = await located("POST", "/api/orgs", {"name": "Located Too"})
    assert read["org_id"] == org["id"]
    assert read["role"] == "owner"
    invitation, read = await located(
        "POST", "/api/members", {"email": "located-invitee@example.test", "role": "member"}
    )
    assert read["id"] == invitation["invitation_id"]
    registered = await client.post(
        "/auth/register",
        json={"email": "located-new@example.test", "password": PASSWORD, "display_name": "New"},
    )
    assert registered.headers["location"] == "/auth/me"
    me = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {registered.json()['access_token']}"}
    )
    assert me.json()["user"]["id"] == registered.json()["user_id"]
    assert {a.headers["location"] for a in answers} >= {
        f"/api/workflows/{workflow['id']}",
        f"/api/executions/{accepted['execution_id']}",
        f"/api/user/data-export/{export['request_id']}",
    }
