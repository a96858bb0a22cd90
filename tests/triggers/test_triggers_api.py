"""/api/workflows/{id}/triggers and /api/triggers: webhook triggers are admins' (their secret is
shown once, in the answers to creation and rotation), event triggers members'; viewers read;
other organizations' triggers and workflows are not found; every change is audited, never the
secret; MAX_TRIGGERS_PER_ORG caps them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from taskloom.app import create_app
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.in_process import asgi_client

STEPS = [{"id": "t", "type": "transform", "args": {"value": 1}}]
WEBHOOK = {"kind": "webhook", "verification": "github"}


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="triggers", organization_name="Triggers Org")


async def _workflow(client: httpx.AsyncClient, account: Account, name: str = "w") -> str:
    created = await client.post(
        "/api/workflows",
        json={"name": name, "definition": {"steps": STEPS}},
        headers=account.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _create(
    client: httpx.AsyncClient, account: Account, workflow_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"/api/workflows/{workflow_id}/triggers", json=body, headers=account.headers
    )


def _event(workflow_id: str, *status: str) -> dict[str, Any]:
    on: dict[str, Any] = {"workflow": workflow_id}
    if status:
        on["status"] = list(status)
    return {"kind": "event", "on": on}


async def test_an_admin_creates_a_webhook_trigger_and_sees_its_secret_once(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    created = await _create(
        client,
        owner,
        workflow_id,
        {**WEBHOOK, "response": "sync", "sync_timeout_seconds": 5, "description": "CI"},
    )
    assert created.status_code == 201, created.text
    trigger = created.json()
    assert created.headers["location"] == f"/api/triggers/{trigger['id']}"
    assert trigger["workflow_id"] == workflow_id
    assert (trigger["kind"], trigger["verification"], trigger["response"]) == (
        "webhook",
        "github",
        "sync",
    )
    assert (trigger["sync_timeout_seconds"], trigger["enabled"], trigger["on"]) == (5, True, None)
    assert trigger["url"] == f"/hooks/{trigger['id']}"
    assert trigger["created_by"] == str(owner.user_id)
    secret = trigger["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    for response in (
        await client.get(f"/api/triggers/{trigger['id']}", headers=owner.headers),
        await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers),
        await client.patch(
            f"/api/triggers/{trigger['id']}", json={"enabled": False}, headers=owner.headers
        ),
        await client.get("/api/audit-logs", headers=owner.headers),
        await client.get("/api/user/data-export", headers=owner.headers),
    ):
        assert response.status_code == 200, response.text
        assert secret not in response.text
        assert '"secret"' not in response.text
    listed = await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    assert [t["id"] for t in listed.json()] == [trigger["id"]]
    assert listed.json()[0]["enabled"] is False


async def test_an_event_trigger_watches_a_workflow_of_the_same_organization(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    watched = await _workflow(client, owner, "watched")
    created = await _create(client, owner, workflow_id, _event(watched, "failed", "succeeded"))
    assert created.status_code == 201, created.text
    trigger = created.json()
    assert trigger["on"] == {"workflow": watched, "status": ["failed", "succeeded"]}
    assert "secret" not in trigger
    assert (trigger["verification"], trigger["url"], trigger["response"]) == (None, None, None)
    default = await _create(client, owner, workflow_id, _event(watched))
    assert default.json()["on"]["status"] == ["succeeded"]

    stranger = await register(client, label="elsewhere", organization_name="Elsewhere")
    theirs = await _workflow(client, stranger)
    refused = await _create(client, owner, workflow_id, _event(theirs))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"].startswith("body.on.workflow:")
    assert refused.json()["error"]["details"]["errors"][0]["loc"] == ["body", "on", "workflow"]
    missing = await _create(client, owner, workflow_id, _event(str(uuid.uuid4())))
    assert missing.status_code == 422
    assert missing.json()["error"]["message"] == refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {**WEBHOOK, "sync_timeout_seconds": 31},
        {**WEBHOOK, "sync_timeout_seconds": 0},
        {**WEBHOOK, "verification": "hmac"},
        {"kind": "webhook"},
        {**WEBHOOK, "response": "later"},
        {**WEBHOOK, "secret": "mine"},
        {"kind": "event", "on": {"workflow": str(uuid.uuid4()), "status": []}},
        {"kind": "event", "on": {"workflow": str(uuid.uuid4()), "status": ["running"]}},
        {"kind": "event"},
        {"kind": "cron", "cron": "* * * * *"},
    ],
)
async def test_invalid_triggers_are_refused_with_422(
    client: httpx.AsyncClient, owner: Account, body: dict[str, Any]
) -> None:
    workflow_id = await _workflow(client, owner)
    response = await _create(client, owner, workflow_id, body)
    assert response.status_code == 422, response.text
    listed = await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    assert listed.json() == []


async def test_members_manage_event_triggers_and_only_admins_webhook_triggers(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    member = await add_member(client, owner, role="member")
    viewer = await add_member(client, owner, role="viewer")
    admin = await add_member(client, owner, role="admin")

    assert (await _create(client, member, workflow_id, WEBHOOK)).status_code == 403
    assert (await _create(client, viewer, workflow_id, _event(workflow_id))).status_code == 403
    event = await _create(client, member, workflow_id, _event(workflow_id))
    assert event.status_code == 201, event.text
    event_id = event.json()["id"]
    changed = await client.patch(
        f"/api/triggers/{event_id}", json={"on": {"status": ["failed"]}}, headers=member.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["on"]["status"] == ["failed"]

    webhook = await _create(client, admin, workflow_id, WEBHOOK)
    assert webhook.status_code == 201, webhook.text
    hook_id = webhook.json()["id"]
    for method, path, body in (
        ("PATCH", f"/api/triggers/{hook_id}", {"enabled": False}),
        ("DELETE", f"/api/triggers/{hook_id}", None),
        ("POST", f"/api/triggers/{hook_id}/rotate-secret", {}),
    ):
        response = await client.request(method, path, json=body, headers=member.headers)
        assert response.status_code == 403, (method, path, response.text)

    # Viewers read both kinds and their deliveries; no answer of theirs holds a secret.
    for path in (
        f"/api/workflows/{workflow_id}/triggers",
        f"/api/triggers/{hook_id}",
        f"/api/triggers/{hook_id}/deliveries",
    ):
        read = await client.get(path, headers=viewer.headers)
        assert read.status_code == 200, (path, read.text)
        assert webhook.json()["secret"] not in read.text
    assert (await client.get(f"/api/triggers/{hook_id}", headers=viewer.headers)).json()[
        "enabled"
    ] is True

    deleted = await client.delete(f"/api/triggers/{event_id}", headers=member.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/api/triggers/{event_id}", headers=owner.headers)).status_code == 404


async def test_changes_are_checked_against_the_triggers_kind(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    hook_id = (await _create(client, owner, workflow_id, WEBHOOK)).json()["id"]
    event_id = (await _create(client, owner, workflow_id, _event(workflow_id))).json()["id"]

    for trigger_id, body, where in (
        (hook_id, {"on": {"status": ["failed"]}}, ["body", "on"]),
        (event_id, {"verification": "stripe"}, ["body", "verification"]),
        (event_id, {"response": "sync"}, ["body", "response"]),
    ):
        refused = await client.patch(
            f"/api/triggers/{trigger_id}", json=body, headers=owner.headers
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"]["errors"][0]["loc"] == where

    changed = await client.patch(
        f"/api/triggers/{hook_id}",
        json={
            "verification": "standard",
            "response": "sync",
            "sync_timeout_seconds": 30,
            "description": "from Svix",
        },
        headers=owner.headers,
    )
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in ("verification", "response", "sync_timeout_seconds")} == {
        "verification": "standard",
        "response": "sync",
        "sync_timeout_seconds": 30,
    }
    assert changed.json()["description"] == "from Svix"
    cleared = await client.patch(
        f"/api/triggers/{hook_id}", json={"description": None}, headers=owner.headers
    )
    assert cleared.json()["description"] is None
    assert cleared.json()["verification"] == "standard"


async def test_rotating_gives_a_new_secret_and_keeps_the_old_one_for_the_overlap(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    created = (await _create(client, owner, workflow_id, WEBHOOK)).json()
    before = datetime.now(UTC)
    rotated = await client.post(
        f"/api/triggers/{created['id']}/rotate-secret",
        json={"overlap_seconds": 3600},
        headers=owner.headers,
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != created["secret"]
    expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
    assert before + timedelta(seconds=3590) < expires < before + timedelta(seconds=3660)
    default = await client.post(
        f"/api/triggers/{created['id']}/rotate-secret", json={}, headers=owner.headers
    )
    expires = datetime.fromisoformat(default.json()["previous_secret_expires_at"])
    assert expires > before + timedelta(hours=23)
    too_long = await client.post(
        f"/api/triggers/{created['id']}/rotate-secret",
        json={"overlap_seconds": 604_801},
        headers=owner.headers,
    )
    assert too_long.status_code == 422

    event_id = (await _create(client, owner, workflow_id, _event(workflow_id))).json()["id"]
    no_secret = await client.post(
        f"/api/triggers/{event_id}/rotate-secret", json={}, headers=owner.headers
    )
    assert no_secret.status_code == 409
    assert no_secret.json()["error"]["code"] == "trigger_has_no_secret"


async def test_every_change_is_audited_without_the_secret(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    created = (await _create(client, owner, workflow_id, WEBHOOK)).json()
    trigger_id = created["id"]
    await client.patch(
        f"/api/triggers/{trigger_id}", json={"enabled": False}, headers=owner.headers
    )
    rotated = await client.post(
        f"/api/triggers/{trigger_id}/rotate-secret", json={}, headers=owner.headers
    )
    await client.delete(f"/api/triggers/{trigger_id}", headers=owner.headers)
    logs = await client.get(
        "/api/audit-logs", params={"resource_type": "trigger"}, headers=owner.headers
    )
    assert logs.status_code == 200, logs.text
    entries = [e for e in logs.json()["items"] if e["resource_id"] == trigger_id]
    assert sorted(e["action"] for e in entries) == [
        "trigger.create",
        "trigger.delete",
        "trigger.rotate_secret",
        "trigger.update",
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["trigger.create"]["details"]["verification"] == "github"
    assert by_action["trigger.update"]["details"]["fields"] == ["enabled"]
    for secret in (created["secret"], rotated.json()["secret"]):
        assert secret not in logs.text


async def test_other_organizations_triggers_are_not_found(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner)
    hook_id = (await _create(client, owner, workflow_id, WEBHOOK)).json()["id"]
    stranger = await register(client, label="stranger", organization_name="Stranger Org")
    for method, path, body in (
        ("GET", f"/api/workflows/{workflow_id}/triggers", None),
        ("POST", f"/api/workflows/{workflow_id}/triggers", WEBHOOK),
        ("GET", f"/api/triggers/{hook_id}", None),
        ("PATCH", f"/api/triggers/{hook_id}", {"enabled": False}),
        ("DELETE", f"/api/triggers/{hook_id}", None),
        ("POST", f"/api/triggers/{hook_id}/rotate-secret", {}),
        ("GET", f"/api/triggers/{hook_id}/deliveries", None),
    ):
        response = await client.request(method, path, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)
    still = await client.get(f"/api/triggers/{hook_id}", headers=owner.headers)
    assert still.json()["enabled"] is True


@pytest.fixture
async def configured(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An app with PUBLIC_URL set and at most two triggers per organization."""
    settings = runtime.settings.model_copy(
        update={"public_url": "https://taskloom.example.com/", "max_triggers_per_org": 2}
    )
    app = create_app(runtime=dataclasses.replace(runtime, settings=settings))
    async with app.router.lifespan_context(app), asgi_client(app, ip="203.0.113.9") as client:
        yield client


async def test_the_url_is_absolute_under_public_url(configured: httpx.AsyncClient) -> None:
    owner = await register(configured, label="public", organization_name="Public Org")
    workflow_id = await _workflow(configured, owner)
    trigger = (await _create(configured, owner, workflow_id, WEBHOOK)).json()
    assert trigger["url"] == f"https://taskloom.example.com/hooks/{trigger['id']}"


async def test_an_organization_has_at_most_max_triggers_per_org(
    configured: httpx.AsyncClient,
) -> None:
    owner = await register(configured, label="capped", organization_name="Capped Org")
    workflow_id = await _workflow(configured, owner)
    assert (await _create(configured, owner, workflow_id, WEBHOOK)).status_code == 201
    assert (await _create(configured, owner, workflow_id, _event(workflow_id))).status_code == 201
    refused = await _create(configured, owner, workflow_id, WEBHOOK)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "trigger_limit"
    other = await register(configured, label="uncapped", organization_name="Other Org")
    assert (
        await _create(configured, other, await _workflow(configured, other), WEBHOOK)
    ).status_code == 201
