"""Security headers: a strict Content-Security-Policy (no inline script, no framing), nosniff,
a same-origin referrer policy, and HSTS in production only."""

from __future__ import annotations

import dataclasses

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskloom.app import create_app
from taskloom.observability.logging import configure_logging
from taskloom.runtime import Runtime
from taskloom.web.security_headers import SecurityHeadersMiddleware
from tests.factories import PASSWORD, production_settings, register
from tests.web.support import csrf_of

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


async def test_ui_pages_carry_the_security_headers(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient
) -> None:
    for response in (
        await client.get("/ui/login"),
        await owner_browser.get("/ui/workflows"),
        await client.get("/ui/static/app.css"),
        await client.get("/ui/no-such-page"),
    ):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "strict-transport-security" not in response.headers  # not production


async def test_pages_are_not_cached_and_hold_no_inline_script_or_style(
    owner_browser: httpx.AsyncClient,
) -> None:
    page = await owner_browser.get("/ui/workflows")
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text
    assert "style=" not in page.text
    assert "<style" not in page.text


async def test_the_api_gets_the_headers_too_but_swagger_ui_keeps_its_cdn(
    client: httpx.AsyncClient,
) -> None:
    api = await client.get("/health/live")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["content-security-policy"] == CSP
    docs = await client.get("/docs")
    assert "content-security-policy" not in docs.headers


async def test_a_routes_own_stricter_header_is_kept() -> None:
    async def page(_: object) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Referrer-Policy": "no-referrer"})

    app = SecurityHeadersMiddleware(Starlette(routes=[Route("/", page)]), production=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/")
    assert response.headers.get_list("referrer-policy") == ["no-referrer"]


async def test_hsts_is_sent_in_production_only() -> None:
    async def page(_: object) -> PlainTextResponse:
        return PlainTextResponse("x")

    seen = {}
    for production in (True, False):
        app = SecurityHeadersMiddleware(
            Starlette(routes=[Route("/ui/", page)]), production=production
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            seen[production] = (await client.get("/ui/")).headers.get("strict-transport-security")
    assert seen[True] == "max-age=31536000; includeSubDomains"
    assert seen[False] is None


def test_the_app_turns_hsts_on_from_the_environment(app: FastAPI) -> None:
    (middleware,) = [m for m in app.user_middleware if m.cls is SecurityHeadersMiddleware]
    assert middleware.kwargs == {"production": False}  # the test deployment is not production


async def test_in_production_sign_in_cookies_are_secure_and_every_answer_pins_https(
    runtime: Runtime,
) -> None:
    """docs/UI.md's promise, end to end: an app built from TASKLOOM_ENV=production settings (on
    this session's database and Redis) sets its sign-in cookies `Secure` and sends HSTS on UI,
    API and health answers alike."""
    production = production_settings(
        redis_key_prefix=runtime.settings.key_prefix,
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        password_hash_parallelism=1,
        log_json=False,
        log_level="warning",
        registration="open",  # the test signs up through this app (production's default: invite)
    )
    assert production.is_production
    app = create_app(runtime=dataclasses.replace(runtime, settings=production))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("192.0.2.88", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
                account = await register(c, label="production")
                form = await c.get("/ui/login")
                fields = {"email": account.email, "password": PASSWORD}
                signed_in = await c.post("/ui/login", data={**fields, "csrf_token": csrf_of(form)})
                health = await c.get("/health/live")
    finally:
        configure_logging(runtime.settings)  # create_app configured this process's logging
    assert signed_in.status_code == 303, signed_in.text
    cookies = signed_in.headers.get_list("set-cookie")
    names = {cookie.split("=", 1)[0] for cookie in cookies}
    assert {"taskloom_access", "taskloom_refresh"} <= names
    for cookie in cookies:
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=lax"} <= attributes, cookie
    for response in (form, signed_in, health):
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )
