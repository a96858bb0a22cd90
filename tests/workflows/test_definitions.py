"""Workflow CRUD and the definition checks made when one is saved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from taskloom.executions.templating import TemplateProblem, render
from tests.factories import register

TRANSFORM = {"id": "t", "type": "transform", "args": {"value": "{{ input.x }}"}}


async def _save(client: httpx.AsyncClient, headers: dict[str, str], steps: Any) -> httpx.Response:
    return await client.post(
        "/api/workflows", json={"name": "wf", "definition": {"steps": steps}}, headers=headers
    )


async def test_create_read_update_delete(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="wf", organization_name="Wf Org")
    created = await _save(client, owner.headers, [TRANSFORM])
    assert created.status_code == 201, created.text
    workflow = created.json()
    assert workflow["version"] == 1
    assert workflow["definition"] == {"steps": [TRANSFORM]}

    update = {
        "name": "renamed",
        "description": "two steps now",
        "definition": {"steps": [TRANSFORM, {**TRANSFORM, "id": "u"}]},
    }
    updated = await client.put(
        f"/api/workflows/{workflow['id']}", json=update, headers=owner.headers
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    assert updated.json()["name"] == "renamed"

    listed = await client.get("/api/workflows", headers=owner.headers)
    assert [w["name"] for w in listed.json()] == ["renamed"]

    deleted = await client.delete(f"/api/workflows/{workflow['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/api/workflows/{workflow['id']}", headers=owner.headers)
    assert gone.status_code == 404


async def test_an_execution_keeps_the_definition_it_was_accepted_with(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="wf", organization_name="Wf Org")
    workflow = (await _save(client, owner.headers, [TRANSFORM])).json()
    accepted = await client.post(
        f"/api/workflows/{workflow['id']}/execute", json={"input": {"x": 1}}, headers=owner.headers
    )
    assert accepted.status_code == 202
    new = {"name": "wf", "definition": {"steps": [{**TRANSFORM, "id": "other"}]}}
    await client.put(f"/api/workflows/{workflow['id']}", json=new, headers=owner.headers)
    execution = await client.get(
        f"/api/executions/{accepted.json()['execution_id']}", headers=owner.headers
    )
    assert execution.json()["workflow_version"] == 1
    assert execution.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("steps", "where", "says"),
    [
        ([{"id": "a", "type": "teleport", "args": {}}], "steps.0.type", "unknown step type"),
        ([TRANSFORM, TRANSFORM], "steps.1.id", "used twice"),
        ([{**TRANSFORM, "args": {"value": 1, "extra": 2}}], "steps.0.args.extra", "no argument"),
        ([{"id": "h", "type": "http", "args": {}}], "steps.0.args.url", "required"),
        (
            [TRANSFORM, {"id": "b", "type": "transform", "args": {"value": "{{ input.x "}}],
            "steps.1.args.value",
            "template error",
        ),
        ([{"id": "Bad Id", "type": "transform", "args": {}}], "steps.0.id", "pattern"),
        ([], "definition.steps", "at least 1"),
    ],
)
async def test_a_bad_definition_is_a_422_naming_the_field(
    client: httpx.AsyncClient, steps: Any, where: str, says: str
) -> None:
    owner = await register(client, label="wf", organization_name="Wf Org")
    response = await _save(client, owner.headers, steps)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert where in message, message
    assert says in message, message


def test_templates_yield_values_and_refuse_what_would_hurt() -> None:
    scope = {"input": {"n": 2, "name": "Ann"}, "steps": {"a": {"output": {"list": [1, 2]}}}}
    assert render("{{ input.n * 3 }}", scope) == 6
    assert render("{{ steps.a.output.list }}", scope) == [1, 2]
    assert render("Hi {{ input.name }}!", scope) == "Hi Ann!"
    assert render({"deep": ["{{ input.n }}", 7]}, scope) == {"deep": [2, 7]}
    for bad, says in [
        ("{{ input.missing }}", "has no attribute"),
        ("{{ nope }}", "undefined"),
        ("{{ input.__class__.__mro__ }}", "unsafe"),
        ("{{ 'x' * 10**8 }}", "longer than"),
        ("{{ 9 ** 99999 }}", "exponent"),
        ("{{ range }}", "not JSON"),
    ]:
        with pytest.raises(TemplateProblem, match=says):
            render(bad, scope)
