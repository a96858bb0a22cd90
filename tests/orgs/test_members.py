"""Organizations, members and the role matrix viewer < member < admin < owner."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.factories import Account, add_member, login, register


async def _org_with_everyone(client: httpx.AsyncClient) -> dict[str, Account]:
    owner = await register(client, label="owner")
    people = {"owner": owner}
    for role in ("admin", "member", "viewer"):
        people[role] = await add_member(client, owner, role)
    return people


# (method, path, body) → the lowest role that may call it.
ROUTE_MINIMUM_ROLE = [
    ("GET", "/api/org", None, "viewer"),
    ("GET", "/api/members", None, "viewer"),
    ("PATCH", "/api/org", {"name": "Renamed"}, "admin"),
    ("POST", "/api/members", "new-member", "admin"),
]
RANK = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}


@pytest.mark.parametrize(("method", "path", "body", "minimum"), ROUTE_MINIMUM_ROLE)
async def test_role_matrix(
    client: httpx.AsyncClient, method: str, path: str, body: object, minimum: str
) -> None:
    people = await _org_with_everyone(client)
    for role, account in people.items():
        payload = body
        if body == "new-member":
            payload = {"email": (await register(client, label="invitee")).email, "role": "viewer"}
        response = await client.request(method, path, json=payload, headers=account.headers)
        allowed = RANK[role] >= RANK[minimum]
        assert response.status_code in ((200, 201, 202) if allowed else (403,)), (
            role,
            response.text,
        )
    anonymous = await client.request(method, path, json=None)
    assert anonymous.status_code == 401


async def test_members_listing_shows_roles(client: httpx.AsyncClient) -> None:
    people = await _org_with_everyone(client)
    members = (await client.get("/api/members", headers=people["viewer"].headers)).json()
    assert {m["role"] for m in members} == {"owner", "admin", "member", "viewer"}
    assert {m["email"] for m in members} == {a.email for a in people.values()}


async def test_admin_cannot_grant_owner_or_touch_owners(client: httpx.AsyncClient) -> None:
    people = await _org_with_everyone(client)
    admin, owner, member = people["admin"], people["owner"], people["member"]
    grant_owner = await client.patch(
        f"/api/members/{member.user_id}", json={"role": "owner"}, headers=admin.headers
    )
    assert grant_owner.status_code == 403
    demote_owner = await client.patch(
        f"/api/members/{owner.user_id}", json={"role": "member"}, headers=admin.headers
    )
    assert demote_owner.status_code == 403
    remove_owner = await client.delete(f"/api/members/{owner.user_id}", headers=admin.headers)
    assert remove_owner.status_code == 403
    promote = await client.patch(
        f"/api/members/{member.user_id}", json={"role": "admin"}, headers=admin.headers
    )
    assert promote.status_code == 200
    assert promote.json()["role"] == "admin"


async def test_member_cannot_change_roles_but_can_leave(client: httpx.AsyncClient) -> None:
    people = await _org_with_everyone(client)
    member, viewer = people["member"], people["viewer"]
    change = await client.patch(
        f"/api/members/{viewer.user_id}", json={"role": "member"}, headers=member.headers
    )
    assert change.status_code == 403
    remove_other = await client.delete(f"/api/members/{viewer.user_id}", headers=member.headers)
    assert remove_other.status_code == 403
    leave = await client.delete(f"/api/members/{member.user_id}", headers=member.headers)
    assert leave.status_code == 204
    me = await client.get("/auth/me", headers=member.headers)
    assert me.status_code == 200
    assert me.json()["role"] is None  # still signed in, no longer a member
    assert (await client.get("/api/members", headers=member.headers)).status_code == 403


async def test_last_owner_cannot_be_demoted_or_removed(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="lastowner")
    demote = await client.patch(
        f"/api/members/{owner.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert demote.status_code == 409
    assert demote.json()["error"]["code"] == "last_owner"
    leave = await client.delete(f"/api/members/{owner.user_id}", headers=owner.headers)
    assert leave.status_code == 409

    second = await add_member(client, owner, "owner")
    assert (
        await client.patch(
            f"/api/members/{owner.user_id}", json={"role": "admin"}, headers=second.headers
        )
    ).status_code == 200
    # Now `second` is the only owner and is protected in turn.
    assert (
        await client.delete(f"/api/members/{second.user_id}", headers=second.headers)
    ).status_code == 409


async def test_inviting_someone_already_a_member_or_already_invited_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="adder")
    member = await add_member(client, owner, "member")
    again = await client.post("/api/members", json={"email": member.email}, headers=owner.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_member"
    first = await client.post(
        "/api/members", json={"email": "later@example.test"}, headers=owner.headers
    )
    assert first.status_code == 202
    twice = await client.post(
        "/api/members", json={"email": "LATER@example.test"}, headers=owner.headers
    )
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "already_invited"


async def test_create_org_list_and_switch(client: httpx.AsyncClient) -> None:
    account = await register(client, label="multi")
    created = await client.post("/api/orgs", json={"name": "Second Org"}, headers=account.headers)
    assert created.status_code == 201
    second_id = created.json()["id"]
    mine = (await client.get("/api/orgs", headers=account.headers)).json()
    assert {o["org_id"] for o in mine} == {str(account.org_id), second_id}
    assert [o["current"] for o in mine if o["org_id"] == str(account.org_id)] == [True]

    switched = await client.post(
        "/auth/switch-org", json={"org_id": second_id}, headers=account.headers
    )
    assert switched.status_code == 200
    new_headers = {"Authorization": f"Bearer {switched.json()['access_token']}"}
    assert (await client.get("/api/org", headers=new_headers)).json()["id"] == second_id
    # The access token for the previous organization stops working.
    assert (await client.get("/api/org", headers=account.headers)).status_code == 401

    stranger = await register(client, label="stranger")
    refused = await client.post(
        "/auth/switch-org", json={"org_id": str(stranger.org_id)}, headers=new_headers
    )
    assert refused.status_code == 404


async def test_another_tenants_member_ids_are_not_found(client: httpx.AsyncClient) -> None:
    a = await register(client, label="tenant-a")
    b = await register(client, label="tenant-b")
    for method, body in (("PATCH", {"role": "viewer"}), ("DELETE", None)):
        response = await client.request(
            method, f"/api/members/{b.user_id}", json=body, headers=a.headers
        )
        assert response.status_code == 404, response.text
    random_id = await client.delete(f"/api/members/{uuid.uuid4()}", headers=a.headers)
    assert random_id.status_code == 404


async def test_login_into_a_specific_org(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="specific")
    member = await add_member(client, owner, "member")
    own_org = (await client.get("/api/orgs", headers=member.headers)).json()
    assert len(own_org) == 2
    default = await login(client, member.email)
    assert default.org_id != owner.org_id  # the oldest membership: their own workspace
    chosen = await login(client, member.email, org_id=owner.org_id)
    assert chosen.org_id == owner.org_id
    outsider = await register(client, label="outsider")
    refused = await client.post(
        "/auth/login",
        json={"email": member.email, "password": member.password, "org_id": str(outsider.org_id)},
    )
    assert refused.status_code == 403
