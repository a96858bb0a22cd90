"""Every mutating request and every auth event leaves an audit row, in the same transaction,
with actor, ip, user agent and request id; the org's chain verifies afterwards."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from taskloom.audit.models import AuditLog
from taskloom.audit.service import verify_chain
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import add_member, register


async def _org_rows(runtime: Runtime, org_id: uuid.UUID) -> list[AuditLog]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(AuditLog).where(AuditLog.org_id == org_id).order_by(AuditLog.seq)
        )
        return list(rows.scalars())


async def test_a_series_of_actions_is_audited_and_the_chain_verifies(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="audited")
    headers = {**owner.headers, "User-Agent": "audit-test/1.0", "X-Request-ID": "audit-req-0001"}
    member = await add_member(client, owner, "member")
    await client.patch(f"/api/members/{member.user_id}", json={"role": "viewer"}, headers=headers)
    key = (await client.post("/auth/api-keys", json={"name": "k"}, headers=headers)).json()
    await client.delete(f"/auth/api-keys/{key['id']}", headers=headers)
    await client.patch("/api/org", json={"name": "Audited Org"}, headers=headers)
    await client.delete(f"/api/members/{member.user_id}", headers=headers)
    bad = await client.post("/auth/login", json={"email": owner.email, "password": "nope"})
    assert bad.status_code == 401
    await client.post("/auth/logout", headers=headers)

    rows = await _org_rows(runtime, owner.org_id)  # type: ignore[arg-type]
    actions = [r.action for r in rows]
    assert actions == [
        "auth.register",
        "member.invite",
        "member.invite_accept",  # written by the new member, into this organization's chain
        "auth.login",  # the new member signs in to this organization
        "member.role_change",
        "api_key.create",
        "api_key.revoke",
        "org.update",
        "member.remove",
        "auth.login_failed",
        "auth.logout",
    ]
    by_action = {r.action: r for r in rows}
    change = by_action["member.role_change"]
    assert change.actor_user_id == owner.user_id
    assert change.resource_id == str(member.user_id)
    assert change.details == {"from": "member", "to": "viewer"}
    assert str(change.ip) == "203.0.113.7"
    assert change.user_agent == "audit-test/1.0"
    assert change.request_id == "audit-req-0001"
    assert change.success is True
    failed = by_action["auth.login_failed"]
    assert failed.success is False
    assert failed.actor_user_id == owner.user_id

    async with system_transaction(runtime.database) as db:
        result = await verify_chain(session=db, org_id=owner.org_id)
    assert result.ok, result
    assert result.rows_checked == len(rows)


async def test_a_refused_mutation_leaves_no_audit_row(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="refused")
    before = len(await _org_rows(runtime, owner.org_id))  # type: ignore[arg-type]
    demote_last_owner = await client.patch(
        f"/api/members/{owner.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert demote_last_owner.status_code == 409
    assert len(await _org_rows(runtime, owner.org_id)) == before  # type: ignore[arg-type]


async def test_unknown_email_failures_go_to_the_instance_chain(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    email = f"ghost-{uuid.uuid4().hex[:8]}@example.test"
    response = await client.post("/auth/login", json={"email": email, "password": "whatever"})
    assert response.status_code == 401
    async with system_transaction(runtime.database) as db:
        last = (
            await db.execute(
                select(AuditLog)
                .where(AuditLog.org_id.is_(None))
                .order_by(AuditLog.seq.desc())
                .limit(1)
            )
        ).scalar_one()
        assert last.action == "auth.login_failed"
        assert last.actor_user_id is None
        assert email not in str(last.details)  # the attempted email is not stored
        assert (await verify_chain(session=db, org_id=None)).ok


async def test_an_api_key_reads_only_its_own_organizations_events_of_its_creator(
    client: httpx.AsyncClient,
) -> None:
    """`scope=me` through a session: the person's events in every organization. Through an API
    key, which is bound to one organization: that organization's rows only."""
    person = await register(client, label="two-orgs", organization_name="Key Org A")
    key = await client.post(
        "/auth/api-keys", json={"name": "bound to A", "role": "admin"}, headers=person.headers
    )
    assert key.status_code == 201, key.text
    other = await client.post("/api/orgs", json={"name": "Key Org B"}, headers=person.headers)
    assert other.status_code == 201, other.text
    org_b = uuid.UUID(other.json()["id"])
    switched = await client.post(
        "/auth/switch-org", json={"org_id": str(org_b)}, headers=person.headers
    )
    in_b = {"Authorization": f"Bearer {switched.json()['access_token']}"}
    await client.patch("/api/org", json={"name": "Key Org B, renamed"}, headers=in_b)

    mine = await client.get("/api/audit-logs?scope=me&limit=1000", headers=in_b)
    assert {row["org_id"] for row in mine.json()["items"]} >= {str(person.org_id), str(org_b)}

    as_key = {"Authorization": f"Bearer {key.json()['key']}"}
    listed = await client.get("/api/audit-logs?scope=me&limit=1000", headers=as_key)
    assert listed.status_code == 200, listed.text
    orgs = {row["org_id"] for row in listed.json()["items"]}
    assert orgs == {str(person.org_id)}
