"""The UI's cookie session: CSRF on every form, cookies that never authenticate the JSON API,
transparent refresh of an expired access token, sign-out, and no open redirect."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from taskloom.app import create_app
from taskloom.auth.service import TokenPair
from taskloom.config import Settings
from taskloom.runtime import Runtime
from taskloom.web.cookies import ACCESS_COOKIE, CSRF_COOKIE, REFRESH_COOKIE
from taskloom.web.refresh import seal, unseal
from taskloom.web.routes import AREAS
from tests.factories import PASSWORD, Account
from tests.web.conftest import Browser
from tests.web.support import csrf_of, post_form, set_ui_cookie, sign_in, text_of

DEFINITION = '{"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]}'


async def _workflow_count(client: httpx.AsyncClient, account: Account) -> int:
    response = await client.get("/api/workflows", headers=account.headers)
    assert response.status_code == 200
    return len(response.json())


async def test_a_sign_in_form_without_a_csrf_token_is_refused_with_403(
    new_browser: Browser, owner: Account
) -> None:
    browser = await new_browser()
    await browser.get("/ui/login")  # the browser holds its nonce cookie
    response = await browser.post("/ui/login", data={"email": owner.email, "password": PASSWORD})
    assert response.status_code == 403
    assert "security token is missing" in text_of(response)
    assert ACCESS_COOKIE not in response.cookies


async def test_a_sign_in_form_with_another_browsers_token_is_refused_with_403(
    new_browser: Browser, owner: Account
) -> None:
    attacker, victim = await new_browser(), await new_browser()
    token = csrf_of(await attacker.get("/ui/login"))  # valid, but for the attacker's nonce
    await victim.get("/ui/login")
    response = await victim.post(
        "/ui/login", data={"email": owner.email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 403
    assert ACCESS_COOKIE not in response.cookies


async def test_a_signed_in_form_without_or_with_a_wrong_token_changes_nothing(
    client: httpx.AsyncClient,
    new_browser: Browser,
    owner_browser: httpx.AsyncClient,
    owner: Account,
) -> None:
    other = await new_browser()
    await sign_in(other, owner.email)  # the same person, another session
    other_token = csrf_of(await other.get("/ui/workflows/new"))
    before = await _workflow_count(client, owner)
    form = {"name": "csrf", "definition": DEFINITION}
    for token in (None, "0" * 64, other_token):
        data = form if token is None else {**form, "csrf_token": token}
        response = await owner_browser.post("/ui/workflows/new", data=data)
        assert response.status_code == 403, token
        assert "Form expired" in response.text
    assert await _workflow_count(client, owner) == before
    accepted = await post_form(owner_browser, "/ui/workflows/new", form)
    assert accepted.status_code == 303
    assert await _workflow_count(client, owner) == before + 1


def _ui_post_routes() -> list[str]:
    paths = []
    for area in AREAS:
        for route in area.router.routes:
            if isinstance(route, APIRoute) and "POST" in route.methods:
                paths.append(route.path)
    return sorted(paths)


async def test_every_form_post_of_the_ui_checks_the_csrf_token(
    owner_browser: httpx.AsyncClient,
) -> None:
    values = {
        "workflow_id": str(uuid.uuid4()),
        "execution_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "connection_id": str(uuid.uuid4()),
        "webhook_id": str(uuid.uuid4()),
        "invitation_id": str(uuid.uuid4()),
        "approval_id": str(uuid.uuid4()),
        "schedule_id": str(uuid.uuid4()),
        "trigger_id": str(uuid.uuid4()),
        "key": "no-such-flag",
        "slug": "no-such-provider",
        "mapping_id": str(uuid.uuid4()),
        "number": "1",  # a workflow's version
    }
    paths = _ui_post_routes()
    assert len(paths) >= 25, paths  # the whole UI was walked
    problems = []
    for path in paths:
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        response = await owner_browser.post(url, data={"name": "x"})
        if response.status_code != 403:
            problems.append(f"POST {path}: {response.status_code}")
    assert not problems, "\n".join(problems)
    # The session survived all of that.
    assert (await owner_browser.get("/ui/workflows")).status_code == 200


async def test_session_cookies_are_httponly_lax_and_scoped_to_the_ui(
    new_browser: Browser, owner: Account
) -> None:
    browser = await new_browser()
    response = await sign_in(browser, owner.email)
    set_cookies = response.headers.get_list("set-cookie")
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        (cookie,) = [c for c in set_cookies if c.startswith(f"{name}=")]
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/ui", "samesite=lax"} <= attributes
        assert "secure" not in attributes  # the test deployment is not production
    # The pre-sign-in nonce is dropped once signed in.
    assert any(c.startswith(f'{CSRF_COOKIE}=""') for c in set_cookies)


async def test_the_ui_cookies_never_authenticate_the_json_api(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient
) -> None:
    access = owner_browser.cookies.get(ACCESS_COOKIE, path="/ui")
    refresh = owner_browser.cookies.get(REFRESH_COOKIE, path="/ui")
    assert access
    assert refresh
    cookie = f"{ACCESS_COOKIE}={access}; {REFRESH_COOKIE}={refresh}"
    for method, path in [
        ("GET", "/api/workflows"),
        ("GET", "/auth/me"),
        ("GET", "/api/user/data-export"),
        ("POST", "/auth/logout"),
        ("POST", "/api/workflows"),
    ]:
        response = await client.request(method, path, headers={"Cookie": cookie}, json={})
        assert response.status_code == 401, (method, path, response.text)
    # The same token as a bearer credential works: only the transport differs.
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 200


def _expired_copy(settings: Settings, token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["exp"] = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    claims["iat"] = claims["exp"] - 900
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


async def test_an_expired_access_token_is_rotated_transparently(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, settings: Settings
) -> None:
    old_access = owner_browser.cookies.get(ACCESS_COOKIE, path="/ui")
    old_refresh = owner_browser.cookies.get(REFRESH_COOKIE, path="/ui")
    assert old_access
    assert old_refresh
    set_ui_cookie(owner_browser, ACCESS_COOKIE, _expired_copy(settings, old_access))
    page = await owner_browser.get("/ui/workflows")
    assert page.status_code == 200
    new_refresh = owner_browser.cookies.get(REFRESH_COOKIE, path="/ui")
    assert new_refresh
    assert new_refresh != old_refresh
    assert owner_browser.cookies.get(ACCESS_COOKIE, path="/ui") != old_access
    # The old refresh token was used up by the rotation.
    reused = await client.post("/auth/refresh", json={"refresh_token": old_refresh})
    assert reused.status_code == 401


async def test_two_pages_refreshing_at_once_do_not_revoke_the_session(
    owner_browser: httpx.AsyncClient, settings: Settings
) -> None:
    """Both requests present the same refresh token; the second must not count as reuse."""
    access = owner_browser.cookies.get(ACCESS_COOKIE, path="/ui")
    assert access
    set_ui_cookie(owner_browser, ACCESS_COOKIE, _expired_copy(settings, access))
    pages = await asyncio.gather(
        owner_browser.get("/ui/workflows"), owner_browser.get("/ui/executions")
    )
    assert [p.status_code for p in pages] == [200, 200]
    assert (await owner_browser.get("/ui/privacy")).status_code == 200


async def test_without_a_session_pages_send_you_to_sign_in_and_back(new_browser: Browser) -> None:
    browser = await new_browser()
    response = await browser.get("/ui/executions?status=failed")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fexecutions%3Fstatus%3Dfailed"
    form = await browser.get(response.headers["location"])
    assert 'name="next" value="/ui/executions?status=failed"' in form.text


async def test_a_garbage_or_api_key_cookie_is_not_a_session(
    new_browser: Browser, client: httpx.AsyncClient, owner: Account
) -> None:
    key = await client.post("/auth/api-keys", json={"name": "ui"}, headers=owner.headers)
    browser = await new_browser()
    for value in ("not-a-token", key.json()["key"]):
        set_ui_cookie(browser, ACCESS_COOKIE, value)
        response = await browser.get("/ui/workflows")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/api/orgs"])
async def test_sign_in_never_redirects_outside_the_ui(
    new_browser: Browser, owner: Account, target: str
) -> None:
    browser = await new_browser()
    response = await post_form(
        browser, "/ui/login", {"email": owner.email, "password": PASSWORD, "next": target}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"


async def test_signing_out_revokes_the_session_and_clears_the_cookies(
    new_browser: Browser, owner: Account
) -> None:
    browser = await new_browser()
    await sign_in(browser, owner.email)
    access = browser.cookies.get(ACCESS_COOKIE, path="/ui")
    response = await post_form(browser, "/ui/logout", {}, from_page="/ui/workflows")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?notice=signed-out"
    assert browser.cookies.get(ACCESS_COOKIE, path="/ui") is None
    # The old access token is dead too, not just forgotten by this browser.
    thief = await new_browser()
    set_ui_cookie(thief, ACCESS_COOKIE, access or "")
    assert (await thief.get("/ui/workflows")).status_code == 303


async def test_a_page_that_fails_still_hands_over_the_rotated_tokens(
    owner_browser: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise the browser would keep the used refresh token, and its next request would
    count as reuse and revoke the session."""
    from taskloom.workflows import service

    async def broken(**_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "list_workflows", broken)
    access = owner_browser.cookies.get(ACCESS_COOKIE, path="/ui")
    old_refresh = owner_browser.cookies.get(REFRESH_COOKIE, path="/ui")
    assert access
    set_ui_cookie(owner_browser, ACCESS_COOKIE, _expired_copy(settings, access))
    failed = await owner_browser.get("/ui/workflows")
    assert failed.status_code == 500
    assert "Something went wrong" in failed.text
    assert "boom" not in failed.text
    assert owner_browser.cookies.get(REFRESH_COOKIE, path="/ui") != old_refresh
    monkeypatch.undo()
    assert (await owner_browser.get("/ui/workflows")).status_code == 200


