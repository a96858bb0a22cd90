"""The authorization matrix, generated from the app's route table (its OpenAPI document): every
route x {anonymous, viewer, member, admin, owner, other-org owner, revoked session, API key,
instance admin} must behave as the access level declared next to the route
(`openapi_extra=access(...)`, see taskloom/auth/access.py). A route without a declaration fails.

"Allowed" means the route did not refuse the caller (no 401/403): ids in paths are random, so an
allowed call answers 404 or 422 and changes nothing. Then the other organization's owner calls
every route that takes an id with the real ids of organization A's resources: 404 everywhere,
never another organization's data. No call may answer 5xx.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskloom.auth.access import ACCESS_KEY
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, login, make_superuser, register

ROLE_ORDER = ["viewer", "member", "admin", "owner"]
# Calls that end the caller's own session run last, each with a fresh sign-in.
ENDS_SESSION = {("POST", "/auth/logout"), ("POST", "/auth/logout-all")}
# Path parameters that are no organization's id (global things; a step and an item index
# inside an execution, and a version number inside a workflow, whose id is checked): no
# cross-tenant check of their own.
GLOBAL_PARAMS = {"key", "org_id", "step_id", "index", "version"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    level: str
    api_key: bool
    params: tuple[str, ...]


@dataclass
class Caller:
    name: str
    headers: dict[str, str]
    role: str | None = None  # role in the caller's current organization
    api_key: bool = False
    superuser: bool = False
    authenticated: bool = True
    account: Account | None = None


def operations(app: FastAPI) -> list[Operation]:
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, spec in methods.items():
            declared = spec.get(ACCESS_KEY)
            assert declared is not None, (
                f"{method.upper()} {path} declares no access level: add "
                "openapi_extra=access(...) next to the route (taskloom/auth/access.py)"
            )
            params = tuple(p["name"] for p in spec.get("parameters", []) if p["in"] == "path")
            found.append(
                Operation(method.upper(), path, declared["level"], declared["api_key"], params)
            )
    return found


def expected_allowed(op: Operation, caller: Caller) -> bool | None:
    """True: not refused; False: refused (401 or 403); None: anything but 5xx."""
    if op.level == "public":
        return None
    if not caller.authenticated:
        return False
    if caller.api_key and not op.api_key:
        return False
    if op.level == "superuser":
        return caller.superuser
    if op.level == "authenticated":
        return True
    if caller.role is None:
        return False
    return ROLE_ORDER.index(caller.role) >= ROLE_ORDER.index(op.level)


def _url(op: Operation, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], op.path)


def _random_values() -> dict[str, str]:
    values = {name: str(uuid.uuid4()) for name in ("workflow_id", "execution_id", "key_id")}
    values.update(
        {
            name: str(uuid.uuid4())
            for name in (
                "user_id",
                "request_id",
                "connection_id",
                "webhook_id",
                "org_id",
                "override_id",
                "invitation_id",
                "trigger_id",
                "schedule_id",
                "mapping_id",
            )
        }
    )
    values["key"] = "matrix-no-such-flag"
    values["secret_name"] = "MATRIX_NO_SUCH_SECRET"
    values["slug"] = "matrix-no-such-provider"  # an SSO provider
    # Not ids: a step of the execution named beside them (the approve/reject routes), a
    # for-each item's index, and a workflow's version number.
    values["step_id"] = "t"
    values["index"] = "0"
    values["version"] = "1"  # every workflow has its version 1
    return values


# Valid bodies for routes that take both an id and a body, so the cross-tenant check reaches
# the lookup (an invalid body would answer 422 first).
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/api/workflows/{workflow_id}"): {
        "name": "x",
        "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
    },
    ("POST", "/api/workflows/{workflow_id}/execute"): {"input": {}},
    ("PATCH", "/api/workflows/{workflow_id}"): {"enabled": True},
    ("PATCH", "/api/members/{user_id}"): {"role": "member"},
    ("PUT", "/api/flags/{key}/overrides/users/{user_id}"): {"enabled": True},
    ("POST", "/api/webhooks/{webhook_id}/rotate-secret"): {"overlap_seconds": 0},
    ("POST", "/api/workflows/{workflow_id}/triggers"): {"kind": "webhook", "verification": "token"},
    ("POST", "/api/triggers/{trigger_id}/rotate-secret"): {"overlap_seconds": 0},
    ("POST", "/api/workflows/{workflow_id}/schedules"): {"cron": "0 0 1 1 *"},
    ("PUT", "/api/secrets/{secret_name}"): {"value": "matrix-value", "allowed_hosts": []},
    ("PUT", "/api/ai/workflows/{workflow_id}/budget"): {"monthly_budget_usd": "1.00"},
}


async def _call(
    client: httpx.AsyncClient,
    op: Operation,
    caller: Caller,
    values: dict[str, str],
    *,
    valid_body: bool = False,
) -> httpx.Response:
    body = {} if op.method in ("POST", "PUT", "PATCH") else None
    if valid_body:
        body = VALID_BODIES.get((op.method, op.path), body)
    return await client.request(op.method, _url(op, values), json=body, headers=caller.headers)


@pytest.fixture
async def callers(client: httpx.AsyncClient, runtime: Runtime) -> dict[str, Caller]:
    owner = await register(client, label="owner", organization_name="Matrix A")
    found = {
        "anonymous": Caller("anonymous", {}, authenticated=False),
        "owner": Caller("owner", owner.headers, role="owner", account=owner),
    }
    for role in ("viewer", "member", "admin"):
        person = await add_member(client, owner, role=role)
        found[role] = Caller(role, person.headers, role=role, account=person)
    other = await register(client, label="other", organization_name="Matrix B")
    # Owner of their own organization: role checks pass there; A's ids must still be invisible.
    found["other-org owner"] = Caller("other-org owner", other.headers, role="owner", account=other)
    revoked = await add_member(client, owner, role="admin", label="revoked")
    assert (await client.post("/auth/logout", headers=revoked.headers)).status_code == 204
    found["revoked session"] = Caller("revoked session", revoked.headers, authenticated=False)
    key = await client.post(
        "/auth/api-keys", json={"name": "matrix", "role": "admin"}, headers=owner.headers
    )
    assert key.status_code == 201, key.text
    found["API key"] = Caller(
        "API key", {"Authorization": f"Bearer {key.json()['key']}"}, role="admin", api_key=True
    )
    root = await make_superuser(client, runtime)
    found["instance admin"] = Caller("instance admin", root.headers, superuser=True, account=root)
    return found


def _verdict(op: Operation, caller: Caller, response: httpx.Response) -> str | None:
    status = response.status_code
    if status >= 500:
        return f"{caller.name}: {status} (a 5xx is a bug)"
    allowed = expected_allowed(op, caller)
    if allowed is True and status in (401, 403):
        return f"{caller.name}: refused with {status}, expected to be let through"
    if allowed is False:
        wanted = 401 if not caller.authenticated else 403
        if status != wanted:
            return f"{caller.name}: {status}, expected {wanted}"
    return None


async def test_every_route_treats_every_caller_as_declared(
    client: httpx.AsyncClient, app: FastAPI, callers: dict[str, Caller]
) -> None:
    problems: list[str] = []
    ops = operations(app)
    values = _random_values()
    ordered = [op for op in ops if (op.method, op.path) not in ENDS_SESSION]
    for op in ordered:
        for caller in callers.values():
            verdict = _verdict(op, caller, await _call(client, op, caller, values))
            if verdict:
                problems.append(f"{op.method} {op.path} — {verdict}")
    for op in (op for op in ops if (op.method, op.path) in ENDS_SESSION):
        for caller in callers.values():
            fresh = await _fresh(client, caller)
            verdict = _verdict(op, fresh, await _call(client, op, fresh, values))
            if verdict:
                problems.append(f"{op.method} {op.path} — {verdict}")
    assert not problems, "\n".join(problems)
    assert len(ops) >= 70  # the whole API was walked, not an empty schema


async def _fresh(client: httpx.AsyncClient, caller: Caller) -> Caller:
    """A new session for the same person and organization (the old one may have ended)."""
    if caller.account is None or not caller.authenticated or caller.api_key:
        return caller
    org_id = caller.account.org_id if caller.role else None
    again = await login(client, caller.account.email, org_id=org_id)
    return Caller(
        caller.name,
        again.headers,
        role=caller.role,
        superuser=caller.superuser,
        account=caller.account,
    )


async def _resources_of_a(client: httpx.AsyncClient, callers: dict[str, Caller]) -> dict[str, str]:
    """Real ids of organization A's things, one per path parameter."""
    owner = callers["owner"]
    assert owner.account is not None
    headers = owner.headers
    workflow = await client.post(
        "/api/workflows",
        json={
            "name": "w",
            "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
        },
        headers=headers,
    )
    workflow_id = workflow.json()["id"]
    execution = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=headers
    )
    connection = await client.post(
        "/api/connections",
        json={"provider": "github", "name": "gh", "credentials": {"token": "t"}},
        headers=headers,
    )
    webhook = await client.post(
        "/api/webhooks",
        json={"url": "https://example.com/hook", "events": ["ping"]},
        headers=headers,
    )
    trigger = await client.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "github"},
        headers=headers,
    )
    schedule = await client.post(
        f"/api/workflows/{workflow_id}/schedules", json={"cron": "0 0 1 1 *"}, headers=headers
    )
    secret = await client.post(
        "/api/secrets", json={"name": "MATRIX_SECRET", "value": "matrix-value"}, headers=headers
    )
    key = await client.post("/auth/api-keys", json={"name": "k"}, headers=headers)
    export = await client.post("/api/user/data-export", headers=headers)
    # An invitation of A's to someone else: B's owner can neither answer nor revoke it.
    invitation = await client.post(
        "/api/members", json={"email": "matrix-invitee@example.test"}, headers=headers
    )
    created = (
        workflow,
        execution,
        connection,
        webhook,
        trigger,
        schedule,
        key,
        export,
        invitation,
        secret,
    )
    for response in created:
        assert response.status_code in (201, 202), response.text
    member = callers["member"].account
    assert member is not None
    return {
        "workflow_id": workflow_id,
        "execution_id": execution.json()["execution_id"],
        "connection_id": connection.json()["id"],
        "webhook_id": webhook.json()["id"],
        "key_id": key.json()["id"],
        "request_id": export.json()["request_id"],
        "user_id": str(member.user_id),
        "invitation_id": invitation.json()["invitation_id"],
        "trigger_id": trigger.json()["id"],
        "schedule_id": schedule.json()["id"],
        "secret_name": secret.json()["name"],
    }


def _cross_tenant(ops: list[Operation]) -> Iterator[Operation]:
    for op in ops:
        tenant_params = [p for p in op.params if p not in GLOBAL_PARAMS]
        if tenant_params and op.level not in ("public", "superuser"):
            yield op


async def test_another_organizations_ids_are_not_found_anywhere(
    client: httpx.AsyncClient, app: FastAPI, callers: dict[str, Caller]
) -> None:
    values = {**_random_values(), **await _resources_of_a(client, callers)}
    stranger = callers["other-org owner"]
    problems = []
    for op in _cross_tenant(operations(app)):
        response = await _call(client, op, stranger, values, valid_body=True)
        if response.status_code != 404:
            problems.append(f"{op.method} {op.path}: {response.status_code} {response.text[:120]}")
    assert not problems, "\n".join(problems)
    # Organization A's things are all still there.
    owner = callers["owner"]
    for path in (
        f"/api/workflows/{values['workflow_id']}",
        f"/api/webhooks/{values['webhook_id']}",
        f"/api/triggers/{values['trigger_id']}",
        f"/api/schedules/{values['schedule_id']}",
        f"/api/secrets/{values['secret_name']}",
    ):
        assert (await client.get(path, headers=owner.headers)).status_code == 200
