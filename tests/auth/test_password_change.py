"""POST /auth/password: the person changes their password with the current one; their other
sessions end at once (access and refresh tokens), this one stays; a wrong current password is a
failed sign-in attempt (same counters, same 429)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from taskloom.app import create_app
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, Account, login, register

NEW_PASSWORD = "a brand new passphrase for taskloom"


async def _change(
    client: httpx.AsyncClient, account: Account, current: str, new: str = NEW_PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/password",
        json={"current_password": current, "new_password": new},
        headers=account.headers,
    )


async def _password_events(client: httpx.AsyncClient, account: Account) -> list[dict[str, object]]:
    response = await client.get(
        "/api/audit-logs", params={"action": "auth.password_change"}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    items: list[dict[str, object]] = body["items"] if isinstance(body, dict) else body
    return items


async def test_changing_the_password_signs_out_the_other_sessions_but_not_this_one(
    client: httpx.AsyncClient,
) -> None:
    here = await register(client, label="pwchange")
    elsewhere = await login(client, here.email)

    changed = await _change(client, here, PASSWORD)
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"sessions_revoked": 1}

    # The other session is dead at once: its access token and its refresh token.
    assert (await client.get("/auth/me", headers=elsewhere.headers)).status_code == 401
    refreshed = await client.post("/auth/refresh", json={"refresh_token": elsewhere.refresh_token})
    assert refreshed.status_code == 401
    # This one still works, access and refresh.
    assert (await client.get("/auth/me", headers=here.headers)).status_code == 200
    again = await client.post("/auth/refresh", json={"refresh_token": here.refresh_token})
    assert again.status_code == 200, again.text

    old = await client.post("/auth/login", json={"email": here.email, "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post("/auth/login", json={"email": here.email, "password": NEW_PASSWORD})
    assert new.status_code == 200, new.text

    events = await _password_events(client, here)
    assert [e["success"] for e in events] == [True]
    assert events[0]["details"] == {"source": "self", "sessions_revoked": 1}


async def test_a_wrong_current_password_is_refused_audited_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client, label="pwwrong")
    other = await login(client, account.email)
    refused = await _change(client, account, "not my password")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_current_password"
    assert (await client.get("/auth/me", headers=other.headers)).status_code == 200
    ok = await client.post("/auth/login", json={"email": account.email, "password": PASSWORD})
    assert ok.status_code == 200
    events = await _password_events(client, account)
    assert [e["success"] for e in events] == [False]


async def test_the_new_password_follows_the_registration_rules(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client, label="pwweak")
    weak = await _change(client, account, PASSWORD, new="short")
    assert weak.status_code == 400
    assert weak.json()["error"]["code"] == "weak_password"
    empty = await _change(client, account, PASSWORD, new="")
    assert empty.status_code == 422


async def test_an_api_key_cannot_change_the_password(client: httpx.AsyncClient) -> None:
    account = await register(client, label="pwkey")
    created = await client.post("/auth/api-keys", json={"name": "ci"}, headers=account.headers)
    key = created.json()["key"]
    response = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403


@pytest.fixture
async def strict_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An app allowing 3 failed sign-ins per account."""
    settings = runtime.settings.model_copy(update={"login_max_failures_per_account": 3})
    app: FastAPI = create_app(runtime=dataclasses.replace(runtime, settings=settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.77", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_wrong_current_passwords_count_as_failed_sign_ins(
    strict_client: httpx.AsyncClient,
) -> None:
    account = await register(strict_client, label="pwthrottle")
    for _ in range(3):
        assert (await _change(strict_client, account, "guess")).status_code == 400
    # The account's failures are used up: the form and the sign-in page both answer 429.
    blocked = await _change(strict_client, account, PASSWORD)
    assert blocked.status_code == 429
    signin = await strict_client.post(
        "/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert signin.status_code == 429
