"""The web UI's cross-tenant check, generated from the app's route table (`app.routes`; the UI's
pages are not in the OpenAPI document that test_authorization_matrix.py walks).

Another organization's owner, signed in through the UI's cookie session and sending a valid
CSRF token with every form, calls every /ui route that takes a path parameter, with every
method it accepts, using the real ids of organization A's resources: every route that takes an
organization's id answers 404 and shows nothing of A, and nothing of A changes (every row of
every table with an `org_id`, compared before and after). A new /ui route with a path parameter
this test does not know fails it until the parameter is classified below.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import insert, text

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ApprovalStatus, ExecutionApproval
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, make_superuser, register, unique_email
from tests.web.support import csrf_of, sign_in

# Path parameters that name one organization's things: another organization gets 404.
TENANT_IDS = {
    "workflow_id",
    "execution_id",
    "user_id",
    "connection_id",
    "webhook_id",
    "invitation_id",
    "approval_id",
    "schedule_id",
    "trigger_id",
}
# Flags are the instance's (docs/FLAGS.md): any organization's admin may set its own override of
# any flag. Walked too, with A's overridden flag: A's override must not change.
# Single sign-on providers and their group mappings are the instance's too, and only instance
# administrators reach their pages: walked with A's mapping, which must not change.
GLOBAL_IDS = {"key", "slug", "mapping_id"}
# Not ids at all: the stylesheet's file name, the "no such page" fallback, and a version number
# within a workflow (whose id is the one checked; A's workflow has a version 1).
NOT_IDS = {
    ("/ui/static/{name}", "name"),
    ("/ui/{rest}", "rest"),
    ("/ui/workflows/{workflow_id}/versions/{number}/restore", "number"),
}

# Valid forms, so that each check reaches the lookup (a form refused first would answer 422).
FORMS: dict[tuple[str, str], dict[str, str]] = {
    ("POST", "/ui/workflows/{workflow_id}"): {
        "name": "stranger's",
        "definition": '{"steps": [{"id": "t", "type": "transform", "args": {"value": 2}}]}',
    },
    ("POST", "/ui/workflows/{workflow_id}/run"): {"input": "{}"},
    ("POST", "/ui/workflows/{workflow_id}/enabled"): {"enabled": "false"},
    ("POST", "/ui/workflows/{workflow_id}/schedules"): {"cron": "* * * * *", "input": "{}"},
    ("POST", "/ui/workflows/{workflow_id}/schedules/{schedule_id}/enabled"): {"enabled": "false"},
    ("POST", "/ui/workflows/{workflow_id}/triggers"): {"kind": "webhook", "verification": "token"},
    ("POST", "/ui/workflows/{workflow_id}/triggers/{trigger_id}/rotate-secret"): {
        "overlap_hours": "1"
    },
    ("POST", "/ui/admin/members/{user_id}/role"): {"role": "viewer"},
    ("POST", "/ui/admin/webhooks/{webhook_id}/enabled"): {"enabled": "false"},
    ("POST", "/ui/admin/webhooks/{webhook_id}/rotate-secret"): {"overlap_hours": "1"},
    ("POST", "/ui/admin/flags/{key}/override"): {"enabled": "false", "reason": "stranger"},
    ("POST", "/ui/admin/flags/{key}"): {"description": "stranger", "rollout_percentage": ""},
}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass(frozen=True)
class UiOperation:
    method: str
    path: str  # as declared, e.g. /ui/workflows/{workflow_id}
    params: tuple[str, ...]

    @property
    def tenant(self) -> bool:
        return any(p in TENANT_IDS for p in self.params)


def ui_operations(app: FastAPI) -> list[UiOperation]:
    """Every (method, path) of a /ui route with a path parameter, from the live route table."""
    found = []
    for route in iter_route_contexts(app.routes):
        path = route.path_format or ""
        params = tuple(_PARAM.findall(path))
        if not path.startswith("/ui/") or not params:
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append(UiOperation(method, path, params))
    return found


def _unclassified(ops: list[UiOperation]) -> list[str]:
    return [
        f"{op.method} {op.path}: {{{name}}}"
        for op in ops
        for name in op.params
        if name not in TENANT_IDS | GLOBAL_IDS and (op.path, name) not in NOT_IDS
    ]


async def _snapshot(
    runtime: Runtime, org_id: uuid.UUID, flag_key: str, sso_slug: str
) -> dict[str, list[str]]:
    """Every row of organization A in every table that has an org_id, its organization row,
    the flag (the instance's) whose override A set, and the provider that maps into A."""
    rows: dict[str, list[str]] = {}
    async with system_transaction(runtime.database) as db:
        tables = (
            await db.execute(
                text(
                    "select table_name from information_schema.columns where table_schema = "
                    "'public' and column_name = 'org_id' order by table_name"
                )
            )
        ).scalars()
        for table in list(tables):
            found = await db.execute(
                text(f'select row_to_json(t)::text from "{table}" t where org_id = :org'),
                {"org": org_id},
            )
            rows[table] = sorted(found.scalars())
        for label, query, value in (
            (
                "organizations",
                "select row_to_json(t)::text from organizations t where id = :v",
                org_id,
            ),
            (
                "feature_flags",
                "select row_to_json(t)::text from feature_flags t where key = :v",
                flag_key,
            ),
            (
                "sso_providers",
                "select row_to_json(t)::text from sso_providers t where slug = :v",
                sso_slug,
            ),
        ):
            rows[label] = sorted((await db.execute(text(query), {"v": value})).scalars())
    return rows


@pytest.fixture
async def stranger_browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.23", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        yield browser


async def _organization_a(
    client: httpx.AsyncClient, runtime: Runtime, marker: str
) -> tuple[Account, dict[str, str]]:
    """Organization A with one of each thing a /ui path names, each carrying `marker`."""
    owner = await register(client, label="ui-a", organization_name=f"Org {marker}")
    headers = owner.headers
    created = [
        await client.post(
            "/api/workflows",
            json={
                "name": f"workflow {marker}",
                "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
            },
            headers=headers,
        )
    ]
    workflow_id = created[0].json()["id"]
    created.append(
        await client.post(
            f"/api/workflows/{workflow_id}/execute", json={"input": {"m": marker}}, headers=headers
        )
    )
    created.append(
        await client.post(
            "/api/connections",
            json={"provider": "github", "name": f"gh-{marker}", "credentials": {"token": "t"}},
            headers=headers,
        )
    )
    created.append(
        await client.post(
            "/api/webhooks",
            json={"url": f"https://example.com/{marker}", "events": ["ping"]},
            headers=headers,
        )
    )
    root = await make_superuser(client, runtime)
    flag_key = f"ui-walk-{marker}"
    created.append(
        await client.post("/api/admin/flags", json={"key": flag_key}, headers=root.headers)
    )
    created.append(
        await client.put(
            f"/api/flags/{flag_key}/overrides/org",
            json={"enabled": True, "reason": marker},
            headers=headers,
        )
    )
    sso_slug = f"ui-walk-{marker}"
    created.append(  # disabled: the sign-in page of other tests does not offer it
        await client.post(
            "/api/admin/sso/providers",
            json={
                "slug": sso_slug,
                "display_name": f"IdP {marker}",
                "issuer": "https://idp.example.test",
                "client_id": "taskloom",
                "client_secret": marker,
                "enabled": False,
            },
            headers=root.headers,
        )
    )
    created.append(
        await client.post(
            f"/api/admin/sso/providers/{sso_slug}/mappings",
            json={"group": marker, "org_id": str(owner.org_id), "role": "member"},
            headers=root.headers,
        )
    )
    created.append(  # an open invitation of A's, to someone who is not organization B's owner
        await client.post(
            "/api/members",
            json={"email": unique_email("ui-a-invitee"), "role": "member"},
            headers=headers,
        )
    )
    created.append(
        await client.post(
            f"/api/workflows/{workflow_id}/schedules",
            json={"cron": "0 3 * * *", "input": {"m": marker}},
            headers=headers,
        )
    )
    created.append(
        await client.post(
            f"/api/workflows/{workflow_id}/triggers",
            json={"kind": "webhook", "verification": "token", "description": marker},
            headers=headers,
        )
    )
    for response in created:
        assert response.status_code in (200, 201, 202), response.text
    member = await add_member(client, owner, role="member", label="ui-a-member")
    execution_id = created[1].json()["execution_id"]
    async with system_transaction(runtime.database) as db:  # what an approval step asks
        approval_id = await db.scalar(
            insert(ExecutionApproval)
            .values(
                org_id=owner.org_id,
                execution_id=uuid.UUID(execution_id),
                step_id="t",
                approvers={"role": "member"},  # B's owner would be one, were it A's member
                message=f"approve {marker}?",
                status=ApprovalStatus.PENDING,
                timeout_at=datetime.now(UTC) + timedelta(hours=1),
            )
            .returning(ExecutionApproval.id)
        )
    return owner, {
        "workflow_id": workflow_id,
        "execution_id": execution_id,
        "approval_id": str(approval_id),
        "connection_id": created[2].json()["id"],
        "webhook_id": created[3].json()["id"],
        "user_id": str(member.user_id),
        "invitation_id": created[8].json()["invitation_id"],
        "schedule_id": created[9].json()["id"],
        "trigger_id": created[10].json()["id"],
        "key": flag_key,
        "slug": sso_slug,
        "mapping_id": created[7].json()["id"],
        "number": "1",
    }


async def _call(
    browser: httpx.AsyncClient, op: UiOperation, ids: dict[str, str], csrf: str
) -> httpx.Response:
    url = _PARAM.sub(lambda m: ids[m.group(1)], op.path)
    if op.method == "GET":
        return await browser.get(url)
    form: dict[str, Any] = {**FORMS.get((op.method, op.path), {}), "csrf_token": csrf}
    return await browser.request(op.method, url, data=form)


async def test_another_organizations_ids_are_not_found_on_any_ui_page_and_nothing_changes(
    client: httpx.AsyncClient,
    app: FastAPI,
    runtime: Runtime,
    stranger_browser: httpx.AsyncClient,
) -> None:
    ops = ui_operations(app)
    assert not _unclassified(ops), (
        "a /ui route takes a path parameter this test does not know: add it to TENANT_IDS (and "
        "an id of organization A for it) or GLOBAL_IDS:\n" + "\n".join(_unclassified(ops))
    )
    walked = [op for op in ops if op.tenant or GLOBAL_IDS & set(op.params)]
    assert sum(op.tenant for op in walked) >= 15, walked  # the whole UI, not an empty table

    marker = uuid.uuid4().hex[:12]
    owner_a, ids = await _organization_a(client, runtime, marker)
    assert owner_a.org_id is not None
    assert ids.keys() >= TENANT_IDS | GLOBAL_IDS
    stranger = await register(client, label="ui-b", organization_name="Org B")
    await sign_in(stranger_browser, stranger.email)
    csrf = csrf_of(await stranger_browser.get("/ui/workflows"))
    before = await _snapshot(runtime, owner_a.org_id, ids["key"], ids["slug"])

    problems = []
    for op in walked:
        response = await _call(stranger_browser, op, ids, csrf)
        status = response.status_code
        if status >= 500 or (status == 403 and "Form expired" in response.text):
            problems.append(f"{op.method} {op.path}: {status} (a bug or a refused CSRF token)")
        elif op.tenant and status != 404:
            problems.append(f"{op.method} {op.path}: {status}, expected 404")
        if marker in response.text:
            problems.append(f"{op.method} {op.path}: shows organization A's data")
    assert not problems, "\n".join(problems)

    assert await _snapshot(runtime, owner_a.org_id, ids["key"], ids["slug"]) == before
    # The ids were real: organization A's owner sees its pages.
    browser_a = stranger_browser
    browser_a.cookies.clear()
    await sign_in(browser_a, owner_a.email)
    for path in (
        f"/ui/workflows/{ids['workflow_id']}",
        f"/ui/admin/webhooks/{ids['webhook_id']}",
        f"/ui/approvals/{ids['approval_id']}",
        f"/ui/workflows/{ids['workflow_id']}/triggers",
    ):
        page = await browser_a.get(path)
        assert page.status_code == 200, path
        assert marker in page.text
