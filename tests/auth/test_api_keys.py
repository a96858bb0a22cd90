"""API keys: shown once, stored hashed, capped at the creator's role, revocable."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from taskloom.auth.models import ApiKey
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import add_member, register


async def test_api_key_authenticates_as_its_creator_in_its_org(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="keyowner")
    created = await client.post(
        "/auth/api-keys", json={"name": "ci", "role": "member"}, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("tlk_")

    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200
    assert me.json()["auth"] == "api_key"
    assert me.json()["role"] == "member"  # capped at the key's role, below the owner's
    assert me.json()["org_id"] == str(owner.org_id)

    # Admin-only routes refuse the member-capped key.
    rename = await client.patch(
        "/api/org", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert rename.status_code == 403

    async with system_transaction(runtime.database) as db:
        stored = (
            await db.execute(select(ApiKey).where(ApiKey.id == created.json()["id"]))
        ).scalar_one()
    assert key not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64

    listed = await client.get("/auth/api-keys", headers=owner.headers)
    assert [k["id"] for k in listed.json()] == [created.json()["id"]]
    assert "key" not in listed.json()[0]


async def test_revoked_key_is_refused(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="revoke")
    created = (
        await client.post("/auth/api-keys", json={"name": "tmp"}, headers=owner.headers)
    ).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    revoke = await client.delete(f"/auth/api-keys/{created['id']}", headers=owner.headers)
    assert revoke.status_code == 204
    assert (await client.get("/auth/me", headers=headers)).status_code == 401


async def test_key_role_cannot_exceed_the_creator_and_follows_demotion(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="capowner")
    admin = await add_member(client, owner, "admin")
    too_high = await client.post(
        "/auth/api-keys", json={"name": "k", "role": "owner"}, headers=admin.headers
    )
    assert too_high.status_code == 403
    key = (
        await client.post(
            "/auth/api-keys", json={"name": "k", "role": "admin"}, headers=admin.headers
        )
    ).json()["key"]
    demote = await client.patch(
        f"/api/members/{admin.user_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert demote.status_code == 200
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
    assert me.json()["role"] == "viewer"
    removed = await client.delete(f"/api/members/{admin.user_id}", headers=owner.headers)
    assert removed.status_code == 204
    assert (
        await client.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
    ).status_code == 401


async def test_an_api_key_cannot_mint_keys_or_sign_out(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="keymint")
    key = (
        await client.post(
            "/auth/api-keys", json={"name": "k", "role": "admin"}, headers=owner.headers
        )
    ).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert (
        await client.post("/auth/api-keys", json={"name": "k2"}, headers=headers)
    ).status_code == 403
    for path in ("/auth/logout", "/auth/logout-all"):
        refused = await client.post(path, headers=headers)
        assert refused.status_code == 403
        assert "API keys cannot do this" in refused.json()["error"]["message"]
    # Nor export the person's data from every organization, or create organizations.
    assert (await client.get("/api/user/data-export", headers=headers)).status_code == 403
    created = await client.post("/api/orgs", json={"name": "Shadow"}, headers=headers)
    assert created.status_code == 403
