"""Joining an organization takes the person's consent: an admin invites an email address, the
person with that address accepts or declines. Inviting tells the admin nothing about whether the
address has an account, an invitation never makes an owner, expires after 7 days, and only the
person it is addressed to can answer it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from taskloom.runtime import Runtime
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


@contextmanager
def statements_of(engine: Engine) -> Iterator[list[str]]:
    """The SQL `engine` runs inside the block (observed through SQLAlchemy's event hook)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _members(client: httpx.AsyncClient, admin: Account) -> dict[str, str]:
    response = await client.get("/api/members", headers=admin.headers)
    assert response.status_code == 200, response.text
    return {m["user_id"]: m["role"] for m in response.json()}


async def _expire(runtime: Runtime, invitation_id: uuid.UUID) -> None:
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("update invitations set expires_at = now() - interval '1 second' where id = :i"),
            {"i": invitation_id},
        )


async def test_inviting_answers_the_same_for_an_existing_account_and_an_unknown_email(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="inviter")
    existing = await register(client, label="existing")
    # The inviter's principal cached first (auth/principal_cache.py): both invitations are then
    # authenticated alike, and only the invitation's own statements are compared.
    assert (await client.get("/auth/me", headers=owner.headers)).status_code == 200
    answers, app_sql, system_sql = [], [], []
    for email in (existing.email, unique_email("nobody")):
        with (
            statements_of(runtime.database.app_engine.sync_engine) as on_app,
            statements_of(runtime.database.system_engine.sync_engine) as on_system,
        ):
            answers.append(
                await client.post(
                    "/api/members", json={"email": email, "role": "member"}, headers=owner.headers
                )
            )
        app_sql.append(on_app)
        system_sql.append(on_system)
    assert [a.status_code for a in answers] == [202, 202]
    assert [set(a.json()) for a in answers] == [{"invitation_id"}, {"invitation_id"}]
    # The same work either way: the same statements, and no look-up of accounts by address
    # (the privileged engine, which could see every account, is not used at all).
    assert app_sql[0] == app_sql[1]
    assert system_sql == [[], []]
    # And the account holder has not been made a member.
    assert str(existing.user_id) not in await _members(client, owner)


async def test_an_invitee_lists_accepts_and_becomes_a_member_with_the_role(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="host", organization_name="Hosting Org")
    person = await register(client, label="guest")
    invitation_id = await invite(client, owner, person.email, "admin")

    listed = await client.get("/api/invitations", headers=person.headers)
    assert listed.status_code == 200
    [received] = listed.json()
    # The organization's name and the role; nothing else of the organization.
    assert set(received) == {"id", "org_id", "org_name", "role", "created_at", "expires_at"}
    assert received["id"] == str(invitation_id)
    assert received["org_name"] == "Hosting Org"
    assert received["role"] == "admin"

    accepted = await client.post(f"/api/invitations/{invitation_id}/accept", headers=person.headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"org_id": str(owner.org_id), "role": "admin"}
    assert (await _members(client, owner))[str(person.user_id)] == "admin"
    assert (await client.get("/api/invitations", headers=person.headers)).json() == []
    pending = await client.get("/api/members/invitations", headers=owner.headers)
    assert pending.json() == []
    in_org = await login(client, person.email, org_id=owner.org_id)
    assert (await client.get("/api/org", headers=in_org.headers)).json()["name"] == "Hosting Org"

    again = await client.post(f"/api/invitations/{invitation_id}/accept", headers=person.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invitation_closed"


async def test_an_invitation_to_an_unregistered_email_appears_once_they_register(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="early", organization_name="Early Org")
    email = unique_email("future")
    invitation_id = await invite(client, owner, email.upper(), "viewer")
    registered = await client.post(
        "/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Future"}
    )
    assert registered.status_code == 201, registered.text
    person = await login(client, email)
    [received] = (await client.get("/api/invitations", headers=person.headers)).json()
    assert received["id"] == str(invitation_id)
    await accept(client, person, invitation_id)
    assert (await _members(client, owner))[str(person.user_id)] == "viewer"


async def test_declining_leaves_no_membership_and_closes_the_invitation(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="decliner-host")
    person = await register(client, label="decliner")
    invitation_id = await invite(client, owner, person.email)
    declined = await client.post(
        f"/api/invitations/{invitation_id}/decline", headers=person.headers
    )
    assert declined.status_code == 204
    assert str(person.user_id) not in await _members(client, owner)
    assert (await client.get("/api/invitations", headers=person.headers)).json() == []
    late = await client.post(f"/api/invitations/{invitation_id}/accept", headers=person.headers)
    assert late.status_code == 409
    # The organization may ask again.
    assert (
        await client.post("/api/members", json={"email": person.email}, headers=owner.headers)
    ).status_code == 202


async def test_an_expired_invitation_cannot_be_accepted_or_declined(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="expiring-host")
    person = await register(client, label="late")
    invitation_id = await invite(client, owner, person.email)
    await _expire(runtime, invitation_id)

    assert (await client.get("/api/invitations", headers=person.headers)).json() == []
    assert (await client.get("/api/members/invitations", headers=owner.headers)).json() == []
    for answer in ("accept", "decline"):
        refused = await client.post(
            f"/api/invitations/{invitation_id}/{answer}", headers=person.headers
        )
        assert refused.status_code == 410, refused.text
        assert refused.json()["error"]["code"] == "invitation_expired"
    assert str(person.user_id) not in await _members(client, owner)
    # A new invitation replaces the expired one.
    renewed = await invite(client, owner, person.email)
    assert renewed != invitation_id
    await accept(client, person, renewed)


