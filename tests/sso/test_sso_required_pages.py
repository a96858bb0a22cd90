"""The web UI shows the refusals of SSO-required organizations as pages people can read: the
sign-in form with the reason, and the organization switcher's "not allowed" page."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from taskloom.runtime import Runtime
from taskloom.web.cookies import ACCESS_COOKIE, REFRESH_COOKIE
from tests.factories import PASSWORD, add_member, register
from tests.sso.required_support import SsoSeed, audit_rows, require_sso
from tests.web.support import post_form, sign_in, text_of


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.23", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_the_sign_in_page_says_the_organization_requires_single_sign_on(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed, browser: httpx.AsyncClient
) -> None:
    owner = await register(client, label="owner", organization_name="Page Org")
    await require_sso(client, owner, sso)  # their only organization, no break-glass owner

    page = await post_form(browser, "/ui/login", {"email": owner.email, "password": PASSWORD})
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    shown = text_of(page)
    assert "There is a problem" in shown
    assert "every organization you belong to requires single sign-on" in shown
    assert "/auth/oidc/providers" in shown
    assert 'name="password"' in page.text  # the form again, not an error page
    assert {c.name for c in browser.cookies.jar} & {ACCESS_COOKIE, REFRESH_COOKIE} == set()
    [row] = await audit_rows(runtime, owner.org_id, "auth.login_failed")
    assert row["details"] == {"reason": "sso_required"}


async def test_the_organization_switcher_explains_the_refusal(
    client: httpx.AsyncClient, runtime: Runtime, sso: SsoSeed, browser: httpx.AsyncClient
) -> None:
    owner = await register(client, label="owner", organization_name="Switcher Org")
    member = await add_member(client, owner, "member")
    await require_sso(client, owner, sso)
    await sign_in(browser, member.email)  # their own organization: no SSO there

    page = await post_form(
        browser, "/ui/switch-org", {"org_id": str(owner.org_id)}, from_page="/ui/privacy"
    )
    assert page.status_code == 403
    shown = text_of(page)
    assert "Not allowed" in shown
    assert "'Switcher Org' requires single sign-on" in shown
    me = await browser.get("/ui/privacy")  # still signed in, where they were
    assert me.status_code == 200
    assert await audit_rows(runtime, owner.org_id, "auth.switch_org") == []
