"""The principal cache: every change that ends or reduces someone's access is refused on the very
next request, in every API process, even with their principal cached (warm) in each.

Two apps on one database and Redis stand for two API processes: the change is made through one
(`client`), and the other (`other`) must refuse the next request although its cache was warm.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from taskloom.audit.service import AuditContext
from taskloom.auth import principal_cache
from taskloom.auth.models import ApiKey, Session
from taskloom.auth.password_changes import set_password
from taskloom.auth.principal_cache import PrincipalCache
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, add_member, login, register
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.orgs.test_invitations import statements_of
from tests.workers import create_workflow


@pytest.fixture
async def other_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with opened_runtime(settings) as opened:
        yield opened


@pytest.fixture
async def other(other_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A second API process: its own principal cache, the same database and Redis."""
    async with running_app(other_runtime) as app, asgi_client(app, ip="203.0.113.8") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth/me", headers=bearer(token))


async def warm(client: httpx.AsyncClient, runtime: Runtime, token: str) -> dict[str, object]:
    """Authenticate until the process answers from its cache (an API key's first use only
    learns its user); returns the last /auth/me."""
    for _ in range(2):
        answer = await me(client, token)
        assert answer.status_code == 200, answer.text
    entry = runtime.principals.get(PrincipalCache.digest(token))
    assert entry is not None, "the cache is not warm"
    assert entry.principal is not None, "the cache is not warm"
    body: dict[str, object] = answer.json()
    return body


async def warm_both(
    client: httpx.AsyncClient,
    runtime: Runtime,
    other: httpx.AsyncClient,
    other_runtime: Runtime,
    token: str,
) -> None:
    await warm(client, runtime, token)
    await warm(other, other_runtime, token)


async def new_key(client: httpx.AsyncClient, account: Account, role: str = "member") -> dict:
    created = await client.post(
        "/auth/api-keys", json={"name": "k", "role": role}, headers=account.headers
    )
    assert created.status_code == 201, created.text
    body: dict = created.json()
    return body


