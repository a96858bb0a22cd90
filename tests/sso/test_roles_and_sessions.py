"""Roles from groups across sign-ins (promotion, demotion, owner never granted nor taken),
the provider admin API's checks, refresh through the provider for offline_access sessions
(revoked grant, group removed), and the provider's logout."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from taskloom.db.tenancy import system_transaction
from taskloom.orgs.models import Membership
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.oidc_provider import OidcProvider, ProviderFactory, sign_out_at_provider
from tests.sso.conftest import (
    BASE,
    SIGNED_OUT,
    add_provider,
    audit_rows,
    person,
    sign_in_with,
    start_provider,
)

SLUGS = ["groups", "offline", "toggle"]


@pytest.fixture(scope="module")
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    users = {name: person(name) for name in ["gina", "hank", "ivy", "olga", "otto", "lena", "tess"]}
    return start_provider(oidc_provider_factory, SLUGS, users)


async def _role(runtime: Runtime, user_email: str, org_id: Any) -> str | None:
    async with system_transaction(runtime.database) as db:
        from taskloom.auth.models import User

        return (
            await db.execute(
                select(Membership.role)
                .join(User, User.id == Membership.user_id)
                .where(User.email == user_email, Membership.org_id == org_id)
            )
        ).scalar()


async def _map(
    api: httpx.AsyncClient, root: Account, slug: str, group: str, org: Any, role: str
) -> httpx.Response:
    return await api.post(
        f"/api/admin/sso/providers/{slug}/mappings",
        json={"group": group, "org_id": str(org), "role": role},
        headers=root.headers,
    )


async def test_groups_promote_and_demote_at_each_sign_in_and_are_audited(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    await add_provider(api, root, idp, slug="groups")
    team = await register(api, label="teamowner", organization_name="Platform")
    assert (
        await _map(api, root, "groups", "platform-admins", team.org_id, "admin")
    ).status_code == 201
    assert (
        await _map(api, root, "groups", "00000000-entra-object-id", team.org_id, "viewer")
    ).status_code == 201

    idp.set_claims("gina", groups=["platform-admins", "00000000-entra-object-id"])
    assert (await sign_in_with(await new_browser(), "groups", "gina")).status_code == 303
    assert await _role(sso_runtime, "gina@corp.example", team.org_id) == "admin"
    assert await audit_rows(sso_runtime, "member.sso_grant", provider="groups", to="admin")

    idp.set_claims("gina", groups=["00000000-entra-object-id"])
    assert (await sign_in_with(await new_browser(), "groups", "gina")).status_code == 303
    assert await _role(sso_runtime, "gina@corp.example", team.org_id) == "viewer"
    assert await audit_rows(
        sso_runtime,
        "member.sso_role_change",
        provider="groups",
        **{"from": "admin", "to": "viewer"},
    )

    idp.set_claims("gina", groups=[])
    assert (await sign_in_with(await new_browser(), "groups", "gina")).status_code == 303
    assert await _role(sso_runtime, "gina@corp.example", team.org_id) is None
    assert await audit_rows(sso_runtime, "member.sso_revoke", provider="groups", to=None)


async def test_owner_is_never_granted_nor_taken_by_a_group(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    team = await register(api, label="hank-org", organization_name="Hank's")
    refused = await _map(api, root, "groups", "owners", team.org_id, "owner")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "role_not_mappable"
    assert (
        await _map(api, root, "groups", "hank-viewers", team.org_id, "viewer")
    ).status_code == 201
    # The owner of that organization signs in with the provider (linked after the password).
    idp.set_claims("hank", email=team.email, groups=["hank-viewers"])
    browser = await new_browser()
    page = await sign_in_with(browser, "groups", "hank")
    assert page.status_code == 403
    linked = await browser.app.post("/auth/oidc/link", data={"password": team.password})
    assert linked.status_code == 303, linked.text
    assert await _role(sso_runtime, team.email, team.org_id) == "owner"
    idp.set_claims("hank", groups=[])
    assert (await sign_in_with(await new_browser(), "groups", "hank")).status_code == 303
    assert await _role(sso_runtime, team.email, team.org_id) == "owner"


async def test_the_admin_api_checks_its_input_and_hides_the_secret(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, sso_runtime: Runtime
) -> None:
    base = {"display_name": "X", "client_id": "c", "client_secret": "s", "issuer": idp.url}
    for body, field in [
        ({**base, "slug": "x1", "scopes": ["email"]}, "scopes"),
        ({**base, "slug": "x2", "issuer": "http://idp.example.com"}, "issuer"),
        ({**base, "slug": "x3", "algorithms": ["HS256"]}, "algorithms"),
        ({**base, "slug": "Bad Slug"}, "slug"),
    ]:
        answer = await api.post("/api/admin/sso/providers", json=body, headers=root.headers)
        assert answer.status_code == 422, (field, answer.text)
    created = await api.post(
        "/api/admin/sso/providers", json={**base, "slug": "x4"}, headers=root.headers
    )
    assert created.status_code == 201
    again = await api.post(
        "/api/admin/sso/providers", json={**base, "slug": "x4"}, headers=root.headers
    )
    assert again.status_code == 409
    patched = await api.patch(
        "/api/admin/sso/providers/x4", json={"client_secret": "new-secret"}, headers=root.headers
    )
    assert patched.status_code == 200
    assert "new-secret" not in patched.text
    assert "client_secret" not in patched.json()
    rows = await audit_rows(sso_runtime, "sso_provider.update", provider="x4")
    assert rows
    assert "new-secret" not in str(rows[-1].details)
    member = await register(api, label="notroot")
    assert (await api.get("/api/admin/sso/providers", headers=member.headers)).status_code == 403
    assert (
        await api.delete("/api/admin/sso/providers/x4", headers=root.headers)
    ).status_code == 204


async def _offline(api: httpx.AsyncClient, root: Account, idp: OidcProvider) -> Any:
    found = await api.get("/api/admin/sso/providers/offline", headers=root.headers)
    if found.status_code == 200:
        return found.json()
    return await add_provider(
        api,
        root,
        idp,
        slug="offline",
        scopes=["openid", "email", "profile", "groups", "offline_access"],
    )


async def _refresh_cookie(browser: Any) -> str:
    return str(next(c.value for c in browser.app.cookies.jar if c.name == "taskloom_refresh"))


async def test_a_revoked_grant_ends_the_session_at_the_next_refresh(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    await _offline(api, root, idp)
    browser = await new_browser()
    assert (await sign_in_with(browser, "offline", "olga")).status_code == 303
    refresh = await _refresh_cookie(browser)
    renewed = await api.post("/auth/refresh", json={"refresh_token": refresh})
    assert renewed.status_code == 200, renewed.text

    idp.revoke("olga")
    ended = await api.post("/auth/refresh", json={"refresh_token": renewed.json()["refresh_token"]})
    assert ended.status_code == 401
    assert ended.json()["error"]["code"] == "sso_session_ended"
    assert await audit_rows(sso_runtime, "auth.sso_session_end", provider="offline")
    me = await api.get(
        "/auth/me", headers={"Authorization": f"Bearer {renewed.json()['access_token']}"}
    )
    assert me.status_code == 401


async def test_leaving_the_group_ends_the_session_at_the_next_refresh(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    await _offline(api, root, idp)
    team = await register(api, label="ottoteam", organization_name="Otto's team")
    assert (await _map(api, root, "offline", "otto-team", team.org_id, "member")).status_code == 201
    idp.set_claims("otto", groups=["otto-team"])
    browser = await new_browser()
    assert (await sign_in_with(browser, "offline", "otto")).status_code == 303
    refresh = await _refresh_cookie(browser)

    idp.set_claims("otto", groups=[])
    ended = await api.post("/auth/refresh", json={"refresh_token": refresh})
    assert ended.status_code == 401, ended.text
    assert ended.json()["error"]["code"] == "sso_session_ended"
    assert await _role(sso_runtime, "otto@corp.example", team.org_id) is None
    assert await audit_rows(sso_runtime, "member.sso_revoke", provider="offline")
    assert await audit_rows(
        sso_runtime, "auth.sso_session_end", provider="offline", reason="left_organization"
    )


async def test_signing_out_goes_on_to_the_providers_logout_with_the_id_token(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any
) -> None:
    await _offline(api, root, idp)
    browser = await new_browser()
    assert (await sign_in_with(browser, "offline", "lena")).status_code == 303
    page = await browser.app.get("/ui/privacy")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    out = await browser.app.post("/ui/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    target = httpx.URL(out.headers["location"])
    assert str(target).startswith(idp.discovery()["end_session_endpoint"])
    assert target.params["post_logout_redirect_uri"] == SIGNED_OUT
    assert target.params["client_id"] == "taskloom"
    assert target.params["id_token_hint"].count(".") == 2
    back = await sign_out_at_provider(browser.idp, str(target), f"{BASE}/ui/login")
    assert str(back).startswith(SIGNED_OUT)
    assert (await browser.app.get("/ui/privacy")).status_code == 303  # signed out here too


async def test_disabling_a_provider_signs_out_the_sessions_it_started_at_once(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    await add_provider(api, root, idp, slug="toggle")
    browser = await new_browser()
    assert (await sign_in_with(browser, "toggle", "tess")).status_code == 303
    assert (await browser.app.get("/ui/privacy")).status_code == 200
    refresh = await _refresh_cookie(browser)

    disabled = await api.patch(
        "/api/admin/sso/providers/toggle", json={"enabled": False}, headers=root.headers
    )
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["enabled"] is False
    [audited] = await audit_rows(sso_runtime, "sso_provider.update", sessions_ended=1)
    assert audited.details["changes"]["enabled"] == {"from": True, "to": False}
    # The browser's access token stops working now, and its refresh token too.
    assert (await browser.app.get("/ui/privacy")).status_code == 303
    again = await api.post("/auth/refresh", json={"refresh_token": refresh})
    assert again.status_code == 401
