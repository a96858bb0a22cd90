"""Erasure, at its edges: the export archive it must take along, an email that is a LIKE
pattern, two owners leaving at once, organizations named after the person, and the pseudonym
that keeps the audit trail readable without them."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from taskloom.audit import service as audit
from taskloom.db.tenancy import system_transaction
from taskloom.gdpr import archive
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, add_member, login, register, unique_email
from tests.gdpr.traces import scan_columns

ERASE = {"confirm": "DELETE", "password": PASSWORD}


async def _erase(client: httpx.AsyncClient, person: Account) -> httpx.Response:
    return await client.request("DELETE", "/api/user/account", json=ERASE, headers=person.headers)


async def _register(client: httpx.AsyncClient, email: str, display_name: str) -> Account:
    """Register with exactly this email and name, and no organization name (the default)."""
    response = await client.post(
        "/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": display_name},
    )
    assert response.status_code == 201, response.text
    data = response.json()
    return Account(
        email=email,
        password=PASSWORD,
        user_id=uuid.UUID(data["user_id"]),
        org_id=uuid.UUID(data["org_id"]),
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
    )


async def _rows(runtime: Runtime, query: str, **params: Any) -> list[Any]:
    async with runtime.database.system_engine.connect() as conn:
        return list((await conn.execute(text(query), params)).all())


async def _verifies(client: httpx.AsyncClient, owner: Account) -> dict[str, Any]:
    chain = await client.get("/api/audit-logs/verify", headers=owner.headers)
    assert chain.status_code == 200, chain.text
    body: dict[str, Any] = chain.json()
    assert body["ok"] is True, body
    return body


# --- finding 4: the export archive goes with the person ---------------------------------------


async def test_erasure_deletes_the_export_archive_and_its_link_answers_404(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    person = await register(client, label="archived", organization_name="Archive Org")
    queued = await client.post("/api/user/data-export", headers=person.headers)
    assert queued.status_code == 202, queued.text
    request_id = uuid.UUID(queued.json()["request_id"])
    await archive.build(runtime, request_id)  # what the worker's job does
    chunks = "select count(*) from gdpr_export_files where request_id = :r"
    assert (await _rows(runtime, chunks, r=request_id))[0][0] >= 1

    assert (await _erase(client, person)).status_code == 200

    assert (await _rows(runtime, chunks, r=request_id))[0][0] == 0
    requests = "select count(*) from gdpr_requests where id = :r"
    assert (await _rows(runtime, requests, r=request_id))[0][0] == 0
    link = await client.get(queued.json()["download_url"])
    assert link.status_code == 404, link.text
    assert link.json()["error"]["code"] == "not_found"


# --- finding 7: exact matches, never patterns ---------------------------------------------------


async def test_erasure_matches_the_email_exactly_not_as_a_like_pattern(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """`%@%.%` is a valid email; as a LIKE pattern it matches every audit row that mentions
    any email. Erasing its account must leave other organizations' rows verifiable."""
    bystander = await register(client, label="bystander", organization_name="Bystander Org")
    renamed = await client.patch(
        "/api/org", json={"name": "write to ops@example.test"}, headers=bystander.headers
    )
    assert renamed.status_code == 200, renamed.text
    wildcard = await _register(client, "%@%.%", "Wildcard")

    erased = await _erase(client, wildcard)
    assert erased.status_code == 200, erased.text

    chain = await _verifies(client, bystander)
    assert chain["redacted_rows"] == 0, chain
    unsalted = await _rows(
        runtime,
        "select action from audit_logs where org_id = :o and content_salt is null",
        o=bystander.org_id,
    )
    assert unsalted == []
    events = await client.get(
        "/api/audit-logs",
        params={"scope": "org", "action": "org.update"},
        headers=bystander.headers,
    )
    [event] = events.json()["items"]
    assert event["details"]["new"] == "write to ops@example.test"
    assert event["actor_user_id"] == str(bystander.user_id)


# --- finding 10: the last-owner check holds under concurrency -----------------------------------


