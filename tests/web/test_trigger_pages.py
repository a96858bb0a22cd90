"""A workflow's pages for starting it: the run form its input schema describes, its enabled
state, and its Triggers tab (schedules with their next runs and ticks, webhook and event
triggers, deliveries), as each role sees them."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import html
import itertools
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from taskloom.app import create_app
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from taskloom.triggers.models import ScheduleTick
from tests.factories import Account, add_member
from tests.in_process import asgi_client
from tests.triggers.schedule_support import delete_all_schedules
from tests.web.conftest import Browser
from tests.web.support import browser_for, csrf_of, post_form, sign_in, text_of

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
    described = re.search(r'aria-describedby="(?:[^"]* )?([^" ]+)-error"', _control(page, name))
    assert described, f"{name} has no error: {_control(page, name)}"
    return _error_of(page, described.group(1))


def _error_of(page: httpx.Response, control_id: str) -> str:
    found = re.search(rf'id="{control_id}-error">(.*?)</div>', page.text, re.S)
    assert found, f"no error for #{control_id}"
    return text_of_html(found.group(1)).strip()


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


# --- the Triggers tab: schedules -----------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _no_schedule_outlives_its_test(runtime: Runtime) -> AsyncIterator[None]:
    """Later tests' workers would fire a schedule left here (the database is shared)."""
    yield
    await delete_all_schedules(runtime)


async def _schedule(
    client: httpx.AsyncClient, account: Account, workflow_id: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/api/workflows/{workflow_id}/schedules",
        json={"cron": "30 2 * * *", "timezone": "Europe/Berlin", **body},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_the_tab_lists_schedules_with_next_runs_in_their_zone_and_utc_and_last_ticks(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account, runtime: Runtime
) -> None:
    workflow_id = await _workflow(client, owner, name="Nightly")
    schedule = await _schedule(client, owner, workflow_id, overlap="queue", catch_up="one")
    started = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=owner.headers
    )
    execution_id = uuid.UUID(started.json()["execution_id"])
    first = datetime(2027, 3, 20, 1, 30, tzinfo=UTC)
    async with system_transaction(runtime.database) as db:  # what the ticker records
        for day in range(12):
            failed = day == 11
            db.add(
                ScheduleTick(
                    org_id=owner.org_id,
                    schedule_id=uuid.UUID(schedule["id"]),
                    tick_at=first + timedelta(days=day),
                    status="failed" if failed else "started",
                    reason="the input does not match the input_schema" if failed else None,
                    execution_id=None if failed else execution_id,
                )
            )
    viewer = await browser_for(new_browser, await add_member(client, owner, "viewer"))
    page = await viewer.get(f"/ui/workflows/{workflow_id}/triggers")
    assert page.status_code == 200
    text = text_of(page)
    assert "30 2 * * * in Europe/Berlin enabled" in text
    assert "Overlap queue Catch up one" in text
    zone = ZoneInfo("Europe/Berlin")
    runs = [_moment(t) for t in schedule["next_runs"]]
    assert len(runs) == 5
    for run in runs:
        local = run.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
        assert local.endswith(("02:30:00 CET", "02:30:00 CEST")) or "03:00:00 CEST" in local
        assert f"{local} ({run.strftime('%Y-%m-%d %H:%M:%S')} UTC)" in text
    ticks = page.text.split("Last ticks")[1].split("</table>")[0]
    assert ticks.count("<tr>") == 1 + 10  # the header and the last ten ticks
    assert "2027-03-31 03:30:00 CEST (2027-03-31 01:30:00 UTC)" in text_of_html(ticks)  # newest
    assert "2027-03-22 " in ticks
    assert "2027-03-21 " not in ticks  # the eleventh newest is not shown
    assert "the input does not match the input_schema" in ticks
    assert ticks.count(f'href="/ui/executions/{execution_id}"') == 9
    assert "Pause" not in page.text  # a viewer reads
    assert "New schedule" not in page.text


def text_of_html(fragment: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment)))


async def test_a_member_pauses_and_resumes_a_schedule(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    schedule = await _schedule(client, owner, workflow_id, cron="*/5 * * * *", timezone="UTC")
    member = await browser_for(new_browser, await add_member(client, owner, "member"))
    tab = f"/ui/workflows/{workflow_id}/triggers"
    action = f"/ui/workflows/{workflow_id}/schedules/{schedule['id']}/enabled"
    paused = await post_form(member, action, {"enabled": "false"}, from_page=tab)
    assert paused.status_code == 303
    assert paused.headers["location"] == f"{tab}?notice=schedule-paused"
    stored = await client.get(f"/api/schedules/{schedule['id']}", headers=owner.headers)
    assert stored.json()["enabled"] is False
    page = await member.get(paused.headers["location"])
    text = text_of(page)
    assert "Schedule paused" in text
    assert "*/5 * * * * in UTC paused" in text
    assert "Paused: no runs planned." in text
    assert ">Resume</button>" in page.text
    resumed = await post_form(member, action, {"enabled": "true"}, from_page=tab)
    assert resumed.headers["location"] == f"{tab}?notice=schedule-resumed"
    page = await member.get(tab)
    assert "*/5 * * * * in UTC enabled" in text_of(page)
    assert page.text.split("Next runs")[1].split("</ol>")[0].count("<li>") == 5
    audit = await client.get(
        "/api/audit-logs?scope=org&action=schedule.update", headers=owner.headers
    )
    assert [e["details"]["enabled"] for e in audit.json()["items"]] == [True, False]


async def test_a_member_creates_a_schedule_from_the_tab_and_errors_name_the_field(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    member = await browser_for(new_browser, await add_member(client, owner, "member"))
    tab = f"/ui/workflows/{workflow_id}/triggers"
    create = f"/ui/workflows/{workflow_id}/schedules"
    form = {"cron": "0 9 * * 1-5", "timezone": "America/New_York", "overlap": "allow"}
    bad_cron = await post_form(
        member, create, {**form, "cron": "61 * * * *", "input": "{}"}, from_page=tab
    )
    assert bad_cron.status_code == 422
    assert "minute" in _error_under(bad_cron, "cron")
    assert 'value="America/New_York"' in _control(bad_cron, "timezone")  # kept
    bad_zone = await post_form(
        member, create, {**form, "timezone": "Mars/Olympus", "input": "{}"}, from_page=tab
    )
    assert bad_zone.status_code == 422
    assert _error_under(bad_zone, "timezone")
    bad_input = await post_form(member, create, {**form, "input": "[1,"}, from_page=tab)
    assert bad_input.status_code == 422
    assert _error_under(bad_input, "input").startswith("not valid JSON")
    created = await post_form(
        member,
        create,
        {**form, "input": '{"when": "{{ schedule.tick }}"}', "catch_up": "all"},
        from_page=tab,
    )
    assert created.status_code == 303, created.text
    assert created.headers["location"] == f"{tab}?notice=schedule-created"
    [stored] = (
        await client.get(f"/api/workflows/{workflow_id}/schedules", headers=owner.headers)
    ).json()
    assert (stored["cron"], stored["timezone"], stored["overlap"], stored["catch_up"]) == (
        "0 9 * * 1-5",
        "America/New_York",
        "allow",
        "all",
    )
    assert stored["input"] == {"when": "{{ schedule.tick }}"}
    page = await member.get(created.headers["location"])
    assert "0 9 * * 1-5 in America/New_York enabled" in text_of(page)
    for run in stored["next_runs"]:
        assert _moment(run).astimezone(ZoneInfo("America/New_York")).hour == 9
    deleted = await post_form(
        member, f"/ui/workflows/{workflow_id}/schedules/{stored['id']}/delete", {}, from_page=tab
    )
    assert deleted.headers["location"] == f"{tab}?notice=schedule-deleted"
    assert "No schedules." in text_of(await member.get(tab))


async def test_a_schedule_of_another_workflow_is_not_found_under_this_one(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    mine = await _workflow(client, owner, name="mine")
    other = await _workflow(client, owner, name="other")
    schedule = await _schedule(client, owner, other)
    refused = await post_form(
        owner_browser,
        f"/ui/workflows/{mine}/schedules/{schedule['id']}/delete",
        {},
        from_page=f"/ui/workflows/{mine}/triggers",
    )
    assert refused.status_code == 404
    still = await client.get(f"/api/schedules/{schedule['id']}", headers=owner.headers)
    assert still.status_code == 200


# --- the Triggers tab: webhook and event triggers, deliveries ------------------------------------


def _found(pattern: str, page: httpx.Response) -> str:
    """The first group of `pattern` in the page, unescaped."""
    found = re.search(pattern, page.text, re.S)
    assert found, pattern
    return html.unescape(found.group(1))


def _curl_request(curl: str) -> tuple[str, dict[str, str], str]:
    """The URL, headers and body of the page's example command, as curl would send them."""
    words = shlex.split(curl.replace("\\\n", " "))
    assert words[:3] == ["curl", "-X", "POST"]
    headers = dict(h.split(": ", 1) for flag, h in itertools.pairwise(words) if flag == "-H")
    return words[3], headers, words[words.index("--data") + 1]


async def test_an_admin_sees_a_webhook_triggers_secret_once_and_its_curl_example_works(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, name="Hooked")
    admin = await browser_for(new_browser, await add_member(client, owner, "admin"))
    tab = f"/ui/workflows/{workflow_id}/triggers"
    created = await post_form(
        admin,
        f"/ui/workflows/{workflow_id}/triggers",
        {"kind": "webhook", "verification": "token", "response": "async"},
        from_page=tab,
    )
    assert created.status_code == 201, created.text
    secret = _found(r'id="new-secret"[^>]*value="([^"]+)"', created)
    assert secret.startswith("whsec_")
    assert "shown only now" in text_of(created)
    [trigger] = (
        await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    ).json()
    curl = _found(r'id="new-secret-curl">(.*?)</code>', created)
    url, headers, body = _curl_request(curl)
    assert url == f"http://testserver/hooks/{trigger['id']}"
    assert headers["Authorization"] == f"Bearer {secret}"
    accepted = await client.post(url, headers=headers, content=body)
    assert accepted.status_code == 202, accepted.text
    execution_id = accepted.json()["execution_id"]
    forged = await client.post(url, headers={**headers, "Authorization": "Bearer nope"})
    assert forged.status_code == 401

    page = await admin.get(tab)  # a later load: no secret
    assert secret not in page.text
    assert 'id="new-secret"' not in page.text
    text = text_of(page)
    assert f"/hooks/{trigger['id']}" in page.text
    assert "Authorization: Bearer <secret>" in text  # the example, without the secret
    assert 'data-copy="hook-url-1"' in page.text
    assert "Rotate secret" in text
    deliveries = page.text.split('id="deliveries-title"')[1]
    assert deliveries.count("<tr>") == 1 + 2
    assert f'href="/ui/executions/{execution_id}"' in deliveries
    assert "rejected" in deliveries
    assert "signature_mismatch" in deliveries  # the wrong token's reason

    rotate = f"/ui/workflows/{workflow_id}/triggers/{trigger['id']}/rotate-secret"
    too_long = await post_form(admin, rotate, {"overlap_hours": "200"}, from_page=tab)
    assert too_long.status_code == 422
    assert _error_under(too_long, "overlap_hours") == "a whole number of hours from 0 to 168"
    rotated = await post_form(admin, rotate, {"overlap_hours": "1"}, from_page=tab)
    assert rotated.status_code == 200
    new_secret = _found(r'id="new-secret"[^>]*value="([^"]+)"', rotated)
    assert new_secret not in (secret, "")
    assert "The previous one keeps verifying requests until" in text_of(rotated)
    assert new_secret not in (await admin.get(tab)).text
    gone = await post_form(
        admin,
        f"/ui/workflows/{workflow_id}/triggers/{trigger['id']}/delete",
        {},
        from_page=tab,
    )
    assert gone.headers["location"] == f"{tab}?notice=trigger-deleted"
    assert "No webhook triggers." in text_of(await admin.get(tab))


async def test_an_admin_gives_a_trigger_the_senders_own_secret_and_it_is_not_echoed(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, name="Invoices")
    tab = f"/ui/workflows/{workflow_id}/triggers"
    create = f"/ui/workflows/{workflow_id}/triggers"
    not_standard = await post_form(
        owner_browser,
        create,
        {"kind": "webhook", "verification": "standard", "secret": "s" * 20},
        from_page=tab,
    )
    assert not_standard.status_code == 422
    assert "whsec_ and base64" in _error_under(not_standard, "secret")
    assert "s" * 20 not in not_standard.text  # a secret is never shown back
    stripe_secret = "whsec_" + "k" * 32
    created = await post_form(
        owner_browser,
        create,
        {"kind": "webhook", "verification": "stripe", "secret": stripe_secret},
        from_page=tab,
    )
    assert created.status_code == 201, created.text
    assert "with the signing secret you gave" in text_of(created)
    assert stripe_secret not in created.text
    [trigger] = (
        await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    ).json()
    body = b'{"id": "evt_1", "type": "invoice.paid"}'
    stamp = int(time.time())
    signature = hmac.new(
        stripe_secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    accepted = await client.post(
        f"/hooks/{trigger['id']}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={stamp},v1={signature}",
        },
    )
    assert accepted.status_code == 202, accepted.text
    rotate = f"/ui/workflows/{workflow_id}/triggers/{trigger['id']}/rotate-secret"
    too_short = await post_form(
        owner_browser, rotate, {"overlap_hours": "0", "secret": "short"}, from_page=tab
    )
    assert too_short.status_code == 422
    assert "at least 16 characters" in _error_under(too_short, "secret")
    rotated = await post_form(
        owner_browser, rotate, {"overlap_hours": "0", "secret": "whsec_" + "n" * 32}, from_page=tab
    )
    assert rotated.status_code == 200
    assert "now verifies requests with the signing secret you gave" in text_of(rotated)
    assert "n" * 32 not in rotated.text


async def test_a_member_sees_no_webhook_trigger_controls_but_manages_event_triggers(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, name="Follower")
    watched = await _workflow(client, owner, name="Leader")
    hook = await client.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "github"},
        headers=owner.headers,
    )
    hook_id = hook.json()["id"]
    member = await browser_for(new_browser, await add_member(client, owner, "member"))
    tab = f"/ui/workflows/{workflow_id}/triggers"
    page = await member.get(tab)
    text = text_of(page)
    assert f"/hooks/{hook_id}" in page.text  # the URL is no secret
    assert "X-Hub-Signature-256: sha256=" in text
    for control in ("New webhook trigger", "Rotate the secret", "Delete webhook trigger"):
        assert control not in text, control
    assert hook.json()["secret"] not in page.text
    refused = await post_form(
        member,
        f"/ui/workflows/{workflow_id}/triggers",
        {"kind": "webhook", "verification": "token"},
        from_page=tab,
    )
    assert refused.status_code == 403
    for action in ("rotate-secret", "delete"):
        refused = await post_form(
            member, f"/ui/workflows/{workflow_id}/triggers/{hook_id}/{action}", {}, from_page=tab
        )
        assert refused.status_code == 403, action
    assert "New event trigger" in text
    missing = await post_form(
        member,
        f"/ui/workflows/{workflow_id}/triggers",
        {"kind": "event", "workflow": watched},
        from_page=tab,
    )  # no status ticked
    assert missing.status_code == 422
    assert "at least 1 item" in _error_of(missing, "event-status")
    assert f'<option value="{watched}" selected>' in missing.text  # kept
    created = await member.post(
        f"/ui/workflows/{workflow_id}/triggers",
        data={
            "csrf_token": csrf_of(page),
            "kind": "event",
            "workflow": watched,
            "status": ["succeeded", "failed"],
        },
    )
    assert created.status_code == 303, created.text
    page = await member.get(tab)
    events = text_of_html(page.text.split('id="events-title"')[1].split("</table>")[0])
    assert "Leader failed or succeeded enabled" in events
    [event] = [
        t
        for t in (
            await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
        ).json()
        if t["kind"] == "event"
    ]
    deleted = await post_form(
        member, f"/ui/workflows/{workflow_id}/triggers/{event['id']}/delete", {}, from_page=tab
    )
    assert deleted.status_code == 303
    assert "No event triggers." in text_of(await member.get(tab))


async def test_the_new_forms_refuse_posts_without_the_csrf_token(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    schedule = await _schedule(client, owner, workflow_id)
    posts = {
        f"/ui/workflows/{workflow_id}/schedules": {"cron": "* * * * *"},
        f"/ui/workflows/{workflow_id}/schedules/{schedule['id']}/enabled": {"enabled": "false"},
        f"/ui/workflows/{workflow_id}/schedules/{schedule['id']}/delete": {},
        f"/ui/workflows/{workflow_id}/triggers": {"kind": "webhook", "verification": "token"},
        f"/ui/workflows/{workflow_id}/enabled": {"enabled": "false"},
    }
    for path, data in posts.items():
        refused = await owner_browser.post(path, data={**data, "csrf_token": "forged"})
        assert refused.status_code == 403, path
        assert "Form expired" in refused.text, path
    [stored] = (
        await client.get(f"/api/workflows/{workflow_id}/schedules", headers=owner.headers)
    ).json()
    assert stored["enabled"] is True
    triggers = await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    assert triggers.json() == []
    workflow = await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)
    assert workflow.json()["enabled"] is True


@pytest.fixture
async def public_browser(runtime: Runtime, owner: Account) -> AsyncIterator[httpx.AsyncClient]:
    """A browser against an app with PUBLIC_URL set (the same database: `owner` signs in)."""
    settings = runtime.settings.model_copy(update={"public_url": "https://tl.example.com/"})
    app = create_app(runtime=dataclasses.replace(runtime, settings=settings))
    async with app.router.lifespan_context(app), asgi_client(app, ip="203.0.113.9") as browser:
        await sign_in(browser, owner.email)
        yield browser


async def test_the_url_is_absolute_under_public_url(
    client: httpx.AsyncClient, public_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    created = await post_form(
        public_browser,
        f"/ui/workflows/{workflow_id}/triggers",
        {"kind": "webhook", "verification": "standard"},
        from_page=f"/ui/workflows/{workflow_id}/triggers",
    )
    assert created.status_code == 201
    [trigger] = (
        await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    ).json()
    url = f"https://tl.example.com/hooks/{trigger['id']}"
    page = await public_browser.get(f"/ui/workflows/{workflow_id}/triggers")
    assert f'value="{url}"' in page.text
    assert f"curl -X POST {url}" in text_of(page)
    assert "webhook-signature: v1,&lt;signature&gt;" in page.text
    assert "within 5 minutes" in text_of(page)
