"""SSO-required organizations (issue 23, item 3): the owner's setting, password sign-in and
switching refused there (the break-glass owner excepted, audited), password sessions signed out
when it is switched on, and API keys: new ones from admins only, old ones keep working."""

from __future__ import annotations

import uuid

import httpx

from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, add_member, login, register
from tests.sso.required_support import (
    SsoSeed,
    audit_rows,
    require_sso,
    session_count,
    session_of,
    session_row,
)


async def _patch(
    client: httpx.AsyncClient, account: Account, body: dict[str, object]
) -> httpx.Response:
    return await client.patch("/api/org", json=body, headers=account.headers)


def _error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    return error


# --- the setting -------------------------------------------------------------------------------


async def test_only_an_owner_changes_the_sso_setting_and_admins_still_rename(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Setting Org")
    admin = await add_member(client, owner, "admin")
    await sso.mapped_provider(owner.org_id)

    for body in ({"sso_required": True}, {"sso_break_glass_user_id": str(owner.user_id)}):
        refused = _error(await _patch(client, admin, body), 403)
        assert "owner" in refused["message"]
    renamed = await _patch(client, admin, {"name": "Renamed Org"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Renamed Org"
    assert renamed.json()["sso_required"] is False
    assert renamed.json()["sso_break_glass_user_id"] is None
    assert await audit_rows(runtime, owner.org_id, "org.sso_required") == []

    both = await _patch(
        client,
        owner,
        {"name": "SSO Org", "sso_required": True, "sso_break_glass_user_id": str(owner.user_id)},
    )
    assert both.status_code == 200, both.text
    shown = (await client.get("/api/org", headers=owner.headers)).json()
    assert shown["name"] == "SSO Org"
    assert shown["sso_required"] is True
    assert shown["sso_break_glass_user_id"] == str(owner.user_id)
    [row] = await audit_rows(runtime, owner.org_id, "org.sso_required")
    assert row["actor_user_id"] == owner.user_id
    assert row["details"]["sso_required"] is True
    assert row["details"]["break_glass_user_id"] == str(owner.user_id)

    assert _error(await _patch(client, owner, {}), 422)["code"] == "validation_failed"
    assert _error(await _patch(client, owner, {"sso_required": None}), 422)


async def test_requiring_sso_needs_an_enabled_provider_mapped_into_the_organization(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Unmapped Org")
    other = await register(client, label="other", organization_name="Elsewhere")

    async def refused() -> None:
        error = _error(await _patch(client, owner, {"sso_required": True}), 409)
        assert error["code"] == "sso_not_configured"
        assert "lock everyone out" in error["message"]

    await refused()  # no provider at all
    disabled = await sso.provider(enabled=False)
    await sso.mapping(disabled, owner.org_id)
    await refused()  # mapped, but disabled
    await sso.mapped_provider(other.org_id)
    await refused()  # enabled, but mapped into another organization
    assert (await client.get("/api/org", headers=owner.headers)).json()["sso_required"] is False
    assert await audit_rows(runtime, owner.org_id, "org.sso_required") == []

    await sso.mapped_provider(owner.org_id)
    enabled = await _patch(client, owner, {"sso_required": True})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["sso_required"] is True


async def test_the_break_glass_user_must_be_an_owner(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Glass Org")
    admin = await add_member(client, owner, "admin")
    stranger = await register(client, label="stranger")
    for user_id in (admin.user_id, stranger.user_id, uuid.uuid4()):
        error = _error(await _patch(client, owner, {"sso_break_glass_user_id": str(user_id)}), 422)
        assert error["code"] == "break_glass_not_owner"
    assert (await client.get("/api/org", headers=owner.headers)).json()[
        "sso_break_glass_user_id"
    ] is None

    chosen = await _patch(client, owner, {"sso_break_glass_user_id": str(owner.user_id)})
    assert chosen.json()["sso_break_glass_user_id"] == str(owner.user_id)
    cleared = await _patch(client, owner, {"sso_break_glass_user_id": None})
    assert cleared.json()["sso_break_glass_user_id"] is None
    details = [r["details"] for r in await audit_rows(runtime, owner.org_id, "org.sso_required")]
    assert [d["break_glass_user_id"] for d in details] == [str(owner.user_id), None]
    assert all(d["sso_required"] is False for d in details)


async def test_requiring_sso_signs_out_password_sessions_there_but_the_break_glass_owners(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Sweep Org")
    member = await add_member(client, owner, "member")
    at_home = await login(client, member.email)  # the member's own organization, first
    assert at_home.org_id != owner.org_id
    by_sso = await add_member(client, owner, "member", label="ssomember")
    provider_id = await sso.mapped_provider(owner.org_id)
    await sso.sso_session(by_sso, provider_id)
    key = await client.post(
        "/auth/api-keys", json={"name": "ci", "role": "member"}, headers=member.headers
    )
    assert key.status_code == 201, key.text
    for account in (owner, member, by_sso):  # every principal cached before the sweep
        assert (await client.get("/auth/me", headers=account.headers)).status_code == 200

    enabled = await _patch(
        client, owner, {"sso_required": True, "sso_break_glass_user_id": str(owner.user_id)}
    )
    assert enabled.status_code == 200, enabled.text

    signed_out = await client.get("/auth/me", headers=member.headers)
    assert _error(signed_out, 401)["code"] == "session_revoked"
    swept = await session_row(runtime, session_of(runtime, member))
    assert swept["revoked_reason"] == "sso_required"
    assert swept["revoked_at"] is not None
    refreshed = await client.post("/auth/refresh", json={"refresh_token": member.refresh_token})
    assert _error(refreshed, 401)["code"] == "session_revoked"
    for kept in (owner, by_sso, at_home):  # break-glass, SSO, and another organization's
        assert (await client.get("/auth/me", headers=kept.headers)).status_code == 200
        assert (await session_row(runtime, session_of(runtime, kept)))["revoked_at"] is None
    # Existing API keys keep working (automation), in the organization that requires SSO.
    by_key = await client.get("/api/org", headers={"Authorization": f"Bearer {key.json()['key']}"})
    assert by_key.status_code == 200, by_key.text
    assert by_key.json()["sso_required"] is True
    [row] = await audit_rows(runtime, owner.org_id, "org.sso_required")
    assert row["details"]["sessions_revoked"] == 1


# --- password sign-in --------------------------------------------------------------------------


async def test_password_sign_in_into_an_sso_required_organization_is_refused_and_audited(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Refusing Org")
    member = await add_member(client, owner, "member")
    await require_sso(client, owner, sso)
    sessions = await session_count(runtime, member.user_id)

    refused = await client.post(
        "/auth/login",
        json={"email": member.email, "password": PASSWORD, "org_id": str(owner.org_id)},
    )
    error = _error(refused, 403)
    assert error["code"] == "sso_required"
    assert "'Refusing Org' requires single sign-on" in error["message"]
    assert "/auth/oidc/providers" in error["message"]
    assert await session_count(runtime, member.user_id) == sessions  # nobody signed in
    [row] = await audit_rows(runtime, owner.org_id, "auth.login_failed")
    assert row["actor_user_id"] == member.user_id
    assert row["success"] is False
    assert row["details"] == {"reason": "sso_required"}

    wrong = await client.post(  # a wrong password is still just that
        "/auth/login",
        json={"email": member.email, "password": "not the password", "org_id": str(owner.org_id)},
    )
    assert _error(wrong, 401)["code"] == "invalid_credentials"


async def test_sign_in_without_an_organization_skips_those_that_require_sso(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    person = await register(client, label="person", organization_name="First Org")
    other_owner = await register(client, label="owner", organization_name="Second Org")
    # `person` owns First Org (their first membership) and is a member of Second Org.
    await _join_as(client, other_owner, person)
    await require_sso(client, person, sso)  # First Org, with no break-glass owner

    second = await login(client, person.email)
    assert second.org_id == other_owner.org_id  # the first one a password may act in
    assert await audit_rows(runtime, person.org_id, "auth.login_failed") == []

    await require_sso(client, other_owner, sso)  # now every organization of theirs does
    refused = await client.post("/auth/login", json={"email": person.email, "password": PASSWORD})
    error = _error(refused, 403)
    assert error["code"] == "sso_required"
    assert error["message"].startswith("every organization you belong to requires single sign-on")
    [row] = await audit_rows(runtime, person.org_id, "auth.login_failed")
    assert row["details"] == {"reason": "sso_required"}


async def _join_as(client: httpx.AsyncClient, owner: Account, person: Account) -> None:
    invited = await client.post(
        "/api/members", json={"email": person.email, "role": "member"}, headers=owner.headers
    )
    accepted = await client.post(
        f"/api/invitations/{invited.json()['invitation_id']}/accept", headers=person.headers
    )
    assert accepted.status_code == 200, accepted.text


async def test_the_break_glass_owner_signs_in_with_a_password_audited(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Glass Sign-in Org")
    await require_sso(client, owner, sso, break_glass=owner.user_id)

    chosen = await login(client, owner.email, org_id=owner.org_id)
    default = await login(client, owner.email)  # their only organization
    assert default.org_id == owner.org_id
    glass = await audit_rows(runtime, owner.org_id, "auth.break_glass")
    assert [r["resource_id"] for r in glass] == [
        str(session_of(runtime, chosen)),
        str(session_of(runtime, default)),
    ]
    assert all(r["actor_user_id"] == owner.user_id for r in glass)
    assert [r["details"] for r in glass] == [{"via": "login"}] * 2
    logins = await audit_rows(runtime, owner.org_id, "auth.login")
    assert str(session_of(runtime, chosen)) in [r["resource_id"] for r in logins]
    assert (await client.get("/api/org", headers=chosen.headers)).status_code == 200


async def test_a_demoted_break_glass_user_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Demotion Org")
    second = await add_member(client, owner, "owner", label="second")
    await sso.sso_session(owner, await sso.mapped_provider(owner.org_id))  # not swept
    await require_sso(client, owner, sso, break_glass=second.user_id)
    demoted = await client.patch(
        f"/api/members/{second.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert demoted.status_code == 200, demoted.text
    refused = await client.post(
        "/auth/login",
        json={"email": second.email, "password": PASSWORD, "org_id": str(owner.org_id)},
    )
    assert _error(refused, 403)["code"] == "sso_required"
    assert await audit_rows(runtime, owner.org_id, "auth.break_glass") == []


# --- switching organization --------------------------------------------------------------------


async def test_switching_into_an_sso_required_organization(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Switch Target")
    member = await add_member(client, owner, "member")
    await require_sso(client, owner, sso, break_glass=owner.user_id)
    from_home = await login(client, member.email)  # a password session in their own org

    async def switch(account: Account) -> httpx.Response:
        return await client.post(
            "/auth/switch-org", json={"org_id": str(owner.org_id)}, headers=account.headers
        )

    error = _error(await switch(from_home), 403)
    assert error["code"] == "sso_required"
    assert "/auth/oidc/providers" in error["message"]
    assert (await session_row(runtime, session_of(runtime, from_home)))[
        "org_id"
    ] == from_home.org_id

    # An SSO session whose provider maps elsewhere: refused too.
    elsewhere = await sso.mapped_provider(from_home.org_id)
    unmapped = await login(client, member.email)
    await sso.sso_session(unmapped, elsewhere)
    assert _error(await switch(unmapped), 403)["code"] == "sso_required"

    # An SSO session whose provider maps into the target: allowed, no break-glass.
    mapped = await sso.mapped_provider(owner.org_id)
    by_sso = await login(client, member.email)
    await sso.sso_session(by_sso, mapped)
    switched = await switch(by_sso)
    assert switched.status_code == 200, switched.text
    assert (await session_row(runtime, session_of(runtime, by_sso)))["org_id"] == owner.org_id
    as_member = {"Authorization": f"Bearer {switched.json()['access_token']}"}
    assert (await client.get("/auth/me", headers=as_member)).json()["org_id"] == str(owner.org_id)

    # The break-glass owner's password session, from another organization: allowed, audited.
    elsewhere_org = await client.post(
        "/api/orgs", json={"name": "Owner's Other"}, headers=owner.headers
    )
    away = await login(client, owner.email, org_id=uuid.UUID(elsewhere_org.json()["id"]))
    back = await switch(away)
    assert back.status_code == 200, back.text
    glass = await audit_rows(runtime, owner.org_id, "auth.break_glass")
    assert [(r["resource_id"], r["details"]) for r in glass][-1] == (
        str(session_of(runtime, away)),
        {"via": "switch_org"},
    )
    switches = await audit_rows(runtime, owner.org_id, "auth.switch_org")
    assert [r["actor_user_id"] for r in switches] == [member.user_id, owner.user_id]


# --- API keys ----------------------------------------------------------------------------------


async def test_in_an_sso_required_organization_only_admins_create_api_keys(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed
) -> None:
    owner = await register(client, label="owner", organization_name="Keys Org")
    member = await add_member(client, owner, "member")
    admin = await add_member(client, owner, "admin")
    provider_id = await sso.mapped_provider(owner.org_id)
    for account in (member, admin):  # their sessions in the org are SSO sessions
        await sso.sso_session(account, provider_id)
    await require_sso(client, owner, sso)

    refused = await client.post(
        "/auth/api-keys", json={"name": "mine", "role": "viewer"}, headers=member.headers
    )
    error = _error(refused, 403)
    assert error["code"] == "sso_required_admin_keys"
    created = await client.post(
        "/auth/api-keys", json={"name": "ci", "role": "member"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    [row] = await audit_rows(runtime, owner.org_id, "api_key.create")
    assert row["actor_user_id"] == admin.user_id
    assert row["resource_id"] == created.json()["id"]
    assert row["details"] == {"name": "ci", "role": "member"}
    used = await client.get(
        "/api/org", headers={"Authorization": f"Bearer {created.json()['key']}"}
    )
    assert used.status_code == 200, used.text
