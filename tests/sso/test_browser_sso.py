"""End to end in Chromium: a real `taskloom api` and a real OpenID provider; the person clicks
"Sign in with …" on the sign-in page, signs in on the provider's form and lands on the UI
signed in (the account made just in time)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from taskloom.config import Settings
from tests.cli_support import deployment_env, serve_api
from tests.conftest import fresh_deployment
from tests.factories import make_superuser
from tests.in_process import opened_runtime
from tests.oidc_provider import OidcProvider, ProviderFactory, web_client
from tests.servers import free_port
from tests.sso.conftest import CLIENT_SECRET, person
from tests.web.test_browser_e2e import TIMEOUT_MS, chromium  # noqa: F401 (a fixture)

PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="ssoe2e") as settings:
        yield settings


@pytest.fixture
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    return oidc_provider_factory(
        clients=[web_client("taskloom", CLIENT_SECRET, [f"{BASE}/auth/oidc/corp/callback"])],
        users={"nina": person("nina")},
    )


@pytest.fixture
def base_url(deployment: Settings, tmp_path: Path) -> Iterator[str]:
    env = deployment_env(deployment, OUTBOUND_ALLOWED_HOSTS="127.0.0.1", LOG_LEVEL="info")
    api = serve_api(env, PORT, tmp_path / "api.log")
    try:
        yield BASE
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
        print("--- api log ---\n" + (tmp_path / "api.log").read_text()[-5000:])


async def test_a_person_signs_in_with_the_provider_button_and_lands_signed_in(
    chromium: str,  # noqa: F811
    base_url: str,
    deployment: Settings,
    idp: OidcProvider,
) -> None:
    async with opened_runtime(deployment) as runtime, httpx.AsyncClient(base_url=base_url) as api:
        root = await make_superuser(api, runtime)
        created = await api.post(
            "/api/admin/sso/providers",
            json={
                "slug": "corp",
                "display_name": "Corp Login",
                "issuer": idp.url,
                "client_id": "taskloom",
                "client_secret": CLIENT_SECRET,
                "scopes": ["openid", "email", "profile"],
                "jit": True,
            },
            headers=root.headers,
        )
        assert created.status_code == 201, created.text

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=args
        )
        context = await browser.new_context(base_url=base_url)
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = await context.new_page()
        try:
            await page.goto("/ui/")
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await page.get_by_role("link", name="Sign in with Corp Login").click()
            await page.locator("input[name=login]").fill("nina")
            await page.locator("input[name=password]").fill("nina-password")
            await page.locator("#sign-in").click()
            await page.wait_for_url(f"{base_url}/ui/**")
            await page.goto("/ui/privacy")
            await expect(page.locator("body")).to_contain_text("nina@corp.example")
            await expect(page.get_by_role("heading", name="Privacy")).to_be_visible()
        finally:
            await context.close()
            await browser.close()
