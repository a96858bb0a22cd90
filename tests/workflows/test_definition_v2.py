"""Version 2 definitions (needs, when, for_each, policies, control steps, output): what is
stored, and each mistake refused at save time with a 422 naming its field path."""

from __future__ import annotations

import uuid
from typing import Any, get_args

import httpx
import pytest

from taskloom.workflows.control import ENABLED_CONTROL_TYPES
from taskloom.workflows.graph import JOINS
from taskloom.workflows.schemas import MAX_STEPS, StepDefinition
from tests.factories import register


def _t(step_id: str, value: Any = "x", **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "transform", "args": {"value": value}, **fields}


async def _save(
    client: httpx.AsyncClient, headers: dict[str, str], definition: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        "/api/workflows", json={"name": "wf", "definition": definition}, headers=headers
    )


async def _refused(
    client: httpx.AsyncClient, headers: dict[str, str], definition: dict[str, Any]
) -> str:
    response = await _save(client, headers, definition)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    return str(error["message"])


def test_the_join_rules_are_the_graphs() -> None:
    assert get_args(StepDefinition.model_fields["join"].annotation)[0].__args__ == JOINS


async def test_a_v2_definition_round_trips_unchanged(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="v2", organization_name="V2 Org")
    child = await _save(client, owner.headers, {"steps": [_t("only")]})
    child_id = child.json()["id"]
    definition = {
        "steps": [
            {"id": "fetch", "type": "http", "args": {"url": "https://example.com/items"}},
            _t(
                "triage",
                "{{ steps.fetch.output.status }}",
                needs=["fetch"],
                when="{{ steps.fetch.output.status == 200 }}",
                retry={"max_attempts": 3, "backoff": "fixed", "delay": "2s", "on": ["http_5xx"]},
                timeout="1m30s",
            ),
            _t(
                "each",
                {"v": "{{ item.id }} at {{ index }}", "f": "{{ steps['fetch'].output }}"},
                needs=["fetch"],
                for_each="{{ steps.fetch.output.json['items'] }}",
                max_parallel=5,
                continue_on_error=True,
            ),
            {"id": "pause", "type": "wait", "needs": ["each"], "args": {"for": "30s"}},
            {
                "id": "until",
                "type": "wait",
                "needs": ["each"],
                "args": {"until": "2030-01-01T00:00:00+02:00"},
            },
            {
                "id": "ok",
                "type": "approval",
                "needs": ["pause"],
                "args": {
                    "approvers": {"role": "admin"},
                    "message": "Ship {{ input.name }}? {{ steps.each.output | length }}",
                    "timeout": "24h",
                    "on_timeout": "reject",
                },
            },
            {
                "id": "child",
                "type": "workflow",
                "needs": ["ok"],
                "args": {"workflow": child_id, "input": {"x": "{{ input.x }}"}},
            },
            _t("done", "finished", needs=["triage", "child", "until"], join="all_done"),
        ],
        "max_parallel_steps": 3,
        "deadline": "2h",
        "output": {
            "items": "{{ steps.each.output }}",
            "approved": "{{ steps.ok.output.approved }}",
        },
    }
    created = await _save(client, owner.headers, definition)
    assert created.status_code == 201, created.text
    read = await client.get(f"/api/workflows/{created.json()['id']}", headers=owner.headers)
    assert read.json()["definition"] == definition


async def test_an_old_definition_is_stored_exactly_as_before(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="v1", organization_name="V1 Org")
    written = {
        "steps": [
            {"id": "a", "type": "transform", "args": {"value": {"n": None, "xs": [1, None]}}},
            _t("b", "{{ steps.a.output }}"),
        ]
    }
    created = await _save(client, owner.headers, written)
    assert created.status_code == 201, created.text
    read = await client.get(f"/api/workflows/{created.json()['id']}", headers=owner.headers)
    # only the three keys of version 1, and nulls inside args kept
    assert read.json()["definition"] == written


async def test_a_chain_step_may_still_read_all_earlier_steps_at_once(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="v1", organization_name="V1 Org")
    written = {"steps": [_t("a"), _t("b", "{{ steps | length }} {{ steps[input.k] }}")]}
    assert (await _save(client, owner.headers, written)).status_code == 201


CHILD = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("definition", "where", "says"),
    [
        # needs
        ({"steps": [_t("a"), _t("b", needs=["a", "ghost"])]}, "steps.1.needs.1", "no step 'ghost'"),
        ({"steps": [_t("a", needs=["a"])]}, "steps.0.needs.0", "cannot need itself"),
        ({"steps": [_t("a"), _t("b", needs=["a", "a"])]}, "steps.1.needs.1", "listed twice"),
        (
            {
                "steps": [
                    _t("start", needs=[]),
                    _t("c", needs=["b"]),
                    _t("a", needs=["start", "c"]),
                    _t("b", needs=["a"]),
                ]
            },
            "steps.1.needs.0",
            "needs form a cycle: c → a → b → c",
        ),
        (
            {"steps": [_t("a"), _t("b", needs=[f"s{i}" for i in range(51)])]},
            "steps.1.needs",
            "at most 50",
        ),
        # companions
        (
            {"steps": [_t("a", join="all_done")]},
            "steps.0.join",
            "only applies to a step with needs",
        ),
        ({"steps": [_t("a", needs=[], join="any_succeeded")]}, "steps.0.join", "with needs"),
        ({"steps": [_t("a", join="most")]}, "steps.0.join", "all_succeeded"),
        ({"steps": [_t("a", max_parallel=2)]}, "steps.0.max_parallel", "for_each step"),
        (
            {"steps": [_t("a", for_each="{{ input.xs }}", max_parallel=21)]},
            "steps.0.max_parallel",
            "less than or equal to 20",
        ),
        ({"steps": [_t("a")], "max_parallel_steps": 0}, "definition.max_parallel_steps", "greater"),
        # templates: syntax
        ({"steps": [_t("a", when="{{ input.x ")]}, "steps.0.when", "template error"),
        ({"steps": [_t("a", for_each="{% for %}")]}, "steps.0.for_each", "template error"),
        ({"steps": [_t("a")], "output": {"x": ["{{ }}"]}}, "definition.output.x.0", "template"),
        ({"steps": [_t("a", {"deep": ["ok", "{{ ("]})]}, "steps.0.args.value.deep.1", "template"),
        # templates: which steps they read
        (
            {"steps": [_t("a", "{{ steps.b.output }}"), _t("b")]},
            "steps.0.args.value",
            "reads step 'b', which does not run before",
        ),
        (
            {
                "steps": [
                    _t("a", needs=[]),
                    _t("b", needs=[]),
                    _t("c", "{{ steps['a'] }}", needs=["b"]),
                ]
            },
            "steps.2.args.value",
            "reads step 'a'",
        ),
        (
            {"steps": [_t("a", needs=[]), _t("b", needs=["a"], when="{{ steps.b.output }}")]},
            "steps.1.when",
            "reads step 'b'",
        ),
        (
            {"steps": [_t("a", "{{ steps.nope.output }}")]},
            "steps.0.args.value",
            "no such step",
        ),
        (
            {"steps": [_t("a")], "output": "{{ steps.gone }}"},
            "definition.output",
            "no such step",
        ),
        (
            {"steps": [_t("a", needs=[]), _t("b", "{{ steps[input.k] }}", needs=["a"])]},
            "steps.1.args.value",
            "name the steps a template reads",
        ),
        (
            {
                "steps": [
                    _t("a", needs=[]),
                    _t("b", "{% for s in steps %}{% endfor %}", needs=["a"]),
                ]
            },
            "steps.1.args.value",
            "name the steps",
        ),
        # item and index
        ({"steps": [_t("a", "{{ item }}")]}, "steps.0.args.value", "'item' is only defined"),
        (
            {"steps": [_t("a", "{{ item }}", for_each="{{ input.xs }}", when="{{ index > 0 }}")]},
            "steps.0.when",
            "'index' is only defined",
        ),
        ({"steps": [_t("a", for_each="{{ item }}")]}, "steps.0.for_each", "'item'"),
        ({"steps": [_t("a")], "output": "{{ index }}"}, "definition.output", "'index'"),
        # types, limits, durations
        ({"steps": [{"id": "a", "type": "sleep", "args": {}}]}, "steps.0.type", "wait"),
        ({"steps": [_t(f"s{i}") for i in range(MAX_STEPS + 1)]}, "definition.steps", "at most 200"),
        ({"steps": [_t("a", timeout="0s")]}, "steps.0.timeout", "is zero"),
        ({"steps": [_t("a", timeout="-5s")]}, "steps.0.timeout", "is not a duration"),
        ({"steps": [_t("a")], "deadline": "367d"}, "definition.deadline", "longer than 366 days"),
        (
            {"steps": [_t("a", retry={"max_attempts": 11})]},
            "steps.0.retry.max_attempts",
            "less than or equal to 10",
        ),
        (
            {"steps": [_t("a", retry={"max_attempts": 2, "delay": "soon"})]},
            "steps.0.retry.delay",
            "not a duration",
        ),
        (
            {"steps": [_t("a", retry={"max_attempts": 2, "backoff": "linear"})]},
            "steps.0.retry.backoff",
            "exponential",
        ),
        # control steps
        (
            {"steps": [{"id": "w", "type": "wait", "args": {}}]},
            "steps.0.args",
            'exactly one of "for"',
        ),
        (
            {
                "steps": [
                    {
                        "id": "w",
                        "type": "wait",
                        "args": {"for": "1s", "until": "2030-01-01T00:00:00Z"},
                    }
                ]
            },
            "steps.0.args",
            "exactly one",
        ),
        (
            {"steps": [{"id": "w", "type": "wait", "args": {"until": "2030-01-01T00:00:00"}}]},
            "steps.0.args.until",
            "timezone",
        ),
        (
            {"steps": [{"id": "w", "type": "wait", "args": {"for": "1x"}}]},
            "steps.0.args.for",
            "not a duration",
        ),
        (
            {"steps": [{"id": "p", "type": "approval", "args": {"approvers": {"role": "viewer"}}}]},
            "steps.0.args.approvers.role",
            "member",
        ),
        (
            {
                "steps": [
                    {
                        "id": "p",
                        "type": "approval",
                        "args": {"approvers": {"role": "admin", "users": [CHILD]}},
                    }
                ]
            },
            "steps.0.args.approvers",
            'exactly one of "role" or "users"',
        ),
        (
            {"steps": [{"id": "p", "type": "approval", "args": {"approvers": {"users": []}}}]},
            "steps.0.args.approvers.users",
            "at least 1",
        ),
        (
            {
                "steps": [
                    {
                        "id": "p",
                        "type": "approval",
                        "args": {"approvers": {"users": [CHILD, CHILD]}},
                    }
                ]
            },
            "steps.0.args.approvers.users",
            "listed twice",
        ),
        (
            {
                "steps": [
                    {
                        "id": "p",
                        "type": "approval",
                        "args": {"approvers": {"role": "owner"}, "timeout": "31d"},
                    }
                ]
            },
            "steps.0.args.timeout",
            "at most 30 days",
        ),
        (
            {
                "steps": [
                    {
                        "id": "p",
                        "type": "approval",
                        "args": {"approvers": {"role": "owner"}, "on_timeout": "ignore"},
                    }
                ]
            },
            "steps.0.args.on_timeout",
            "approve",
        ),
        (
            {
                "steps": [
                    {
                        "id": "p",
                        "type": "approval",
                        "args": {"approvers": {"role": "owner"}, "message": "{{ steps.p }}"},
                    }
                ]
            },
            "steps.0.args.message",
            "reads step 'p'",
        ),
        (
            {"steps": [{"id": "c", "type": "workflow", "args": {"workflow": "not-a-uuid"}}]},
            "steps.0.args.workflow",
            "UUID",
        ),
        (
            {"steps": [{"id": "c", "type": "workflow", "args": {"workflow": CHILD}}]},
            "steps.0.args.workflow",
            "no workflow with this id in this organization",
        ),
    ],
)
async def test_a_bad_v2_definition_is_a_422_naming_the_field(
    client: httpx.AsyncClient, definition: dict[str, Any], where: str, says: str
) -> None:
    owner = await register(client, label="v2", organization_name="V2 Org")
    message = await _refused(client, owner.headers, definition)
    assert f"{where}:" in message, message
    assert says in message, message


async def test_a_child_workflow_of_another_organization_is_as_unknown_as_a_missing_one(
    client: httpx.AsyncClient,
) -> None:
    theirs = await register(client, label="them", organization_name="Them")
    mine = await register(client, label="me", organization_name="Me")
    foreign = (await _save(client, theirs.headers, {"steps": [_t("a")]})).json()["id"]
    own = (await _save(client, mine.headers, {"steps": [_t("a")]})).json()["id"]

    def calling(workflow_id: str) -> dict[str, Any]:
        step = {"id": "c", "type": "workflow", "args": {"workflow": workflow_id}}
        return {"steps": [step]}

    message = await _refused(client, mine.headers, calling(foreign))
    assert "steps.0.args.workflow: there is no workflow with this id" in message
    assert (await _save(client, mine.headers, calling(own))).status_code == 201
    # and an update is checked the same way
    updated = await client.put(
        f"/api/workflows/{own}",
        json={"name": "wf", "definition": calling(foreign)},
        headers=mine.headers,
    )
    assert updated.status_code == 422
    assert str(uuid.UUID(foreign)) not in updated.text


def test_every_control_type_is_enabled_on_this_branch() -> None:
    assert {"wait", "approval", "workflow"} == ENABLED_CONTROL_TYPES