async def _wait_for_lock_waiters(conn: asyncpg.Connection, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        # The statistics views keep one snapshot per transaction unless told to drop it.
        await conn.execute("select pg_stat_clear_snapshot()")
        waiting = await conn.fetchval(
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} sessions ever waited for a lock")


async def test_two_owners_erasing_themselves_at_once_leave_their_org_an_owner(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    first = await register(client, label="first-owner", organization_name="Two Owners")
    second = await add_member(client, first, "owner", label="second-owner")
    await add_member(client, first, "member", label="stays")
    # Hold the lock of the instance audit chain, where an erasure appends its `user.erased`
    # event last of all, after its ownership check: both erasures are then in flight at once
    # (waiting either on this lock or on each other) before either can commit.
    holder = await asyncpg.connect(runtime.settings.database_url)
    try:
        async with holder.transaction():
            await holder.execute(
                "select pg_advisory_xact_lock(hashtextextended('taskloom.audit:instance', 0))"
            )
            erasures = [asyncio.create_task(_erase(client, p)) for p in (first, second)]
            await _wait_for_lock_waiters(holder, 2, within=20)
        responses = await asyncio.wait_for(asyncio.gather(*erasures), 60)
    finally:
        await holder.close()

    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    [refused] = [r for r in responses if r.status_code == 409]
    assert refused.json()["error"]["code"] == "last_owner"
    owners = await _rows(
        runtime,
        "select user_id from memberships where org_id = :o and role = 'owner'",
        o=first.org_id,
    )
    assert len(owners) == 1


# --- finding 11: organizations named after the person ------------------------------------------


async def test_erasure_renames_organizations_that_carry_the_persons_default_name(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    name = f"Ysolde Varga {secrets.token_hex(3)}"
    subject = await _register(client, unique_email("ysolde"), name)
    default = f"{name}'s workspace"
    # Their registration's organization keeps its default name and slug...
    kept = await client.get("/api/org", headers=subject.headers)
    assert kept.json()["name"] == default
    co_owner = await add_member(client, subject, "owner", label="co-owner")
    # ... and a second one, given the same name, was renamed since (its slug stays).
    created = await client.post("/api/orgs", json={"name": default}, headers=subject.headers)
    assert created.status_code == 201, created.text
    renamed_id = uuid.UUID(created.json()["id"])
    in_renamed = await login(client, subject.email, org_id=renamed_id)
    patched = await client.patch("/api/org", json={"name": "Team B"}, headers=in_renamed.headers)
    assert patched.status_code == 200, patched.text
    co_owner_b = await add_member(client, in_renamed, "owner", label="co-owner-b")
    slug_base = re.sub(r"[^a-z0-9]+", "-", default.lower()).strip("-")
    needles = [name, slug_base]
    assert await scan_columns(runtime, needles)

    assert (await _erase(client, subject)).status_code == 200

    first = (await client.get("/api/org", headers=co_owner.headers)).json()
    assert first["name"] == f"Organization {subject.org_id.hex[:8]}"
    assert first["slug"].startswith(f"organization-{subject.org_id.hex[:8]}-")
    second = (await client.get("/api/org", headers=co_owner_b.headers)).json()
    assert second["name"] == "Team B"
    assert second["slug"].startswith(f"organization-{renamed_id.hex[:8]}-")
    assert await scan_columns(runtime, needles) == []
    await _verifies(client, co_owner)
    await _verifies(client, co_owner_b)


# --- the defence the suite claimed: pseudonymisation ------------------------------------------


async def test_erasure_pseudonymises_the_subjects_audit_rows_and_the_chain_still_verifies(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="chain-owner", organization_name="Chain Org")
    subject = await add_member(client, owner, "admin", label="chain-subject")
    created = await client.post(
        "/api/workflows",
        json={
            "name": "theirs",
            "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
        },
        headers=subject.headers,
    )
    assert created.status_code == 201, created.text
    # Rows they caused in chains that outlive them (their own organization goes entirely).
    caused = [
        row.id
        for row in await _rows(
            runtime,
            "select id from audit_logs where actor_user_id = :u and org_id = :o",
            u=subject.user_id,
            o=owner.org_id,
        )
    ]
    assert len(caused) >= 2  # signing in to the organization, creating the workflow
    about = await _rows(
        runtime, "select id from audit_logs where resource_id = :u", u=str(subject.user_id)
    )
    assert about  # the owner added them

    erased = await _erase(client, subject)
    assert erased.status_code == 200, erased.text
    pseudonym = erased.json()["pseudonym"]

    rows = await _rows(
        runtime,
        "select actor_user_id, actor_pseudonym, ip, user_agent, details::text as details, "
        "content_salt, redacted_at from audit_logs where id = any(:ids)",
        ids=caused,
    )
    assert len(rows) == len(caused)
    for row in rows:
        assert row.actor_pseudonym == pseudonym, row
        assert (row.actor_user_id, row.ip, row.user_agent) == (None, None, None), row
        assert subject.email not in row.details
        assert str(subject.user_id) not in row.details
        assert row.content_salt is None
        assert row.redacted_at is not None
    resources = await _rows(
        runtime,
        "select resource_id from audit_logs where id = any(:ids)",
        ids=[r.id for r in about],
    )
    assert {r.resource_id for r in resources} == {pseudonym}
    # What an auditor sees: the pseudonym as the actor of the subject's events...
    events = await client.get(
        "/api/audit-logs", params={"scope": "org", "limit": 1000}, headers=owner.headers
    )
    theirs = [e for e in events.json()["items"] if e["actor_pseudonym"] == pseudonym]
    assert {e["action"] for e in theirs} >= {"workflow.create"}
    # ... and both chains, the organization's and the instance's, still verify.
    chain = await _verifies(client, owner)
    assert chain["redacted_rows"] >= len(theirs)
    async with system_transaction(runtime.database) as session:
        instance = await audit.verify_chain(session=session, org_id=None)
    assert instance.ok, instance
