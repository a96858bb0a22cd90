"""Security headers: a strict Content-Security-Policy (no inline script, no framing), nosniff,
a same-origin referrer policy, and HSTS in production only."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskloom.web.security_headers import SecurityHeadersMiddleware

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