async def test_two_api_processes_refreshing_at_once_do_not_revoke_the_session(
    app: FastAPI, runtime: Runtime, owner_browser: httpx.AsyncClient, settings: Settings
) -> None:
    """Two tabs whose requests land on two API processes (two apps here, each with its own
    memory, sharing PostgreSQL and Redis) present the same refresh token at once."""
    other_process = create_app(runtime=runtime)
    access = owner_browser.cookies.get(ACCESS_COOKIE, path="/ui")
    old_refresh = owner_browser.cookies.get(REFRESH_COOKIE, path="/ui")
    assert access
    assert old_refresh
    set_ui_cookie(owner_browser, ACCESS_COOKIE, _expired_copy(settings, access))
    transport = httpx.ASGITransport(app=other_process, client=("198.51.100.9", 50001))
    async with (
        other_process.router.lifespan_context(other_process),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as tab,
    ):
        for cookie in owner_browser.cookies.jar:
            tab.cookies.set(cookie.name, cookie.value or "", domain=cookie.domain, path=cookie.path)
        pages = await asyncio.gather(owner_browser.get("/ui/workflows"), tab.get("/ui/executions"))
        assert [p.status_code for p in pages] == [200, 200]
        rotated = {b.cookies.get(REFRESH_COOKIE, path="/ui") for b in (owner_browser, tab)}
        assert len(rotated) == 1  # both tabs hold the same new pair
        assert old_refresh not in rotated
        assert (await tab.get("/ui/privacy")).status_code == 200  # the session lives on
    # What Redis held for the other process is sealed: no usable token in it.
    new_refresh = rotated.pop()
    assert new_refresh
    async for key in runtime.redis.scan_iter(match=runtime.keys.match("ui-refresh")):
        value = await runtime.redis.get(key)
        assert value is None or new_refresh not in str(value)
    assert (await owner_browser.get("/ui/workflows")).status_code == 200


def test_a_handed_over_pair_opens_only_with_the_old_refresh_token() -> None:
    pair = TokenPair(
        access_token="a.b.c",
        expires_in=900,
        refresh_token="new-refresh",
        refresh_expires_in=3600,
        user_id=uuid.uuid4(),
        org_id=None,
    )
    sealed = seal("old-refresh", pair)
    assert unseal("old-refresh", sealed) == pair
    assert unseal("another-refresh", sealed) is None
    assert b"new-refresh" not in sealed.encode()
