"""/api/flags/{key}/overrides: organization admins override flags in their own organization only;
evaluations are cached in Redis and every change invalidates them at once."""

from __future__ import annotations

import io
import json
import secrets
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import insert, select, text

from taskloom.db.tenancy import tenant_transaction
from taskloom.flags import evaluation
from taskloom.flags.models import FeatureFlag, FeatureFlagOverride
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, make_superuser, register


@pytest.fixture
async def root(client: httpx.AsyncClient, runtime: Runtime) -> Account:
    return await make_superuser(client, runtime)


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="owner", organization_name="Override Org")


@pytest.fixture
async def member(client: httpx.AsyncClient, owner: Account) -> Account:
    return await add_member(client, owner, "member")


@pytest.fixture
async def key(client: httpx.AsyncClient, root: Account) -> str:
    flag_key = f"override.{secrets.token_hex(5)}"
    created = await client.post("/api/admin/flags", json={"key": flag_key}, headers=root.headers)
    assert created.status_code == 201, created.text
    return flag_key


async def state(client: httpx.AsyncClient, who: Account, key: str) -> dict[str, Any]:
    response = await client.get("/api/flags", params={"keys": key}, headers=who.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["flags"][key]
    return result


async def put(client: httpx.AsyncClient, who: Account, path: str, **body: Any) -> httpx.Response:
    return await client.put(path, json=body, headers=who.headers)


async def test_an_org_admin_overrides_a_flag_for_the_organization_and_for_one_member(
    client: httpx.AsyncClient, owner: Account, member: Account, key: str
) -> None:
    admin = await add_member(client, owner, "admin")
    org = await put(client, admin, f"/api/flags/{key}/overrides/org", enabled=True, reason="pilot")
    assert org.status_code == 200, org.text
    assert org.json() | {"id": None, "created_at": None} == {
        "id": None,
        "flag_key": key,
        "scope": "org",
        "org_id": str(owner.org_id),
        "user_id": None,
        "enabled": True,
        "reason": "pilot",
        "expires_at": None,
        "active": True,
        "created_by": str(admin.user_id),
        "created_at": None,
    }
    user = await put(
        client, admin, f"/api/flags/{key}/overrides/users/{member.user_id}", enabled=False
    )
    assert user.status_code == 200, user.text
    assert user.json()["org_id"] == str(owner.org_id)
    assert user.json()["user_id"] == str(member.user_id)

    assert await state(client, owner, key) == {"enabled": True, "source": "org_override"}
    assert await state(client, member, key) == {"enabled": False, "source": "user_override"}
    listed = await client.get(f"/api/flags/{key}/overrides", headers=admin.headers)
    assert [o["scope"] for o in listed.json()] == ["org", "user"]

    gone = await client.delete(
        f"/api/flags/{key}/overrides/users/{member.user_id}", headers=admin.headers
    )
    assert gone.status_code == 204
    assert await state(client, member, key) == {"enabled": True, "source": "org_override"}
    await client.delete(f"/api/flags/{key}/overrides/org", headers=admin.headers)
    assert await state(client, member, key) == {"enabled": False, "source": "default"}
    missing = await client.delete(f"/api/flags/{key}/overrides/org", headers=admin.headers)
    assert missing.status_code == 404


async def test_setting_an_override_again_replaces_it(
    client: httpx.AsyncClient, owner: Account, key: str
) -> None:
    path = f"/api/flags/{key}/overrides/org"
    first = await put(client, owner, path, enabled=True)
    second = await put(client, owner, path, enabled=False)
    listed = await client.get(f"/api/flags/{key}/overrides", headers=owner.headers)
    assert [o["id"] for o in listed.json()] == [second.json()["id"]]
    assert first.json()["id"] != second.json()["id"]
    assert await state(client, owner, key) == {"enabled": False, "source": "org_override"}


@pytest.mark.parametrize("role", ["member", "viewer"])
async def test_members_below_admin_cannot_set_list_or_remove_overrides(
    client: httpx.AsyncClient, owner: Account, key: str, role: str
) -> None:
    caller = await add_member(client, owner, role)
    for response in [
        await put(client, caller, f"/api/flags/{key}/overrides/org", enabled=True),
        await put(
            client, caller, f"/api/flags/{key}/overrides/users/{caller.user_id}", enabled=True
        ),
        await client.get(f"/api/flags/{key}/overrides", headers=caller.headers),
        await client.delete(f"/api/flags/{key}/overrides/org", headers=caller.headers),
    ]:
        assert response.status_code == 403, response.text
    assert await state(client, caller, key) == {"enabled": False, "source": "default"}


async def test_an_org_admin_cannot_override_for_a_user_of_another_organization(
    client: httpx.AsyncClient, owner: Account, key: str
) -> None:
    stranger = await register(client, label="stranger", organization_name="Other Org")
    response = await put(
        client, owner, f"/api/flags/{key}/overrides/users/{stranger.user_id}", enabled=True
    )
    assert response.status_code == 404
    nobody = await put(
        client, owner, f"/api/flags/{key}/overrides/users/{uuid.uuid4()}", enabled=True
    )
    assert nobody.status_code == 404
    assert await state(client, stranger, key) == {"enabled": False, "source": "default"}


async def test_an_org_admin_sees_only_their_own_organizations_overrides(
    client: httpx.AsyncClient, owner: Account, key: str
) -> None:
    other = await register(client, label="other", organization_name="Other Org")
    mine = await put(client, owner, f"/api/flags/{key}/overrides/org", enabled=True)
    theirs = await put(client, other, f"/api/flags/{key}/overrides/org", enabled=False)
    assert theirs.status_code == 200
    listed = await client.get(f"/api/flags/{key}/overrides", headers=owner.headers)
    assert [o["id"] for o in listed.json()] == [mine.json()["id"]]
    assert theirs.json()["id"] not in listed.text
    assert await state(client, other, key) == {"enabled": False, "source": "org_override"}
    assert await state(client, owner, key) == {"enabled": True, "source": "org_override"}


async def test_overrides_of_an_unknown_flag_are_404(
    client: httpx.AsyncClient, owner: Account
) -> None:
    missing = f"missing.{secrets.token_hex(4)}"
    for response in [
        await put(client, owner, f"/api/flags/{missing}/overrides/org", enabled=True),
        await client.get(f"/api/flags/{missing}/overrides", headers=owner.headers),
        await client.delete(f"/api/flags/{missing}/overrides/org", headers=owner.headers),
    ]:
        assert response.status_code == 404


@pytest.mark.parametrize(
    "expires_at",
    [
        (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "2020-01-01T00:00:00+00:00",
        "2999-01-01T00:00:00",  # no time zone: ambiguous
    ],
    ids=["a-minute-ago", "years-ago", "naive"],
)
async def test_an_expiry_in_the_past_or_without_time_zone_is_rejected(
    client: httpx.AsyncClient, owner: Account, key: str, expires_at: str
) -> None:
    response = await put(
        client, owner, f"/api/flags/{key}/overrides/org", enabled=True, expires_at=expires_at
    )
    assert response.status_code == 422, response.text


async def test_an_override_stops_counting_once_it_expires(
    client: httpx.AsyncClient, owner: Account, key: str, runtime: Runtime
) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    response = await put(
        client,
        owner,
        f"/api/flags/{key}/overrides/org",
        enabled=True,
        expires_at=expires.isoformat(),
    )
    assert response.json()["active"] is True
    assert owner.org_id is not None
    async with tenant_transaction(
        runtime.database, org_id=owner.org_id, user_id=owner.user_id
    ) as db:
        before = await evaluation.evaluate(db=db, org_id=owner.org_id, user_id=owner.user_id)
        after = await evaluation.evaluate(
            db=db, org_id=owner.org_id, user_id=owner.user_id, now=expires
        )
    assert before.decisions[key] == evaluation.Decision(True, "org_override")
    assert after.decisions[key] == evaluation.Decision(False, "default")


# --- the cache -----------------------------------------------------------------------------------


async def test_a_change_is_visible_at_once_although_evaluations_are_cached(
    client: httpx.AsyncClient, owner: Account, key: str, runtime: Runtime
) -> None:
    assert await state(client, owner, key) == {"enabled": False, "source": "default"}
    # Written behind the API's back (no invalidation): the cached answer is still served.
    async with runtime.database.system_engine.begin() as conn:
        flag_id = (
            await conn.execute(select(FeatureFlag.id).where(FeatureFlag.key == key))
        ).scalar_one()
        await conn.execute(
            insert(FeatureFlagOverride).values(
                id=uuid.uuid4(), flag_id=flag_id, org_id=owner.org_id, enabled=True
            )
        )
    assert await state(client, owner, key) == {"enabled": False, "source": "default"}
    # Any change through the API starts a new generation: every cached answer is stale.
    changed = await put(
        client, owner, f"/api/flags/{key}/overrides/users/{owner.user_id}", enabled=True
    )
    assert changed.status_code == 200
    assert await state(client, owner, key) == {"enabled": True, "source": "user_override"}


async def test_cached_evaluations_live_under_the_environment_prefix(
    client: httpx.AsyncClient, owner: Account, key: str, runtime: Runtime
) -> None:
    await state(client, owner, key)
    found = [k async for k in runtime.redis.scan_iter(match=f"*{owner.user_id}*", count=1000)]
    assert found, "no cache entry for the caller"
    assert all(k.startswith(runtime.keys("cache", "flags")) for k in found)
    generation = await runtime.redis.get(evaluation.generation_key(runtime.keys))
    assert generation is not None
    assert evaluation.generation_key(runtime.keys).startswith(runtime.settings.key_prefix)


async def test_a_redis_outage_costs_the_cache_not_the_answer(
    client: httpx.AsyncClient,
    owner: Account,
    key: str,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def down(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    for command in ("get", "set", "incr"):
        monkeypatch.setattr(runtime.redis, command, down)
    assert await state(client, owner, key) == {"enabled": False, "source": "default"}
    changed = await put(client, owner, f"/api/flags/{key}/overrides/org", enabled=True)
    assert changed.status_code == 200
    assert await state(client, owner, key) == {"enabled": True, "source": "org_override"}


# --- audit and GDPR ------------------------------------------------------------------------------


async def test_override_changes_are_audited_in_the_organizations_chain_without_the_reason(
    client: httpx.AsyncClient, owner: Account, member: Account, key: str, runtime: Runtime
) -> None:
    path = f"/api/flags/{key}/overrides/users/{member.user_id}"
    created = await put(client, owner, path, enabled=True, reason="asked by Zebulon on the phone")
    await client.delete(path, headers=owner.headers)
    async with runtime.database.system_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "select action, org_id, actor_user_id, resource_type, details "
                    "from audit_logs where resource_id = :id order by seq"
                ),
                {"id": created.json()["id"]},
            )
        ).all()
    assert [r.action for r in rows] == ["flag.override_set", "flag.override_delete"]
    assert all(r.org_id == owner.org_id and r.actor_user_id == owner.user_id for r in rows)
    assert all(r.resource_type == "feature_flag" for r in rows)
    assert rows[0].details == {
        "flag": key,
        "scope": "user",
        "org_id": str(owner.org_id),
        "user_id": str(member.user_id),
        "enabled": True,
        "expires_at": None,
        "replaced": [],
    }
    assert "Zebulon" not in json.dumps([r.details for r in rows])
    org_log = await client.get(
        "/api/audit-logs",
        params={"scope": "org", "resource_type": "feature_flag"},
        headers=owner.headers,
    )
    assert {"flag.override_set", "flag.override_delete"} <= {
        row["action"] for row in org_log.json()["items"]
    }


async def _exported_overrides(client: httpx.AsyncClient, who: Account) -> set[str]:
    response = await client.get(
        "/api/user/data-export", params={"format": "zip"}, headers=who.headers
    )
    assert response.status_code == 200, response.text
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    rows = json.loads(archive.read("tables/feature_flag_overrides.json"))
    return {row["id"] for row in rows}


async def test_a_persons_export_holds_overrides_they_set_and_overrides_targeting_them(
    client: httpx.AsyncClient, owner: Account, member: Account, key: str
) -> None:
    about_member = await put(
        client, owner, f"/api/flags/{key}/overrides/users/{member.user_id}", enabled=True
    )
    org_wide = await put(client, owner, f"/api/flags/{key}/overrides/org", enabled=True)
    owner_export = await _exported_overrides(client, owner)
    member_export = await _exported_overrides(client, member)
    assert {about_member.json()["id"], org_wide.json()["id"]} <= owner_export
    assert about_member.json()["id"] in member_export
    assert org_wide.json()["id"] not in member_export  # neither set by nor about the member
