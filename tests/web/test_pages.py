"""The pages, as each role sees them: what renders, what is refused with a 403 page, what the
forms say when the services refuse their input, and that names are escaped."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionStep, WorkflowExecution
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, accept, add_member, invite, register
from tests.web.conftest import Browser
from tests.web.support import browser_for, post_form, sign_in, text_of

TRANSFORM = {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]}
ADMIN_PAGES = [
    "/ui/admin/members",
    "/ui/admin/connections",
    "/ui/admin/webhooks",
    "/ui/admin/flags",
    "/ui/admin/health",
]


async def _workflow(
    client: httpx.AsyncClient, account: Account, name: str = "wf", definition: object = TRANSFORM
) -> str:
    response = await client.post(
        "/api/workflows", json={"name": name, "definition": definition}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_failed_sign_in_says_so_and_keeps_the_email(
    new_browser: Browser, owner: Account
) -> None:
    browser = await new_browser()
    response = await post_form(
        browser, "/ui/login", {"email": owner.email, "password": "wrong password!"}
    )
    assert response.status_code == 401
    assert "invalid email or password" in text_of(response)
    assert f'value="{owner.email}"' in response.text
    assert "wrong password!" not in response.text
    assert (await browser.get("/ui/workflows")).status_code == 303  # still signed out


async def test_registering_in_the_ui_makes_you_owner_of_a_new_organization(
    new_browser: Browser,
) -> None:
    browser = await new_browser()
    email = f"ui-{uuid.uuid4().hex[:8]}@example.test"
    weak = await post_form(
        browser, "/ui/register", {"email": email, "display_name": "Ada", "password": "short"}
    )
    assert weak.status_code == 400
    assert "password must be at least 10 characters" in text_of(weak)
    response = await post_form(
        browser,
        "/ui/register",
        {
            "email": email,
            "display_name": "Ada",
            "organization_name": "Analytical",
            "password": PASSWORD,
        },
    )
    assert response.status_code == 303
    page = await browser.get(response.headers["location"])
    assert page.status_code == 200
    text = text_of(page)
    assert "Welcome!" in text
    assert "Analytical (owner)" in text
    assert "No workflows yet." in text  # the empty state
    taken = await post_form(
        await new_browser(),
        "/ui/register",
        {"email": email, "display_name": "Eve", "password": PASSWORD},
    )
    assert taken.status_code == 409
    assert "an account with this email already exists" in text_of(taken)


async def test_a_viewer_reads_but_gets_403_pages_for_writing_and_administration(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, name="Readable")
    viewer = await browser_for(new_browser, await add_member(client, owner, "viewer"))
    listing = await viewer.get("/ui/workflows")
    assert listing.status_code == 200
    assert "Readable" in listing.text
    assert "New workflow" not in listing.text
    assert "/ui/admin/" not in listing.text  # no administration links
    detail = await viewer.get(f"/ui/workflows/{workflow_id}")
    assert detail.status_code == 200
    assert "Run workflow" not in detail.text
    assert "Save changes" not in detail.text
    for path in ["/ui/workflows/new", *ADMIN_PAGES]:
        refused = await viewer.get(path)
        assert refused.status_code == 403, path
        assert "Not allowed" in refused.text, path
    org_scope = await viewer.get("/ui/audit?scope=org")
    assert org_scope.status_code == 403
    assert "needs the admin role" in text_of(org_scope)


async def test_a_member_writes_workflows_but_not_administration(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    member = await browser_for(new_browser, await add_member(client, owner, "member"))
    assert "New workflow" in (await member.get("/ui/workflows")).text
    assert (await member.get("/ui/workflows/new")).status_code == 200
    for path in ADMIN_PAGES:
        assert (await member.get(path)).status_code == 403, path


async def test_an_admin_sees_every_administration_page(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    admin = await browser_for(new_browser, await add_member(client, owner, "admin"))
    headings = {
        "/ui/admin/members": "Members of UI Org",
        "/ui/admin/connections": "No connections yet.",
        "/ui/admin/webhooks": "No webhooks yet.",
        "/ui/admin/flags": "Feature flags",
        "/ui/admin/health": "Circuit breakers",
    }
    for path, expected in headings.items():
        page = await admin.get(path)
        assert page.status_code == 200, path
        assert expected in text_of(page), path
    assert "owner-" in (await admin.get("/ui/admin/members")).text


async def test_a_workflow_named_like_a_script_is_shown_as_text(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    name = "<script>alert(1)</script>"
    workflow_id = await _workflow(client, owner, name=name)
    for path in ("/ui/workflows", f"/ui/workflows/{workflow_id}", "/ui/executions"):
        page = await owner_browser.get(path)
        assert page.status_code == 200
        assert "<script>" not in page.text, path
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;" in (await owner_browser.get("/ui/workflows")).text
    )


async def test_an_invalid_definition_is_explained_next_to_the_field_and_nothing_is_saved(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow(client, owner, name="Keep me")
    path = f"/ui/workflows/{workflow_id}"
    unknown_type = '{"steps": [{"id": "a", "type": "teleport", "args": {}}]}'
    response = await post_form(owner_browser, path, {"name": "Renamed", "definition": unknown_type})
    assert response.status_code == 422
    text = text_of(response)
    assert "definition.steps.0.type" in text
    assert "unknown step type 'teleport'" in text
    assert (
        'aria-invalid="true" aria-describedby="definition-hint definition-error"' in response.text
    )
    broken = await post_form(owner_browser, path, {"name": "Renamed", "definition": '{"steps": ['})
    assert broken.status_code == 422
    assert "not valid JSON" in text_of(broken)
    assert "line 1" in text_of(broken)
    shape = await post_form(owner_browser, path, {"name": "Renamed", "definition": '{"steps": []}'})
    assert shape.status_code == 422
    assert "definition.steps" in text_of(shape)
    stored = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert (stored["name"], stored["version"]) == ("Keep me", 1)


async def test_creating_and_running_a_workflow_from_the_ui_queues_a_live_execution(
    owner_browser: httpx.AsyncClient,
) -> None:
    created = await post_form(
        owner_browser,
        "/ui/workflows/new",
        {
            "name": "From the UI",
            "definition": json.dumps(
                {"steps": [{"id": "t", "type": "transform", "args": {"value": "{{ input.x }}"}}]}
            ),
        },
    )
    assert created.status_code == 303
    workflow_path = created.headers["location"].split("?")[0]
    not_an_object = await post_form(
        owner_browser, f"{workflow_path}/run", {"input": "[1, 2]"}, from_page=workflow_path
    )
    assert not_an_object.status_code == 422
    assert "valid dictionary" in text_of(not_an_object)
    run = await post_form(
        owner_browser, f"{workflow_path}/run", {"input": '{"x": 42}'}, from_page=workflow_path
    )
    assert run.status_code == 303
    detail = await owner_browser.get(run.headers["location"])
    assert detail.status_code == 200
    assert '<meta http-equiv="refresh" content="2">' in detail.text  # queued: no worker here
    assert "Status: queued" in text_of(detail)
    listing = await owner_browser.get("/ui/executions?status=queued")
    assert "From the UI" in listing.text
    assert '<meta http-equiv="refresh"' in listing.text
    assert "No executions match" in (await owner_browser.get("/ui/executions?status=failed")).text


async def test_an_execution_shows_its_steps_outputs_and_the_tokens_and_cost_of_ai_steps(
    client: httpx.AsyncClient,
    owner_browser: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
) -> None:
    workflow_id = await _workflow(client, owner, name="Summarise")
    accepted = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=owner.headers
    )
    execution_id = uuid.UUID(accepted.json()["execution_id"])
    now = datetime.now(UTC)
    # What a worker records for a finished `ai` step (no worker runs in this test).
    async with system_transaction(runtime.database) as db:
        db.add(
            ExecutionStep(
                org_id=owner.org_id,
                execution_id=execution_id,
                step_id="summary",
                position=0,
                type="ai",
                status="succeeded",
                output={
                    "text": "A short summary.",
                    "model": "claude-test",
                    "provider": "anthropic",
                    "usage": {"input_tokens": 1234, "output_tokens": 56, "cost_usd": "0.004321"},
                },
                attempts=1,
                started_at=now,
                finished_at=now,
            )
        )
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == execution_id)
            .values(status="succeeded", output={"done": True}, started_at=now, finished_at=now)
        )
    page = await owner_browser.get(f"/ui/executions/{execution_id}")
    text = text_of(page)
    assert "Status: succeeded" in text
    assert "claude-test (anthropic)" in text
    assert "1234 in · 56 out" in text
    assert "US$ 0.004321" in text
    assert "A short summary." in text
    assert 'http-equiv="refresh"' not in page.text  # finished: no more reloading


async def test_privacy_names_the_organizations_that_block_erasure(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    await add_member(client, owner, "member")
    wrong = await post_form(
        owner_browser,
        "/ui/privacy/delete",
        {"confirm": "delete", "password": PASSWORD},
        from_page="/ui/privacy",
    )
    assert wrong.status_code == 422
    assert "type DELETE (in capitals) to confirm" in text_of(wrong)
    bad_password = await post_form(
        owner_browser,
        "/ui/privacy/delete",
        {"confirm": "DELETE", "password": "not it"},
        from_page="/ui/privacy",
    )
    assert bad_password.status_code == 401
    assert "the password is not correct" in text_of(bad_password)
    blocked = await post_form(
        owner_browser,
        "/ui/privacy/delete",
        {"confirm": "DELETE", "password": PASSWORD},
        from_page="/ui/privacy",
    )
    assert blocked.status_code == 409
    text = text_of(blocked)
    assert "Transfer ownership first" in text
    assert "UI Org (1 other member)" in text
    assert (await owner_browser.get("/ui/workflows")).status_code == 200  # nothing was erased


async def test_download_my_data_streams_the_export_as_an_attachment(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    await _workflow(client, owner, name="Exported workflow")
    response = await post_form(
        owner_browser, "/ui/privacy/export", {"format": "json"}, from_page="/ui/privacy"
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="taskloom-export-'
    )
    assert owner.email in response.text
    assert "Exported workflow" in response.text


async def test_the_audit_log_filters_and_admins_read_their_organization(
    client: httpx.AsyncClient,
    new_browser: Browser,
    owner_browser: httpx.AsyncClient,
    owner: Account,
) -> None:
    await _workflow(client, owner, name="Audited")
    mine = await owner_browser.get("/ui/audit?action=workflow.create")
    assert mine.status_code == 200
    assert "workflow.create" in mine.text
    assert "auth.login" not in mine.text.split("<tbody>")[-1]
    org = await owner_browser.get("/ui/audit?scope=org")
    assert org.status_code == 200
    assert "The whole organization" in org.text
    backwards = await owner_browser.get("/ui/audit?from=2030-01-02T00:00&to=2030-01-01T00:00")
    assert backwards.status_code == 400
    assert "`from` is after `to`" in text_of(backwards)
    verified = await post_form(owner_browser, "/ui/audit/verify", {}, from_page="/ui/audit")
    assert "audit chain verifies" in text_of(verified)


async def test_switching_organization_changes_what_the_pages_show(
    client: httpx.AsyncClient, new_browser: Browser
) -> None:
    person = await register(client, label="switcher", organization_name="First Org")
    second = await client.post("/api/orgs", json={"name": "Second Org"}, headers=person.headers)
    assert second.status_code == 201
    await _workflow(client, person, name="Only in the first")
    browser = await browser_for(new_browser, person)
    assert "Only in the first" in (await browser.get("/ui/workflows")).text
    switched = await post_form(
        browser, "/ui/switch-org", {"org_id": second.json()["id"]}, from_page="/ui/workflows"
    )
    assert switched.status_code == 303
    page = await browser.get(switched.headers["location"])
    assert "Organization switched." in page.text
    assert "Only in the first" not in page.text
    assert "No workflows yet." in page.text


async def test_members_page_changes_roles_and_explains_refusals(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    member = await add_member(client, owner, "member")
    changed = await post_form(
        owner_browser,
        f"/ui/admin/members/{member.user_id}/role",
        {"role": "admin"},
        from_page="/ui/admin/members",
    )
    assert changed.status_code == 303
    roles = (await client.get("/api/members", headers=owner.headers)).json()
    assert {m["user_id"]: m["role"] for m in roles}[str(member.user_id)] == "admin"
    as_owner = await post_form(
        owner_browser, "/ui/admin/members", {"email": "boss@example.test", "role": "owner"}
    )
    assert as_owner.status_code == 422
    assert "an invitation cannot make someone an owner" in text_of(as_owner)
    assert "boss@example.test" in as_owner.text  # the form keeps what was typed


async def test_members_page_invites_lists_and_revokes_the_same_way_for_any_address(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    registered = await register(client, label="registered")
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    for email in (registered.email, unknown):
        invited = await post_form(
            owner_browser, "/ui/admin/members", {"email": email, "role": "viewer"}
        )
        assert invited.status_code == 303, invited.text
        assert invited.headers["location"] == "/ui/admin/members?notice=invitation-created"
    page = await owner_browser.get("/ui/admin/members?notice=invitation-created")
    text = text_of(page)
    assert "Invitation created." in text
    assert f"{registered.email} viewer" in text
    assert f"{unknown} viewer" in text
    assert "Invite someone" in text
    assert '<option value="owner"' not in page.text.split('id="member-role"')[1]
    assert str(registered.user_id) not in [
        m["user_id"] for m in (await client.get("/api/members", headers=owner.headers)).json()
    ]
    [pending] = [
        i
        for i in (await client.get("/api/members/invitations", headers=owner.headers)).json()
        if i["email"] == unknown
    ]
    revoked = await post_form(
        owner_browser,
        f"/ui/admin/members/invitations/{pending['id']}/revoke",
        {},
        from_page="/ui/admin/members",
    )
    assert revoked.status_code == 303
    after = text_of(await owner_browser.get("/ui/admin/members"))
    assert unknown not in after
    assert registered.email in after


async def test_an_invited_person_accepts_or_declines_on_their_invitations_page(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    person = await register(client, label="invitee", organization_name="Home Org")
    other = await register(client, label="other-host", organization_name="Other Org")
    joining = await invite(client, owner, person.email, "member")
    await invite(client, other, person.email, "viewer")
    browser = await new_browser()
    await sign_in(browser, person.email)
    page = await browser.get("/ui/invitations")
    assert page.status_code == 200
    text = text_of(page)
    assert "UI Org member" in text
    assert "Other Org viewer" in text
    assert 'href="/ui/invitations"' in page.text  # in the navigation
    # Forms carry the CSRF token: without it, nothing happens.
    forged = await browser.post(f"/ui/invitations/{joining}/accept", data={})
    assert forged.status_code == 403
    accepted = await post_form(
        browser, f"/ui/invitations/{joining}/accept", {}, from_page="/ui/invitations"
    )
    assert accepted.status_code == 303
    after = await browser.get(accepted.headers["location"])
    assert "Invitation accepted" in text_of(after)
    assert "UI Org (member)" in text_of(after)  # the organization switcher offers it now
    [declining] = (await client.get("/api/invitations", headers=person.headers)).json()
    declined = await post_form(
        browser, f"/ui/invitations/{declining['id']}/decline", {}, from_page="/ui/invitations"
    )
    assert declined.status_code == 303
    assert "No invitations waiting for you." in text_of(await browser.get("/ui/invitations"))
    members = (await client.get("/api/members", headers=other.headers)).json()
    assert str(person.user_id) not in [m["user_id"] for m in members]


async def test_someone_elses_invitation_is_not_found_in_the_ui(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    person = await register(client, label="addressee")
    invitation_id = await invite(client, owner, person.email)
    stranger = await register(client, label="interloper")
    browser = await new_browser()
    await sign_in(browser, stranger.email)
    assert "UI Org" not in text_of(await browser.get("/ui/invitations"))
    for answer in ("accept", "decline"):
        refused = await post_form(
            browser, f"/ui/invitations/{invitation_id}/{answer}", {}, from_page="/ui/invitations"
        )
        assert refused.status_code == 404, answer
        assert "invitation not found" in text_of(refused)
    await accept(client, person, invitation_id)  # untouched
