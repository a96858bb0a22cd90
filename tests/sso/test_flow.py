"""The sign-in flow against a real OpenID provider, driven with httpx: the browser ends signed
in to the UI as a password sign-in does; the CLI's token mode ends in tokens for /auth/me;
accounts are made just in time only when the provider allows it; an existing password account
is never taken over."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.oidc_provider import OidcProvider, ProviderFactory
from tests.sso.conftest import (
    BASE,
    add_provider,
    audit_rows,
    callback,
    person,
    session_count,
    sign_in_with,
    start_provider,
    to_callback,
)

SLUGS = ["acme", "nojit", "link", "tok"]


@pytest.fixture(scope="module")
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    users = {name: person(name) for name in ["alice", "bob", "carol", "dave", "erin"]}
    return start_provider(oidc_provider_factory, SLUGS, users)


@pytest.fixture
async def acme(api: httpx.AsyncClient, root: Account, idp: OidcProvider) -> dict[str, Any]:
    found = await api.get("/api/admin/sso/providers/acme", headers=root.headers)
    if found.status_code == 200:
        return dict(found.json())
    return await add_provider(api, root, idp, slug="acme", display_name="Acme IdP")


async def test_browser_flow_ends_signed_in_to_the_ui_and_redirects_to_next(
    new_browser: Any, acme: dict[str, Any], sso_runtime: Runtime
) -> None:
    browser = await new_browser()
    answer = await sign_in_with(browser, "acme", "alice", query="next=/ui/privacy")

    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/privacy"
    assert {c.name for c in browser.app.cookies.jar if c.path == "/ui"} >= {
        "taskloom_access",
        "taskloom_refresh",
    }
    page = await browser.app.get("/ui/privacy")
    assert page.status_code == 200
    assert "alice@corp.example" in page.text
    logins = await audit_rows(sso_runtime, "auth.sso_login", provider="acme")
    assert logins, "the sign-in is audited"


async def test_token_mode_ends_in_a_one_time_code_exchanged_for_tokens(
    new_browser: Any, api: httpx.AsyncClient, acme: dict[str, Any]
) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = f"mode=token&code_challenge={challenge.rstrip(b'=').decode()}"
    browser = await new_browser()
    url = await to_callback(browser, "acme", "bob", query=query)
    answer = await browser.app.get(
        str(url).removeprefix(BASE), headers={"Accept": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    code = answer.json()["code"]
    assert answer.json()["expires_in"] == 60

    wrong = await api.post("/auth/oidc/exchange", json={"code": code, "code_verifier": "x" * 43})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "sso_bad_exchange"

    # The code was used up by the wrong verifier: a new flow.
    browser = await new_browser()
    url = await to_callback(browser, "acme", "bob", query=query)
    code = (
        await browser.app.get(str(url).removeprefix(BASE), headers={"Accept": "application/json"})
    ).json()["code"]
    tokens = await api.post("/auth/oidc/exchange", json={"code": code, "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.text
    me = await api.get(
        "/auth/me", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["user"]["email"] == "bob@corp.example"
    again = await api.post("/auth/oidc/exchange", json={"code": code, "code_verifier": verifier})
    assert again.json()["error"]["code"] == "sso_bad_exchange"


async def test_token_mode_delivers_the_code_to_a_loopback_redirect_uri(
    new_browser: Any, acme: dict[str, Any]
) -> None:
    challenge = "a" * 43
    loopback = "http://127.0.0.1:8765/done"
    browser = await new_browser()
    url = await to_callback(
        browser,
        "acme",
        "bob",
        query=f"mode=token&code_challenge={challenge}&redirect_uri={loopback}",
    )
    answer = await browser.app.get(str(url).removeprefix(BASE))
    assert answer.status_code == 302
    target = httpx.URL(answer.headers["location"])
    assert str(target).startswith(loopback + "?")
    assert len(parse_qs(target.query.decode())["code"][0]) > 20


async def test_token_mode_needs_a_code_challenge(
    api: httpx.AsyncClient, acme: dict[str, Any]
) -> None:
    answer = await api.get("/auth/oidc/acme/start?mode=token")
    assert answer.status_code == 422
    elsewhere = await api.get(
        "/auth/oidc/acme/start?mode=token&code_challenge="
        + "a" * 43
        + "&redirect_uri=http://evil.example:8080/cb"
    )
    assert elsewhere.status_code == 422
    assert "loopback" in elsewhere.json()["error"]["message"]


async def test_without_jit_a_stranger_gets_no_account(
    new_browser: Any,
    api: httpx.AsyncClient,
    root: Account,
    idp: OidcProvider,
    sso_runtime: Runtime,
) -> None:
    await add_provider(api, root, idp, slug="nojit", jit=False)
    before = await session_count(sso_runtime)
    browser = await new_browser()
    answer = await sign_in_with(browser, "nojit", "carol")

    assert answer.status_code == 403
    assert "does not create accounts" in answer.text
    assert await audit_rows(
        sso_runtime, "auth.sso_failed", provider="nojit", reason="sso_no_account"
    )
    assert await session_count(sso_runtime) == before


async def test_an_existing_password_account_is_linked_only_after_its_password(
    new_browser: Any,
    api: httpx.AsyncClient,
    root: Account,
    idp: OidcProvider,
    sso_runtime: Runtime,
) -> None:
    await add_provider(api, root, idp, slug="link")
    owner = await register(api, label="dave")
    idp.set_claims("dave", email=owner.email)
    before = await session_count(sso_runtime)

    browser = await new_browser()
    answer = await sign_in_with(browser, "link", "dave")
    assert answer.status_code == 403
    assert 'action="/auth/oidc/link"' in answer.text
    assert await session_count(sso_runtime) == before, "nobody signed in before the password"
    # The link is the cookie the page set in this browser: the same form posted from another
    # browser (or site), even with the link token in it, links nothing.
    link_token = browser.app.cookies["taskloom_sso_link"]
    elsewhere = await new_browser()
    forged = await elsewhere.app.post(
        "/auth/oidc/link", data={"link_token": link_token, "password": owner.password}
    )
    assert forged.status_code == 400
    assert "not started in this browser" in forged.text
    assert await session_count(sso_runtime) == before
    assert not await audit_rows(sso_runtime, "auth.sso_link", provider="link")

    wrong = await browser.app.post("/auth/oidc/link", data={"password": "not-it"})
    assert wrong.status_code == 401
    assert await session_count(sso_runtime) == before
    assert await audit_rows(sso_runtime, "auth.sso_failed", reason="sso_link_failed")

    linked = await browser.app.post("/auth/oidc/link", data={"password": owner.password})
    assert linked.status_code == 303, linked.text
    assert (await browser.app.get("/ui/privacy")).status_code == 200
    assert await audit_rows(sso_runtime, "auth.sso_link", provider="link", how="password")

    # Next time the provider signs the person in directly.
    browser = await new_browser()
    direct = await sign_in_with(browser, "link", "dave")
    assert direct.status_code == 303, direct.text
    me = await browser.app.get("/ui/privacy")
    assert owner.email in me.text


async def test_the_sign_in_page_offers_the_enabled_providers(
    api: httpx.AsyncClient, acme: dict[str, Any]
) -> None:
    page = await api.get("/ui/login")
    assert "Sign in with Acme IdP" in page.text
    assert 'href="/auth/oidc/acme/start?next=/ui/"' in page.text
    listed = await api.get("/auth/oidc/providers")
    assert {"slug": "acme", "display_name": "Acme IdP", "start_url": "/auth/oidc/acme/start"} in (
        listed.json()
    )
    assert callback("acme") == acme["redirect_uri"]
    assert "client_secret" not in acme
    assert acme["has_client_secret"] is True
