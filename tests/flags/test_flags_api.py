"""/api/admin/flags: only instance administrators manage global flags; every change is audited
in the instance chain; /api/flags evaluates them for any member."""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest
from sqlalchemy import text

from taskloom.audit.service import verify_chain
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, make_superuser, register


def new_key(label: str = "flag") -> str:
    return f"{label}.{secrets.token_hex(5)}"


@pytest.fixture
async def root(client: httpx.AsyncClient, runtime: Runtime) -> Account:
    return await make_superuser(client, runtime)


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="owner", organization_name="Flag Org")


async def _create(client: httpx.AsyncClient, root: Account, **body: object) -> dict[str, object]:
    body.setdefault("key", new_key())
    response = await client.post("/api/admin/flags", json=body, headers=root.headers)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def _evaluate(client: httpx.AsyncClient, who: Account, *keys: str) -> dict[str, object]:
    response = await client.get("/api/flags", params={"keys": ",".join(keys)}, headers=who.headers)
    assert response.status_code == 200, response.text
    flags: dict[str, object] = response.json()["flags"]
    return flags


async def test_an_instance_admin_creates_lists_changes_and_deletes_a_global_flag(
    client: httpx.AsyncClient, root: Account, owner: Account
) -> None:
    key = new_key("checkout")
    created = await _create(client, root, key=key, description="new checkout")
    assert created["default_enabled"] is False
    assert created["rollout_percentage"] is None
    assert created["created_by"] == str(root.user_id)
    listed = await client.get("/api/admin/flags", headers=root.headers)
    assert key in [f["key"] for f in listed.json()]
    assert await _evaluate(client, owner, key) == {key: {"enabled": False, "source": "default"}}

    patched = await client.patch(
        f"/api/admin/flags/{key}", json={"default_enabled": True}, headers=root.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["default_enabled"] is True
    assert patched.json()["description"] == "new checkout"  # left out: unchanged
    assert await _evaluate(client, owner, key) == {key: {"enabled": True, "source": "default"}}

    rollout = await client.patch(
        f"/api/admin/flags/{key}", json={"rollout_percentage": 100}, headers=root.headers
    )
    assert rollout.json()["rollout_percentage"] == 100
    assert await _evaluate(client, owner, key) == {key: {"enabled": True, "source": "rollout"}}
    cleared = await client.patch(
        f"/api/admin/flags/{key}", json={"rollout_percentage": None}, headers=root.headers
    )
    assert cleared.json()["rollout_percentage"] is None

    deleted = await client.delete(f"/api/admin/flags/{key}", headers=root.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/api/admin/flags/{key}", headers=root.headers)).status_code == 404
    assert await _evaluate(client, owner, key) == {key: {"enabled": False, "source": "unknown"}}


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
async def test_organization_owners_admins_and_members_cannot_touch_global_flags(
    client: httpx.AsyncClient, root: Account, owner: Account, role: str
) -> None:
    caller = owner if role == "owner" else await add_member(client, owner, role)
    key = str((await _create(client, root))["key"])
    attempts = [
        client.get("/api/admin/flags", headers=caller.headers),
        client.post("/api/admin/flags", json={"key": new_key()}, headers=caller.headers),
        client.patch(
            f"/api/admin/flags/{key}", json={"default_enabled": True}, headers=caller.headers
        ),
        client.delete(f"/api/admin/flags/{key}", headers=caller.headers),
        client.get(f"/api/admin/flags/{key}/overrides", headers=caller.headers),
        client.put(
            f"/api/admin/flags/{key}/overrides/orgs/{owner.org_id}",
            json={"enabled": True},
            headers=caller.headers,
        ),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "superuser_required"
        assert "instance administrators" in response.json()["error"]["message"]
    unchanged = await client.get(f"/api/admin/flags/{key}", headers=root.headers)
    assert unchanged.json()["default_enabled"] is False


async def test_an_api_key_never_acts_as_an_instance_admin(
    client: httpx.AsyncClient, root: Account, owner: Account, runtime: Runtime
) -> None:
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("update users set is_superuser = true where id = :u"), {"u": owner.user_id}
        )
    key = await client.post(
        "/auth/api-keys", json={"name": "ci", "role": "owner"}, headers=owner.headers
    )
    assert key.status_code == 201, key.text
    as_key = {"Authorization": f"Bearer {key.json()['key']}"}
    response = await client.post("/api/admin/flags", json={"key": new_key()}, headers=as_key)
    assert response.status_code == 403


async def test_a_duplicate_flag_key_is_a_conflict(client: httpx.AsyncClient, root: Account) -> None:
    key = str((await _create(client, root))["key"])
    again = await client.post("/api/admin/flags", json={"key": key}, headers=root.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    "body",
    [
        {"key": "Upper"},
        {"key": "-leading-dash"},
        {"key": "a" * 101},
        {"key": "spaces not allowed"},
        {"key": "ok", "rollout_percentage": 101},
        {"key": "ok", "rollout_percentage": -1},
        {"key": "ok", "unexpected": True},
    ],
)
async def test_flag_keys_and_rollout_percentages_are_validated(
    client: httpx.AsyncClient, root: Account, body: dict[str, object]
) -> None:
    response = await client.post("/api/admin/flags", json=body, headers=root.headers)
    assert response.status_code == 422, response.text


async def test_unknown_flags_are_404_for_instance_admins(
    client: httpx.AsyncClient, root: Account
) -> None:
    missing = new_key("missing")
    for response in [
        await client.patch(
            f"/api/admin/flags/{missing}", json={"default_enabled": True}, headers=root.headers
        ),
        await client.delete(f"/api/admin/flags/{missing}", headers=root.headers),
        await client.get(f"/api/admin/flags/{missing}/overrides", headers=root.headers),
    ]:
        assert response.status_code == 404


async def test_members_evaluate_flags_and_unknown_keys_are_off(
    client: httpx.AsyncClient, root: Account, owner: Account
) -> None:
    on = str((await _create(client, root, default_enabled=True))["key"])
    viewer = await add_member(client, owner, "viewer")
    missing = new_key("missing")
    assert await _evaluate(client, viewer, on, missing) == {
        on: {"enabled": True, "source": "default"},
        missing: {"enabled": False, "source": "unknown"},
    }
    every = await client.get("/api/flags", headers=viewer.headers)
    assert every.json()["flags"][on] == {"enabled": True, "source": "default"}
    anonymous = await client.get("/api/flags", params={"keys": on})
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "keys",
    [
        "Bad-Key",
        "ok,,also-ok",
        "ok,not ok",
        ",".join(f"k{i}" for i in range(101)),
    ],
    ids=["uppercase", "empty", "space", "101-keys"],
)
async def test_evaluation_keys_are_validated(
    client: httpx.AsyncClient, owner: Account, keys: str
) -> None:
    response = await client.get("/api/flags", params={"keys": keys}, headers=owner.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("query.keys")


async def test_one_hundred_keys_may_be_evaluated_at_once(
    client: httpx.AsyncClient, owner: Account
) -> None:
    keys = [f"k{i}.{secrets.token_hex(3)}" for i in range(100)]
    flags = await _evaluate(client, owner, *keys)
    assert set(flags) == set(keys)


async def test_global_flag_changes_are_audited_in_the_instance_chain(
    client: httpx.AsyncClient, root: Account, runtime: Runtime
) -> None:
    key = str((await _create(client, root, description="secret plans for Zebulon"))["key"])
    await client.patch(
        f"/api/admin/flags/{key}",
        json={"description": "other words", "rollout_percentage": 20},
        headers=root.headers,
    )
    await client.delete(f"/api/admin/flags/{key}", headers=root.headers)
    async with runtime.database.system_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "select action, org_id, actor_user_id, resource_type, details "
                    "from audit_logs where resource_id = :k order by seq"
                ),
                {"k": key},
            )
        ).all()
    assert [r.action for r in rows] == ["flag.create", "flag.update", "flag.delete"]
    assert all(r.org_id is None and r.actor_user_id == root.user_id for r in rows)
    assert all(r.resource_type == "feature_flag" for r in rows)
    assert rows[1].details == {
        "changed": {"description": True, "rollout_percentage": {"from": None, "to": 20}}
    }
    assert "Zebulon" not in str([r.details for r in rows])
    async with runtime.database.system_sessions() as session:
        assert (await verify_chain(session=session, org_id=None)).ok