async def test_a_warm_entry_answers_without_postgresql_until_the_users_stamp_moves(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="cached")
    await warm(other, other_runtime, account.access_token)
    # Revoked behind the application's back (no code path does this): nothing is published,
    # so the warm process keeps answering from its cache; that is what the cache saves.
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(Session).where(Session.user_id == account.user_id).values(revoked_at=_now())
        )
    assert (await me(other, account.access_token)).status_code == 200
    # Moving the stamp in Redis (what every revocation path does) is enough, in any process.
    await principal_cache.bump(
        redis=runtime.redis,
        keys=runtime.keys,
        settings=runtime.settings,
        user_ids={account.user_id},
    )
    refused = await me(other, account.access_token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "session_revoked"


async def test_logout_refuses_the_next_request_everywhere(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="logout")
    await warm_both(client, runtime, other, other_runtime, account.access_token)
    assert (await client.post("/auth/logout", headers=account.headers)).status_code == 204
    for process in (other, client):
        refused = await me(process, account.access_token)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "session_revoked"


async def test_logout_all_refuses_every_session_of_the_person(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="logoutall")
    second = await login(client, account.email)
    await warm_both(client, runtime, other, other_runtime, second.access_token)
    assert (await client.post("/auth/logout-all", headers=account.headers)).status_code == 204
    assert (await me(other, second.access_token)).json()["error"]["code"] == "session_revoked"


async def test_refresh_token_reuse_refuses_the_sessions_access_tokens(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="reuse")
    rotated = (
        await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    ).json()
    await warm_both(client, runtime, other, other_runtime, rotated["access_token"])
    replay = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert replay.json()["error"]["code"] == "refresh_token_reused"
    refused = await me(other, rotated["access_token"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "session_revoked"


async def test_a_session_expires_by_the_local_clock_while_cached(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="expiry")
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(Session)
            .where(Session.user_id == account.user_id)
            .values(expires_at=_now() + timedelta(seconds=1.5))
        )
    await warm(other, other_runtime, account.access_token)
    await asyncio.sleep(1.6)
    refused = await me(other, account.access_token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"


async def test_switching_organization_refuses_the_old_token_and_serves_the_new_org(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="switch")
    second_org = await client.post("/api/orgs", json={"name": "Second"}, headers=owner.headers)
    assert second_org.status_code == 201, second_org.text
    second_id = second_org.json()["id"]
    await warm_both(client, runtime, other, other_runtime, owner.access_token)
    switched = await client.post(
        "/auth/switch-org", json={"org_id": second_id}, headers=owner.headers
    )
    assert switched.status_code == 200, switched.text
    stale = await me(other, owner.access_token)
    assert stale.status_code == 401
    assert stale.json()["error"]["code"] == "stale_token"
    fresh = await warm(other, other_runtime, switched.json()["access_token"])
    assert fresh["org_id"] == second_id


async def test_a_demotion_applies_to_the_next_request_of_sessions_and_keys(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="demoter")
    admin = await add_member(client, owner, "admin")
    key = (await new_key(client, admin, role="admin"))["key"]
    for token in (admin.access_token, key):
        await warm_both(client, runtime, other, other_runtime, token)
        assert (await me(other, token)).json()["role"] == "admin"
    demoted = await client.patch(
        f"/api/members/{admin.user_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert demoted.status_code == 200
    for token in (admin.access_token, key):
        assert (await me(other, token)).json()["role"] == "viewer"
        rename = await other.patch("/api/org", json={"name": "x"}, headers=bearer(token))
        assert rename.status_code == 403


async def test_a_removed_member_is_refused_at_once(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="remover")
    member = await add_member(client, owner, "member")
    key = (await new_key(client, member))["key"]
    for token in (member.access_token, key):
        await warm_both(client, runtime, other, other_runtime, token)
    listed = await other.get("/api/workflows", headers=member.headers)
    assert listed.status_code == 200
    removed = await client.delete(f"/api/members/{member.user_id}", headers=owner.headers)
    assert removed.status_code == 204
    session_read = await other.get("/api/workflows", headers=member.headers)
    assert session_read.status_code == 403  # signed in, but no role in the organization
    key_read = await other.get("/api/workflows", headers=bearer(key))
    assert key_read.status_code == 401
    assert key_read.json()["error"]["message"] == "the key's owner is no longer a member"


async def test_changing_ones_password_refuses_the_other_sessions(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="pwchange")
    second = await login(client, account.email)
    await warm_both(client, runtime, other, other_runtime, second.access_token)
    changed = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": PASSWORD + "-new"},
        headers=account.headers,
    )
    assert changed.status_code == 200, changed.text
    assert (await me(other, second.access_token)).json()["error"]["code"] == "session_revoked"
    assert (await me(other, account.access_token)).status_code == 200  # this one stays


async def test_an_operator_setting_a_password_refuses_every_session(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    account = await register(client, label="pwset")
    await warm_both(client, runtime, other, other_runtime, account.access_token)
    assert await set_password(
        runtime=runtime, email=account.email, new_password=PASSWORD + "-set", context=_cli()
    )
    assert (await me(other, account.access_token)).json()["error"]["code"] == "session_revoked"


async def test_a_revoked_api_key_is_refused_at_once(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="keyrevoke")
    created = await new_key(client, owner)
    await warm_both(client, runtime, other, other_runtime, created["key"])
    revoked = await client.delete(f"/auth/api-keys/{created['id']}", headers=owner.headers)
    assert revoked.status_code == 204
    refused = await me(other, created["key"])
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "invalid API key"


async def test_an_api_key_expires_by_the_local_clock_while_cached(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="keyexpiry")
    created = await new_key(client, owner)
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(created["id"]))
            .values(expires_at=_now() + timedelta(seconds=1.5))
        )
    await warm(other, other_runtime, created["key"])
    await asyncio.sleep(1.6)
    refused = await me(other, created["key"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"


async def test_erasure_refuses_the_persons_sessions_and_keys_at_once(
    client: httpx.AsyncClient, runtime: Runtime, other: httpx.AsyncClient, other_runtime: Runtime
) -> None:
    owner = await register(client, label="eraseowner")
    member = await add_member(client, owner, "member")
    key = (await new_key(client, member))["key"]
    for token in (member.access_token, key):
        await warm_both(client, runtime, other, other_runtime, token)
    erased = await client.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=member.headers,
    )
    assert erased.status_code == 200, erased.text
    for token in (member.access_token, key):
        assert (await me(other, token)).status_code == 401


def _now() -> datetime:
    return datetime.now(UTC)


def _cli() -> AuditContext:
    return AuditContext(user_agent="taskloom-cli")


async def test_a_cached_caller_costs_postgresql_no_authentication_statement(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="statements")
    key = (await new_key(client, owner))["key"]
    workflow = await create_workflow(
        client, owner, [{"id": "a", "type": "transform", "args": {"value": 1}}]
    )
    for token in (owner.access_token, key):
        await warm(client, runtime, token)
        with (
            statements_of(runtime.database.app_engine.sync_engine) as on_app,
            statements_of(runtime.database.system_engine.sync_engine) as on_system,
        ):
            answer = await client.get(f"/api/workflows/{workflow}", headers=bearer(token))
            assert answer.status_code == 200
        assert on_system == []  # no privileged transaction for an API key
        assert not [s for s in on_app if "sessions" in s or "api_keys" in s]
        # The workflow itself (the tenant's set_config goes on the asyncpg connection directly,
        # db/tenancy.py, unseen by SQLAlchemy's events).
        assert len(on_app) == 1
