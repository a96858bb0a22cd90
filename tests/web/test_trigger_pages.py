"""A workflow's pages for starting it: the run form its input schema describes, its enabled
state, and its Triggers tab (schedules with their next runs and ticks, webhook and event
triggers, deliveries), as each role sees them."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx

from tests.factories import Account, add_member
from tests.web.conftest import Browser
from tests.web.support import browser_for, csrf_of, post_form, text_of

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["email", "count"],
    "properties": {
        "email": {
            "type": "string",
            "format": "email",
            "title": "Email address",
            "description": "Where the report goes",
        },
        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        "plan": {"type": "string", "enum": ["free", "pro"]},
        "notify": {"type": "boolean", "default": True},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
}


def _definition(input_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    steps = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]
    return {"steps": steps, **({"input_schema": input_schema} if input_schema else {})}


async def _workflow(
    client: httpx.AsyncClient,
    account: Account,
    *,
    name: str = "wf",
    input_schema: dict[str, Any] | None = None,
) -> str:
    response = await client.post(
        "/api/workflows",
        json={"name": name, "definition": _definition(input_schema)},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _control(page: httpx.Response, name: str) -> str:
    """The opening tag of the form control named `name`."""
    found = re.search(rf'<(input|select|textarea)[^>]*name="{re.escape(name)}"[^>]*>', page.text)
    assert found, f"no control {name} in:\n{page.text}"
    return found.group(0)


def _error_under(page: httpx.Response, name: str) -> str:
    """The text of the error shown under the control named `name` (linked by its id)."""
    described = re.search(r'aria-describedby="(?:[^"]* )?([^" ]+-error)"', _control(page, name))
    assert described, f"{name} has no error: {_control(page, name)}"
    found = re.search(rf'id="{described.group(1)}">(.*?)</div>', page.text, re.S)
    assert found
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", found.group(1)))).strip()


# --- the run form --------------------------------------------------------------------------------


async def test_the_run_form_has_one_field_per_property_of_the_input_schema(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, input_schema=INPUT_SCHEMA)
    page = await owner_browser.get(f"/ui/workflows/{workflow_id}")
    assert page.status_code == 200
    email = _control(page, "input.email")
    assert 'type="email"' in email
    assert " required" in email
    assert "Email address (required)" in text_of(page)
    assert "Where the report goes" in text_of(page)
    count = _control(page, "input.count")
    for attribute in ('type="number"', 'step="1"', 'min="1"', 'max="10"', 'value="3"'):
        assert attribute in count, attribute
    assert _control(page, "input.plan").startswith("<select")
    assert '<option value="pro">pro</option>' in page.text
    notify = _control(page, "input.notify")
    assert 'type="checkbox"' in notify
    assert " checked" in notify  # its default
    assert _control(page, "input.tags").startswith("<textarea")
    assert 'name="input"' not in page.text  # no raw JSON textarea


async def test_a_workflow_without_a_schema_keeps_the_json_textarea(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    page = await owner_browser.get(f"/ui/workflows/{workflow_id}")
    assert _control(page, "input").startswith("<textarea")
    assert "input." not in re.sub(r"\{\{.*?\}\}", "", page.text.split('id="run-title"')[1])


async def test_the_run_form_posts_typed_input(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, input_schema=INPUT_SCHEMA)
    path = f"/ui/workflows/{workflow_id}"
    run = await post_form(
        owner_browser,
        f"{path}/run",
        {
            "input.email": "ada@example.test",
            "input.count": "4",
            "input.plan": "",
            "input.tags": '["a", "b"]',
            "input.code": "",
        },  # notify unchecked
        from_page=path,
    )
    assert run.status_code == 303, run.text
    execution_id = run.headers["location"].rsplit("/", 1)[1]
    stored = await client.get(f"/api/executions/{execution_id}", headers=owner.headers)
    assert stored.json()["input"] == {
        "email": "ada@example.test",
        "count": 4,
        "notify": False,
        "tags": ["a", "b"],
    }


async def test_the_run_form_shows_each_error_next_to_its_field_and_keeps_what_was_typed(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, input_schema=INPUT_SCHEMA)
    path = f"/ui/workflows/{workflow_id}"
    unreadable = await post_form(
        owner_browser,
        f"{path}/run",
        {"input.email": "", "input.count": "2.5", "input.tags": "[1,", "input.code": "abc"},
        from_page=path,
    )
    assert unreadable.status_code == 422
    assert _error_under(unreadable, "input.email") == "required"
    assert _error_under(unreadable, "input.count") == "not a whole number"
    assert _error_under(unreadable, "input.tags").startswith("not valid JSON")
    assert 'value="2.5"' in _control(unreadable, "input.count")
    assert ">[1,</textarea>" in unreadable.text
    assert "There are 3 problems" in text_of(unreadable)
    # Readable, but the schema refuses it: check_input's errors, under their fields.
    refused = await post_form(
        owner_browser,
        f"{path}/run",
        {
            "input.email": "ada@example.test",
            "input.count": "11",
            "input.tags": '["a", "b", "c"]',
            "input.code": "abc",
            "input.notify": "on",
        },
        from_page=path,
    )
    assert refused.status_code == 422
    assert "11 is greater than the maximum of 10" in _error_under(refused, "input.count")
    assert "is too long" in _error_under(refused, "input.tags")
    assert "does not match" in _error_under(refused, "input.code")
    assert " checked" in _control(refused, "input.notify")
    assert 'value="ada@example.test"' in _control(refused, "input.email")
    listed = await client.get(f"/api/executions?workflow_id={workflow_id}", headers=owner.headers)
    assert listed.json()["items"] == []  # nothing started


# --- enabled / disabled --------------------------------------------------------------------------


async def test_a_member_disables_and_enables_a_workflow_and_a_disabled_one_cannot_run(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    path = f"/ui/workflows/{workflow_id}"
    member = await browser_for(new_browser, await add_member(client, owner, "member"))
    page = await member.get(path)
    assert "State: enabled" in text_of(page)
    assert "Run workflow" in page.text
    disabled = await post_form(member, f"{path}/enabled", {"enabled": "false"}, from_page=path)
    assert disabled.status_code == 303
    assert disabled.headers["location"] == f"{path}?notice=workflow-disabled"
    stored = await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)
    assert stored.json()["enabled"] is False
    page = await member.get(disabled.headers["location"])
    text = text_of(page)
    assert "Workflow disabled" in text
    assert "State: disabled" in text
    assert "Run workflow" not in page.text
    assert "This workflow is disabled: it cannot be run" in text
    assert ">Enable</button>" in page.text
    refused = await member.post(f"{path}/run", data={"csrf_token": csrf_of(page), "input": "{}"})
    assert refused.status_code == 409
    assert "the workflow is disabled" in text_of(refused)
    enabled = await post_form(member, f"{path}/enabled", {"enabled": "true"}, from_page=path)
    assert enabled.headers["location"] == f"{path}?notice=workflow-enabled"
    assert "Run workflow" in (await member.get(path)).text
    audit = await client.get(
        "/api/audit-logs?scope=org&action=workflow.update", headers=owner.headers
    )
    changes = [e["details"] for e in audit.json()["items"] if e["resource_id"] == workflow_id]
    assert changes == [{"enabled": True}, {"enabled": False}]  # newest first


async def test_a_viewer_sees_the_state_but_no_enable_button(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    path = f"/ui/workflows/{workflow_id}"
    viewer = await browser_for(new_browser, await add_member(client, owner, "viewer"))
    page = await viewer.get(path)
    assert "State: enabled" in text_of(page)
    assert f"{path}/enabled" not in page.text
    refused = await viewer.post(
        f"{path}/enabled", data={"csrf_token": csrf_of(page), "enabled": "false"}
    )
    assert refused.status_code == 403
