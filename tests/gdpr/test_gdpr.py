"""GDPR: the export holds every row about a person (checked against the database catalog), and
erasure leaves no trace of them anywhere while everyone else's data stays intact."""

from __future__ import annotations

import io
import json
import secrets
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, text

from taskloom.auth import ratelimit
from taskloom.executions.queue import ExecutionQueue
from taskloom.gdpr import archive
from taskloom.models import metadata
from taskloom.redis import Cache
from taskloom.runtime import Runtime
from tests.db.test_tenant_isolation import Side, row_for
from tests.factories import (
    PASSWORD,
    Account,
    accept,
    add_member,
    invite,
    login,
    register,
    unique_email,
)
from tests.gdpr.traces import scan_binary, scan_columns, scan_redis


def _unique_ip() -> str:
    """An address no other test uses, so a scan for it finds only this subject's traces."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::7"


@dataclass
class World:
    subject: Account
    subject_name: str
    owner: Account  # owner of the shared org, where the subject is an admin
    co_member: Account
    shared_org: uuid.UUID
    solo_org: uuid.UUID
    workflow_id: str
    execution_id: str
    seeded: dict[str, int] = field(default_factory=dict)


def _client(app: FastAPI, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def subject_ip() -> str:
    return _unique_ip()


@pytest.fixture
async def subject_client(app: FastAPI, subject_ip: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, subject_ip) as client:
        yield client


async def _user_tables(runtime: Runtime) -> dict[str, list[str]]:
    """From the catalog: every table with a column referencing users(id), and those columns."""
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select c.conrelid::regclass::text as tab, a.attname as col "
                "from pg_constraint c "
                "join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey) "
                "where c.contype = 'f' and c.confrelid = 'public.users'::regclass"
            )
        )
        found: dict[str, list[str]] = {"users": ["id"]}
        for tab, col in rows:
            found.setdefault(tab, []).append(col)
    return found


async def _count_rows_about(runtime: Runtime, user_id: uuid.UUID) -> dict[str, int]:
    counts = {}
    async with runtime.database.system_engine.connect() as conn:
        for table, columns in (await _user_tables(runtime)).items():
            where = " or ".join(f"{c} = :u" for c in columns)
            counts[table] = (
                await conn.execute(
                    text(f"select count(*) from {table} where {where}"), {"u": user_id}
                )
            ).scalar_one()
    return counts


@pytest.fixture
async def world(
    client: httpx.AsyncClient, subject_client: httpx.AsyncClient, runtime: Runtime
) -> World:
    name = f"Zebulon Quixote {secrets.token_hex(3)}"
    subject = await register(subject_client, label="subject", organization_name="Solo Space")
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("update users set display_name = :n where id = :u"),
            {"n": name, "u": subject.user_id},
        )
    owner = await register(client, label="owner", organization_name="Shared Space")
    co_member = await add_member(client, owner, "member", label="co")
    # The subject accepts an invitation (which holds their address) from their own address.
    await accept(subject_client, subject, await invite(client, owner, subject.email, "admin"))
    # The subject works in the shared organization.
    in_shared = await login(subject_client, subject.email, org_id=owner.org_id)
    sent = await subject_client.post(
        "/api/members", json={"email": unique_email("invitee")}, headers=in_shared.headers
    )
    assert sent.status_code == 202, sent.text
    key = await subject_client.post(
        "/auth/api-keys", json={"name": "laptop", "role": "member"}, headers=in_shared.headers
    )
    assert key.status_code == 201, key.text
    wf = await subject_client.post(
        "/api/workflows",
        json={
            "name": "subject's workflow",
            "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
        },
        headers=in_shared.headers,
    )
    assert wf.status_code == 201, wf.text
    org_secret = await subject_client.post(
        "/api/secrets",
        json={
            "name": "SUBJECT_SECRET",
            "value": "gdpr-secret-value",
            "allowed_hosts": ["a.example"],
        },
        headers=in_shared.headers,
    )
    assert org_secret.status_code == 201, org_secret.text
    execution = await subject_client.post(
        f"/api/workflows/{wf.json()['id']}/execute",
        json={"input": {"contact": subject.email, "who": name}},
        headers=in_shared.headers,
    )
    assert execution.status_code == 202
    bad = await subject_client.post(
        "/auth/login", json={"email": subject.email, "password": "wrong password!"}
    )
    assert bad.status_code == 401
    # Tables no API writes yet: seeded directly, as the isolation tests do.
    flag_id, provider_id = uuid.uuid4(), uuid.uuid4()
    async with runtime.database.system_engine.connect() as conn:
        session_id = (
            await conn.execute(
                text("select id from sessions where user_id = :u limit 1"),
                {"u": subject.user_id},
            )
        ).scalar_one()
    side = Side(
        label="S",
        org_id=owner.org_id,
        user_id=subject.user_id,
        co_member_id=co_member.user_id,
        flag_id=flag_id,
        provider_id=provider_id,
        session_id=session_id,
        execution_id=uuid.UUID(execution.json()["execution_id"]),
        workflow_id=uuid.UUID(wf.json()["id"]),
    )
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            insert(metadata.tables["feature_flags"]).values(
                id=flag_id, key=f"gdpr-{secrets.token_hex(6)}", created_by=subject.user_id
            )
        )
        await conn.execute(
            insert(metadata.tables["sso_providers"]).values(
                id=provider_id,
                slug=f"gdpr-{secrets.token_hex(6)}",
                display_name="GDPR IdP",
                issuer="https://idp.example.test",
                client_id="gdpr",
                secret_key_id="gdpr",
                secret_encrypted=b"\x01ciphertext",
                scopes=["openid"],
                algorithms=["RS256"],
            )
        )
        await conn.execute(
            text("update organizations set sso_break_glass_user_id = :u where id = :o"),
            {"u": subject.user_id, "o": owner.org_id},
        )
        secret = {
            "tool_connections": "encrypted_credentials",
            "webhook_endpoints": "encrypted_secret",
            "workflow_triggers": "encrypted_secret",
        }
        for table in (
            "ai_usage",
            "tool_connections",
            "webhook_endpoints",
            "workflow_schedules",
            "workflow_triggers",
            "gdpr_requests",
            "execution_approvals",
            "sso_identities",
            "sso_sessions",
        ):
            row = row_for(table, side)
            if table in secret:
                row[secret[table]] = b"\x01ciphertext"
            await conn.execute(insert(metadata.tables[table]).values(row))
        override = {**row_for("feature_flag_overrides", side), "user_id": subject.user_id}
        await conn.execute(insert(metadata.tables["feature_flag_overrides"]).values(override))
    return World(
        subject=in_shared,
        subject_name=name,
        owner=owner,
        co_member=co_member,
        shared_org=owner.org_id,
        solo_org=subject.org_id,
        workflow_id=wf.json()["id"],
        execution_id=execution.json()["execution_id"],
        seeded=await _count_rows_about(runtime, subject.user_id),
    )


# --- export ----------------------------------------------------------------------------------


async def test_export_holds_every_row_of_every_table_that_references_users(
    world: World, subject_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    response = await subject_client.get("/api/user/data-export", headers=world.subject.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "attachment" in response.headers["content-disposition"]
    document = response.json()
    assert document["schema_version"] == 2
    assert document["subject_user_id"] == str(world.subject.user_id)

    about = await _count_rows_about(runtime, world.subject.user_id)
    empty = sorted(t for t, n in world.seeded.items() if n == 0)
    assert empty == [], f"seed the subject a row in {empty} so the export test covers it"
    references = [r["type"] for r in document["references"]]
    for table, count in about.items():
        assert table in document["tables"], f"the export omits {table}"
        assert len(document["tables"][table]) + references.count(table) == count, table
    # The subject is still an admin of the shared organization: what they wrote there is whole.
    for table in (
        "workflows",
        "tool_connections",
        "webhook_endpoints",
        "workflow_schedules",
        "workflow_triggers",
        "org_secrets",
    ):
        assert table not in references, table
    # A flag is the instance's, readable only by instance administrators, which they are not.
    assert references == ["feature_flags"]
    # Rows that belong to rows about the subject: the steps of executions they started.
    assert "execution_steps" in document["tables"]


async def test_secrets_are_never_exported(world: World, subject_client: httpx.AsyncClient) -> None:
    document = (
        await subject_client.get("/api/user/data-export", headers=world.subject.headers)
    ).json()
    tables = document["tables"]
    assert tables["users"][0]["password_hash"] == "[redacted]"
    assert all(k["key_hash"] == "[redacted]" for k in tables["api_keys"])
    assert all(t["token_hash"] == "[redacted]" for t in tables["refresh_tokens"])
    assert all(c["encrypted_credentials"] == "[redacted]" for c in tables["tool_connections"])
    assert all(w["encrypted_secret"] == "[redacted]" for w in tables["webhook_endpoints"])
    assert all(t["encrypted_secret"] == "[redacted]" for t in tables["workflow_triggers"])
    assert all(s["tokens_encrypted"] == "[redacted]" for s in tables["sso_sessions"])
    [org_secret] = tables["org_secrets"]
    assert org_secret["name"] == "SUBJECT_SECRET"
    assert org_secret["encrypted_value"] == "[redacted]"
    text_of_export = json.dumps(document)
    assert "gdpr-secret-value" not in text_of_export
    assert "$argon2" not in text_of_export
    assert tables["users"][0]["email"] == world.subject.email


async def test_zip_export_has_one_file_per_table_and_a_readme(
    world: World, subject_client: httpx.AsyncClient
) -> None:
    response = await subject_client.get(
        "/api/user/data-export", params={"format": "zip"}, headers=world.subject.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    assert {"manifest.json", "README.md", "tables/users.json", "tables/sessions.json"} <= names
    manifest = json.loads(archive.read("manifest.json"))
    for name, count in manifest["row_counts"].items():
        assert len(json.loads(archive.read(f"tables/{name}.json"))) == count
    readme = archive.read("README.md").decode()
    assert "`password_hash`" in readme
    assert "never exported" in readme


# --- erasure ---------------------------------------------------------------------------------


async def test_erasure_leaves_no_trace_and_spares_everyone_else(
    world: World,
    subject_client: httpx.AsyncClient,
    subject_ip: str,
    client: httpx.AsyncClient,
    runtime: Runtime,
) -> None:
    subject = world.subject
    cache = Cache(runtime.redis, runtime.keys, "tools")
    await cache.set(f"user:{subject.user_id}", "search", {"hits": 1}, ttl_seconds=600)
    # A queued export, built as the worker does: the archive waits in gdpr_export_files.
    queued = await subject_client.post("/api/user/data-export", headers=subject.headers)
    assert queued.status_code == 202, queued.text
    export_id = uuid.UUID(queued.json()["request_id"])
    await archive.build(runtime, export_id)
    needles = [subject.email, str(subject.user_id), world.subject_name, subject_ip]
    # Sign-in counters keyed by IP address stay until they expire, under an HMAC of the address
    # (never the address itself), so the IP is scanned for in Redis too.
    in_redis = [subject.email, str(subject.user_id), world.subject_name, subject_ip]
    failures = ratelimit.account_key(
        settings=runtime.settings, keys=runtime.keys, email=subject.email
    )
    assert await scan_columns(runtime, needles)  # the scans find them before
    assert await scan_binary(runtime, needles)
    assert await scan_redis(runtime, in_redis[:3])
    assert await runtime.redis.exists(failures)

    erased = await subject_client.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=subject.headers,
    )
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["deleted_organizations"] == [str(world.solo_org)]
    assert body["pseudonym"].startswith("erased-")

    assert await scan_columns(runtime, needles) == []
    assert await scan_binary(runtime, needles) == []
    assert await scan_redis(runtime, in_redis) == []
    assert not await runtime.redis.exists(failures)
    # The export's link is dead, its archive and its job gone.
    assert (await subject_client.get(queued.json()["download_url"])).status_code == 404
    assert await runtime.queues["gdpr"].queue.getJobState(str(export_id)) == "unknown"
    # Their tokens stop working at once.
    assert (await subject_client.get("/auth/me", headers=subject.headers)).status_code == 401
    # Their queued execution is cancelled, its job gone; their Redis keys are gone.
    owner = world.owner
    execution = await client.get(f"/api/executions/{world.execution_id}", headers=owner.headers)
    assert execution.json()["status"] == "cancelled"
    assert execution.json()["triggered_by"] is None
    assert await ExecutionQueue(runtime).state(uuid.UUID(world.execution_id)) == "unknown"
    # ...and its place in the fair scheduler is given back at once, not by the reconciler later.
    assert world.execution_id not in await runtime.fair.running(owner.org_id)  # type: ignore[arg-type]
    assert await cache.get(f"user:{subject.user_id}", "search") is None
    # Everyone else's data is intact, and the shared organization's chain still verifies.
    workflow = await client.get(f"/api/workflows/{world.workflow_id}", headers=owner.headers)
    assert workflow.status_code == 200
    assert workflow.json()["created_by"] is None
    members = await client.get("/api/members", headers=owner.headers)
    assert {m["user_id"] for m in members.json()} == {
        str(owner.user_id),
        str(world.co_member.user_id),
    }
    chain = await client.get("/api/audit-logs/verify", headers=owner.headers)
    assert chain.status_code == 200
    assert chain.json()["ok"] is True, chain.json()
    assert chain.json()["redacted_rows"] > 0
    events = await client.get(
        "/api/audit-logs",
        params={"scope": "org", "action": "user.erased"},
        headers=owner.headers,
    )
    [event] = events.json()["items"]
    assert event["resource_id"] == body["pseudonym"]
    assert event["details"]["rows"]["sessions"] >= 1


async def test_erasure_needs_confirmation_and_the_password(
    subject_client: httpx.AsyncClient,
) -> None:
    person = await register(subject_client, label="careful", organization_name="Careful Org")
    for payload, status in [
        ({"password": PASSWORD}, 422),
        ({"confirm": "yes", "password": PASSWORD}, 422),
        ({"confirm": "DELETE", "password": "not my password"}, 401),
    ]:
        response = await subject_client.request(
            "DELETE", "/api/user/account", json=payload, headers=person.headers
        )
        assert response.status_code == status, (payload, response.text)
    assert (await subject_client.get("/auth/me", headers=person.headers)).status_code == 200


async def test_the_last_owner_of_a_shared_org_gets_409_and_nothing_changes(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="sole-owner", organization_name="Needs An Owner")
    await add_member(client, owner, "admin", label="helper")
    before = await _count_rows_about(runtime, owner.user_id)
    response = await client.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=owner.headers,
    )
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "last_owner"
    assert [o["name"] for o in error["details"]["organizations"]] == ["Needs An Owner"]
    assert "transfer ownership" in error["message"]
    after = await _count_rows_about(runtime, owner.user_id)
    assert {t: n for t, n in after.items() if t != "audit_logs"} == {
        t: n for t, n in before.items() if t != "audit_logs"
    }
    assert (await client.get("/auth/me", headers=owner.headers)).status_code == 200


# --- audit-log API ---------------------------------------------------------------------------


async def test_audit_log_filters_pages_and_scopes(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="auditor", organization_name="Audited Org")
    member = await add_member(client, owner, "member", label="audited")
    for name in ("a", "b", "c"):
        await client.post(
            "/api/workflows",
            json={
                "name": name,
                "definition": {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]},
            },
            headers=owner.headers,
        )
    created = await client.get(
        "/api/audit-logs",
        params={"action": "workflow.create", "limit": 2},
        headers=owner.headers,
    )
    assert created.status_code == 200, created.text
    page = created.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = await client.get(
        "/api/audit-logs",
        params={"action": "workflow.create", "limit": 2, "cursor": page["next_cursor"]},
        headers=owner.headers,
    )
    assert len(rest.json()["items"]) == 1
    assert rest.json()["next_cursor"] is None

    by_offset = await client.get(
        "/api/audit-logs",
        params={"action": "workflow.create", "limit": 2, "offset": 2},
        headers=owner.headers,
    )
    assert [e["id"] for e in by_offset.json()["items"]] == [e["id"] for e in rest.json()["items"]]
    newest = page["items"][0]["created_at"]
    window = await client.get(
        "/api/audit-logs",
        params={"action": "workflow.create", "from": newest, "to": newest},
        headers=owner.headers,
    )
    assert [e["id"] for e in window.json()["items"]] == [page["items"][0]["id"]]
    future = await client.get(
        "/api/audit-logs", params={"from": "2099-01-01T00:00:00Z"}, headers=owner.headers
    )
    assert future.json()["items"] == []

    mine = await client.get("/api/audit-logs", headers=member.headers)
    assert {e["actor_user_id"] for e in mine.json()["items"]} == {str(member.user_id)}
    denied = await client.get("/api/audit-logs", params={"scope": "org"}, headers=member.headers)
    assert denied.status_code == 403
    org_wide = await client.get("/api/audit-logs", params={"scope": "org"}, headers=owner.headers)
    assert {e["actor_user_id"] for e in org_wide.json()["items"]} >= {
        str(owner.user_id),
        str(member.user_id),
    }
    reads = await client.get(
        "/api/audit-logs", params={"action": "audit.read"}, headers=owner.headers
    )
    assert reads.json()["items"], "reading the audit log is audited"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"action": "workflow.teleport"}, "invalid_action"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_range"),
        ({"cursor": "garbage"}, "invalid_cursor"),
        ({"limit": 0}, "validation_failed"),
        ({"limit": 1001}, "validation_failed"),
        ({"from": "yesterday"}, "validation_failed"),
    ],
)
async def test_invalid_audit_filters_are_400s(
    client: httpx.AsyncClient, params: dict[str, Any], code: str
) -> None:
    person = await register(client, label="filters", organization_name="Filter Org")
    response = await client.get("/api/audit-logs", params=params, headers=person.headers)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] == code
    if code == "invalid_action":
        assert "workflow.create" in response.json()["error"]["message"]


async def test_exports_are_rate_limited_with_retry_after(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    person = await register(client, label="eager", organization_name="Eager Org")
    limit = runtime.settings.gdpr_export_max_per_hour
    for _ in range(limit):
        ok = await client.get("/api/user/data-export", headers=person.headers)
        assert ok.status_code == 200
    limited = await client.get("/api/user/data-export", headers=person.headers)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["retry-after"]) <= 3600
    assert limited.json()["error"]["code"] == "rate_limited"


async def test_an_expired_export_link_is_gone_and_its_archive_purged(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    person = await register(client, label="late", organization_name="Late Org")
    queued = (await client.post("/api/user/data-export", headers=person.headers)).json()
    request_id = uuid.UUID(queued["request_id"])
    await archive.build(runtime, request_id)  # what the worker's job does
    async with runtime.database.system_engine.begin() as conn:
        chunks = "select count(*) from gdpr_export_files where request_id = :r"
        assert (await conn.execute(text(chunks), {"r": request_id})).scalar_one() >= 1
        await conn.execute(
            text("update gdpr_requests set expires_at = now() - interval '1 minute' where id = :r"),
            {"r": request_id},
        )
    expired = await client.get(queued["download_url"])
    assert expired.status_code == 410
    assert expired.json()["error"]["code"] == "link_expired"
    assert await archive.purge_expired(runtime) >= 1
    async with runtime.database.system_engine.connect() as conn:
        assert (await conn.execute(text(chunks), {"r": request_id})).scalar_one() == 0


async def test_the_application_role_cannot_read_export_archives(runtime: Runtime) -> None:
    async with runtime.database.app_engine.connect() as conn:
        with pytest.raises(Exception, match="permission denied"):
            await conn.execute(text("select count(*) from gdpr_export_files"))


async def test_a_short_display_name_cannot_scrub_other_peoples_audit_rows(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Erasure finds audit rows by the person's id and email, never by a name anyone can pick."""
    bystander = await register(client, label="bystander", organization_name="Elsewhere e e")
    await client.patch("/api/org", json={"name": "everyone sees e"}, headers=bystander.headers)
    eraser = await register(client, label="eraser", organization_name="Eraser Org")
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("update users set display_name = 'e' where id = :u"), {"u": eraser.user_id}
        )
    erased = await client.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=eraser.headers,
    )
    assert erased.status_code == 200, erased.text
    chain = await client.get("/api/audit-logs/verify", headers=bystander.headers)
    assert chain.json() == {**chain.json(), "ok": True, "redacted_rows": 0}
