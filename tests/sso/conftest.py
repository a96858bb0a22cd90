"""SSO fixtures: a deployment of its own whose outbound guard lets the flow reach the loopback
OpenID provider (OUTBOUND_ALLOWED_HOSTS=127.0.0.1), the app over it, a real provider
(tests/oidc_provider.py) with its users, and helpers that drive the flow with httpx; and rows
seeded directly for the SSO-required rules (`sso`)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from taskloom.audit.models import AuditLog
from taskloom.auth.models import Session, User
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.conftest import fresh_deployment
from tests.factories import Account, make_superuser
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.oidc_provider import OidcProvider, ProviderFactory, sign_in_at_provider, web_client
from tests.sso.required_support import SsoSeed

BASE = "http://testserver"
CLIENT_SECRET = "taskloom-client-secret"
SIGNED_OUT = f"{BASE}/ui/login?notice=signed-out"


def person(account: str, **claims: Any) -> dict[str, Any]:
    return {
        "password": f"{account}-password",
        "claims": {
            "email": f"{account}@corp.example",
            "email_verified": True,
            "name": account.title(),
            "groups": [],
            **claims,
        },
    }


@pytest.fixture(scope="module")
async def sso_settings(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(
        pg_server_url, redis_url, label="sso", outbound_allowed_hosts="127.0.0.1"
    ) as settings:
        yield settings


@pytest.fixture(scope="module")
async def sso_runtime(sso_settings: Settings) -> AsyncIterator[Runtime]:
    async with opened_runtime(sso_settings) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def sso_app(sso_runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(sso_runtime) as app:
        yield app


@pytest.fixture
async def api(sso_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(sso_app, ip="203.0.113.20") as client:
        yield client


@pytest.fixture
async def root(api: httpx.AsyncClient, sso_runtime: Runtime) -> Account:
    return await make_superuser(api, sso_runtime)


def callback(slug: str) -> str:
    return f"{BASE}/auth/oidc/{slug}/callback"


def start_provider(
    factory: ProviderFactory, slugs: list[str], users: dict[str, Any], **options: Any
) -> OidcProvider:
    return factory(
        clients=[
            web_client(
                "taskloom",
                CLIENT_SECRET,
                [callback(s) for s in slugs],
                post_logout_redirect_uris=[SIGNED_OUT],
            )
        ],
        users=users,
        **options,
    )


async def add_provider(
    api: httpx.AsyncClient,
    root: Account,
    provider: OidcProvider,
    *,
    slug: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    body = {
        "slug": slug or f"idp-{secrets.token_hex(3)}",
        "display_name": "Corp IdP",
        "issuer": provider.url,
        "client_id": "taskloom",
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "email", "profile", "groups"],
        "groups_claim": "groups",
        "enabled": True,
        "jit": True,
        **fields,
    }
    response = await api.post("/api/admin/sso/providers", json=body, headers=root.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@dataclass
class Browser:
    """One person's user agent: the app (ASGI) and the provider (real HTTP), own cookies."""

    app: httpx.AsyncClient
    idp: httpx.AsyncClient


@pytest.fixture
async def new_browser(sso_app: FastAPI) -> AsyncIterator[Any]:
    opened: list[Browser] = []

    async def open_one() -> Browser:
        transport = httpx.ASGITransport(app=sso_app, client=("198.51.100.20", 50000))
        browser = Browser(
            app=httpx.AsyncClient(transport=transport, base_url=BASE),
            idp=httpx.AsyncClient(follow_redirects=False),
        )
        opened.append(browser)
        return browser

    yield open_one
    for browser in opened:
        await browser.app.aclose()
        await browser.idp.aclose()


async def to_callback(
    browser: Browser, slug: str, account: str, *, query: str = "next=/ui/"
) -> httpx.URL:
    """Start a sign-in and sign in at the provider: the callback URL, not yet requested."""
    started = await browser.app.get(f"/auth/oidc/{slug}/start?{query}")
    assert started.status_code == 302, started.text
    return await sign_in_at_provider(
        browser.idp, started.headers["location"], account, f"{account}-password", callback(slug)
    )


async def sign_in_with(
    browser: Browser, slug: str, account: str, *, query: str = "next=/ui/"
) -> httpx.Response:
    """The whole browser flow; the callback's answer."""
    url = await to_callback(browser, slug, account, query=query)
    return await browser.app.get(str(url).removeprefix(BASE))


async def audit_rows(runtime: Runtime, action: str, **details: Any) -> list[AuditLog]:
    async with system_transaction(runtime.database) as db:
        rows = (
            await db.execute(
                select(AuditLog)
                .where(AuditLog.action == action)
                .order_by(AuditLog.created_at, AuditLog.seq)
            )
        ).scalars()
        return [r for r in rows if all((r.details or {}).get(k) == v for k, v in details.items())]


async def session_count(runtime: Runtime) -> int:
    async with system_transaction(runtime.database) as db:
        return int(await db.scalar(select(func.count()).select_from(Session)) or 0)


async def flow_keys(runtime: Runtime) -> int:
    """How many started sign-in flows (state, nonce, PKCE verifier) Redis holds for this
    deployment's key prefix."""
    pattern = runtime.keys("sso", "flow", "*")
    return len([k async for k in runtime.redis.scan_iter(match=pattern, count=1000)])


async def user_exists(runtime: Runtime, email: str) -> bool:
    async with system_transaction(runtime.database) as db:
        found = await db.scalar(select(func.count()).select_from(User).where(User.email == email))
        return bool(found)


@pytest.fixture
async def sso(runtime: Runtime) -> AsyncIterator[SsoSeed]:
    """Providers, mappings and SSO sessions seeded in the database, removed afterwards."""
    seed = SsoSeed(runtime)
    yield seed
    await seed.cleanup()