async def test_an_unchanged_patch_writes_no_audit_row(
    client: httpx.AsyncClient, root: Account, runtime: Runtime
) -> None:
    key = str((await _create(client, root))["key"])
    same = await client.patch(
        f"/api/admin/flags/{key}", json={"default_enabled": False}, headers=root.headers
    )
    assert same.status_code == 200
    async with runtime.database.system_engine.connect() as conn:
        actions = (
            await conn.execute(
                text("select action from audit_logs where resource_id = :k"), {"k": key}
            )
        ).scalars()
        assert list(actions) == ["flag.create"]


async def test_an_instance_admin_sets_and_removes_overrides_in_any_organization(
    client: httpx.AsyncClient, root: Account, owner: Account
) -> None:
    key = str((await _create(client, root))["key"])
    member = await add_member(client, owner, "member")
    other = await register(client, label="other", organization_name="Elsewhere")
    base = f"/api/admin/flags/{key}/overrides"
    org_wide = await client.put(
        f"{base}/orgs/{owner.org_id}", json={"enabled": True}, headers=root.headers
    )
    assert org_wide.status_code == 200, org_wide.text
    everywhere = await client.put(
        f"{base}/users/{other.user_id}", json={"enabled": True}, headers=root.headers
    )
    assert everywhere.json()["org_id"] is None
    member_off = await client.put(
        f"{base}/orgs/{owner.org_id}/users/{member.user_id}",
        json={"enabled": False, "reason": "support ticket"},
        headers=root.headers,
    )
    assert member_off.status_code == 200, member_off.text
    assert await _evaluate(client, owner, key) == {key: {"enabled": True, "source": "org_override"}}
    assert await _evaluate(client, member, key) == {
        key: {"enabled": False, "source": "user_override"}
    }
    assert await _evaluate(client, other, key) == {
        key: {"enabled": True, "source": "user_override"}
    }

    listed = await client.get(base, headers=root.headers)
    assert {o["id"] for o in listed.json()} == {
        org_wide.json()["id"],
        everywhere.json()["id"],
        member_off.json()["id"],
    }
    not_a_member = await client.put(
        f"{base}/orgs/{owner.org_id}/users/{other.user_id}",
        json={"enabled": True},
        headers=root.headers,
    )
    assert not_a_member.status_code == 404
    no_org = await client.put(
        f"{base}/orgs/{uuid.uuid4()}", json={"enabled": True}, headers=root.headers
    )
    assert no_org.status_code == 404

    removed = await client.delete(f"{base}/{everywhere.json()['id']}", headers=root.headers)
    assert removed.status_code == 204
    assert await _evaluate(client, other, key) == {key: {"enabled": False, "source": "default"}}
    again = await client.delete(f"{base}/{everywhere.json()['id']}", headers=root.headers)
    assert again.status_code == 404
