"""Small helpers that create accounts and organizations through the public API."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from taskloom.audit.service import AuditContext
from taskloom.auth.accounts import create_account
from taskloom.config import Settings
from taskloom.runtime import Runtime

PASSWORD = "correct horse battery staple"
ENCRYPTION_KEY = "k1:" + base64.b64encode(b"k" * 32).decode()


def production_settings(**overrides: Any) -> Settings:
    """Settings production accepts (nothing is contacted), with `overrides` applied."""
    values: dict[str, Any] = {
        "taskloom_env": "production",
        "jwt_secret": "x" * 48,
        "credential_encryption_keys": ENCRYPTION_KEY,
        "database_url": "postgresql://owner@db/taskloom",
        "database_app_password": "app-secret",
        "redis_url": "rediss://:s3cret-Pa55@cache.internal:6380/0",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Account:
    email: str
    password: str
    user_id: uuid.UUID
    org_id: uuid.UUID | None
    access_token: str
    refresh_token: str
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def unique_email(label: str = "user") -> str:
    return f"{label}-{secrets.token_hex(5)}@example.test"


async def register(
    client: httpx.AsyncClient, *, label: str = "user", organization_name: str | None = None
) -> Account:
    email = unique_email(label)
    body: dict[str, object] = {"email": email, "password": PASSWORD, "display_name": label.title()}
    if organization_name:
        body["organization_name"] = organization_name
    response = await client.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    data = response.json()
    return Account(
        email=email,
        password=PASSWORD,
        user_id=uuid.UUID(data["user_id"]),
        org_id=uuid.UUID(data["org_id"]),
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
    )


async def login(
    client: httpx.AsyncClient, email: str, *, org_id: uuid.UUID | None = None
) -> Account:
    body: dict[str, object] = {"email": email, "password": PASSWORD}
    if org_id:
        body["org_id"] = str(org_id)
    response = await client.post("/auth/login", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return Account(
        email=email,
        password=PASSWORD,
        user_id=uuid.UUID(data["user_id"]),
        org_id=uuid.UUID(data["org_id"]) if data["org_id"] else None,
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
    )


async def invite(
    client: httpx.AsyncClient, admin: Account, email: str, role: str = "member"
) -> uuid.UUID:
    """`admin` invites `email` to their current org; returns the invitation's id."""
    response = await client.post(
        "/api/members", json={"email": email, "role": role}, headers=admin.headers
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["invitation_id"])


async def accept(client: httpx.AsyncClient, person: Account, invitation_id: uuid.UUID) -> None:
    response = await client.post(f"/api/invitations/{invitation_id}/accept", headers=person.headers)
    assert response.status_code == 200, response.text


async def join(client: httpx.AsyncClient, admin: Account, person: Account, role: str) -> None:
    """`person` joins `admin`'s current org with `role` the way people do: `admin` invites,
    `person` accepts. An owner is made as the API allows: an admin who joined, then promoted
    (`admin` must then be an owner)."""
    await accept(client, person, await invite(client, admin, person.email, _invited_as(role)))
    if role == "owner":
        promoted = await client.patch(
            f"/api/members/{person.user_id}", json={"role": "owner"}, headers=admin.headers
        )
        assert promoted.status_code == 200, promoted.text


def _invited_as(role: str) -> str:
    return "admin" if role == "owner" else role


async def add_member(
    client: httpx.AsyncClient, admin: Account, role: str, *, label: str | None = None
) -> Account:
    """Register a new person who joins `admin`'s current org with `role` (invited, accepted);
    the returned account is signed in to that org."""
    person = await register(client, label=label or role)
    await join(client, admin, person, role)
    return await login(client, person.email, org_id=admin.org_id)


async def make_superuser(client: httpx.AsyncClient, runtime: Runtime) -> Account:
    """An instance administrator without an organization, created as `taskloom user create
    --superuser` does, signed in."""
    email = unique_email("root")
    await create_account(
        runtime=runtime,
        email=email,
        password=PASSWORD,
        display_name="Root",
        org_name=None,
        is_superuser=True,
        context=AuditContext(),
    )
    return await login(client, email)