async def test_invitations_expire_after_seven_days(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="ttl")
    invitation_id = await invite(client, owner, unique_email("ttl"))
    async with runtime.database.system_engine.connect() as conn:
        lifetime = (
            await conn.execute(
                text("select expires_at - created_at from invitations where id = :i"),
                {"i": invitation_id},
            )
        ).scalar_one()
    assert lifetime.days == 7
    assert lifetime.seconds < 5


async def test_only_the_invited_person_can_see_accept_or_decline_an_invitation(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="guarded", organization_name="Guarded Org")
    person = await register(client, label="intended")
    invitation_id = await invite(client, owner, person.email, "admin")
    stranger = await register(client, label="stranger")
    insider = await add_member(client, owner, "admin", label="insider")
    for other in (stranger, insider, owner):
        assert (await client.get("/api/invitations", headers=other.headers)).json() == []
        for answer in ("accept", "decline"):
            refused = await client.post(
                f"/api/invitations/{invitation_id}/{answer}", headers=other.headers
            )
            assert refused.status_code == 404, (other.email, answer, refused.text)
    unknown = await client.post(f"/api/invitations/{uuid.uuid4()}/accept", headers=person.headers)
    assert unknown.status_code == 404
    assert str(stranger.user_id) not in await _members(client, owner)
    await accept(client, person, invitation_id)  # still open for the person it is meant for


async def test_an_invitation_cannot_make_an_owner_who_is_promoted_after_joining(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="no-owner-invite")
    person = await register(client, label="future-owner")
    refused = await client.post(
        "/api/members", json={"email": person.email, "role": "owner"}, headers=owner.headers
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "validation_failed"
    assert (await client.get("/api/invitations", headers=person.headers)).json() == []
    await accept(client, person, await invite(client, owner, person.email, "admin"))
    promoted = await client.patch(
        f"/api/members/{person.user_id}", json={"role": "owner"}, headers=owner.headers
    )
    assert promoted.status_code == 200
    assert promoted.json()["role"] == "owner"


async def test_an_admin_invites_up_to_their_own_role(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="cap-host")
    admin = await add_member(client, owner, "admin")
    member = await add_member(client, owner, "member")
    assert (
        await client.post(
            "/api/members", json={"email": unique_email(), "role": "admin"}, headers=admin.headers
        )
    ).status_code == 202
    refused = await client.post(
        "/api/members", json={"email": unique_email(), "role": "viewer"}, headers=member.headers
    )
    assert refused.status_code == 403


async def test_admins_list_and_revoke_pending_invitations(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="revoker")
    person = await register(client, label="revoked")
    invitation_id = await invite(client, owner, person.email, "viewer")
    [pending] = (await client.get("/api/members/invitations", headers=owner.headers)).json()
    assert pending["id"] == str(invitation_id)
    assert pending["email"] == person.email
    assert pending["role"] == "viewer"
    assert pending["invited_by"] == str(owner.user_id)

    revoked = await client.delete(
        f"/api/members/invitations/{invitation_id}", headers=owner.headers
    )
    assert revoked.status_code == 204
    assert (await client.get("/api/members/invitations", headers=owner.headers)).json() == []
    assert (await client.get("/api/invitations", headers=person.headers)).json() == []
    late = await client.post(f"/api/invitations/{invitation_id}/accept", headers=person.headers)
    assert late.status_code == 409
    assert str(person.user_id) not in await _members(client, owner)
    twice = await client.delete(f"/api/members/invitations/{invitation_id}", headers=owner.headers)
    assert twice.status_code == 409


async def test_each_step_of_an_invitation_is_audited_without_the_address(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="audited-host")
    joiner = await register(client, label="joiner")
    decliner = await register(client, label="decliner")
    joined = await invite(client, owner, joiner.email, "member")
    await accept(client, joiner, joined)
    declined = await invite(client, owner, decliner.email, "viewer")
    assert (
        await client.post(f"/api/invitations/{declined}/decline", headers=decliner.headers)
    ).status_code == 204
    withdrawn = await invite(client, owner, unique_email("withdrawn"), "admin")
    assert (
        await client.delete(f"/api/members/invitations/{withdrawn}", headers=owner.headers)
    ).status_code == 204

    response = await client.get(
        "/api/audit-logs", params={"scope": "org", "limit": 100}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    events = [e for e in response.json()["items"] if e["action"].startswith("member.invite")]
    seen = {
        (e["action"], e["actor_user_id"], e["resource_id"], e["details"]["role"]) for e in events
    }
    assert seen == {
        ("member.invite", str(owner.user_id), str(joined), "member"),
        ("member.invite_accept", str(joiner.user_id), str(joiner.user_id), "member"),
        ("member.invite", str(owner.user_id), str(declined), "viewer"),
        ("member.invite_decline", str(decliner.user_id), str(declined), "viewer"),
        ("member.invite", str(owner.user_id), str(withdrawn), "admin"),
        ("member.invite_revoke", str(owner.user_id), str(withdrawn), "admin"),
    }
    assert "@" not in str([e["details"] for e in events])
    chain = await client.get("/api/audit-logs/verify", headers=owner.headers)
    assert chain.json()["ok"] is True, chain.json()


async def test_erasing_an_account_deletes_the_invitations_addressed_to_it(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="erasure-host")
    person = await register(client, label="erased-invitee")
    await invite(client, owner, person.email)
    erased = await client.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=person.headers,
    )
    assert erased.status_code == 200, erased.text
    async with runtime.database.system_engine.connect() as conn:
        left = await conn.execute(
            text("select count(*) from invitations where email = :e"), {"e": person.email}
        )
        assert left.scalar_one() == 0
