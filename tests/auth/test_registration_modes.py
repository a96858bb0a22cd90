"""REGISTRATION=open|invite|closed: who may create an account themselves, through the API and
the UI. Production's default is `invite` (the safe one), development's and test's `open`."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from taskloom.app import create_app
from taskloom.config import Registration, Settings
from taskloom.db.tenancy import system_transaction
from taskloom.orgs.models import Invitation
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, invite, production_settings, register, unique_email
from tests.web.support import csrf_of, text_of


@asynccontextmanager
async def _client(runtime: Runtime, mode: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = runtime.settings.model_copy(update={"registration": Registration(mode)})
    app: FastAPI = create_app(runtime=dataclasses.replace(runtime, settings=settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.61", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def _body(email: str) -> dict[str, str]:
    return {"email": email, "password": PASSWORD, "display_name": "Newcomer"}


async def _ui_register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    page = await client.get("/ui/login")  # its CSRF token serves any anonymous form
    return await client.post(
        "/ui/register",
        data={**_body(email), "organization_name": "", "csrf_token": csrf_of(page)},
    )


def test_production_defaults_to_invite_and_development_to_open() -> None:
    assert production_settings().registration_mode is Registration.INVITE
    assert Settings(_env_file=None).registration_mode is Registration.OPEN
    assert Settings(_env_file=None, taskloom_env="test").registration_mode is Registration.OPEN
    chosen = production_settings(registration="open").registration_mode
    assert chosen is Registration.OPEN


async def test_open_registration_lets_anyone_register(runtime: Runtime) -> None:
    async with _client(runtime, "open") as client:
        response = await client.post("/auth/register", json=_body(unique_email("open")))
        assert response.status_code == 201, response.text
        assert (await _ui_register(client, unique_email("openui"))).status_code == 303


async def test_closed_registration_refuses_the_api_and_the_ui_with_403(runtime: Runtime) -> None:
    async with _client(runtime, "closed") as client:
        email = unique_email("closed")
        response = await client.post("/auth/register", json=_body(email))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "registration_closed"

        form = await client.get("/ui/register")
        assert form.status_code == 403
        assert "registration is closed" in text_of(form).lower()
        login_page = await client.get("/ui/login")
        assert 'href="/ui/register"' not in login_page.text
        posted = await _ui_register(client, email)
        assert posted.status_code == 403
        assert "registration is closed" in text_of(posted).lower()
        # Nothing was created: the address can still not sign in.
        signin = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert signin.status_code == 401


async def test_invite_registration_needs_a_pending_unexpired_invitation(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    admin = await register(client, label="inviter")
    invited, expired, revoked = (unique_email(x) for x in ("invited", "expired", "revoked"))
    await invite(client, admin, invited)
    expired_id = await invite(client, admin, expired)
    revoked_id = await invite(client, admin, revoked)
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(Invitation)
            .where(Invitation.id == expired_id)
            .values(expires_at=Invitation.created_at - timedelta(days=1))
        )
    gone = await client.delete(f"/api/members/invitations/{revoked_id}", headers=admin.headers)
    assert gone.status_code == 204, gone.text

    async with _client(runtime, "invite") as strict:
        for email in (unique_email("stranger"), expired, revoked):
            refused = await strict.post("/auth/register", json=_body(email))
            assert refused.status_code == 403, email
            assert refused.json()["error"]["code"] == "registration_invite_only"
        ui_refused = await _ui_register(strict, unique_email("uistranger"))
        assert ui_refused.status_code == 403
        assert "by invitation" in text_of(ui_refused)
        assert "by invitation" in text_of(await strict.get("/ui/register"))

        accepted = await strict.post("/auth/register", json=_body(invited.upper()))
        assert accepted.status_code == 201, accepted.text
        token = accepted.json()["access_token"]
        mine = await strict.get("/api/invitations", headers={"Authorization": f"Bearer {token}"})
        assert [i["org_id"] for i in mine.json()] == [str(admin.org_id)]


async def test_invite_registration_in_the_ui_for_an_invited_address(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    admin = await register(client, label="uiinviter")
    invited = unique_email("uiinvited")
    await invite(client, admin, invited)
    async with _client(runtime, "invite") as strict:
        response = await _ui_register(strict, invited)
        assert response.status_code == 303, text_of(response)
