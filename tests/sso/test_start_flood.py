"""A flood of sign-in starts from one client address is bounded by the per-IP limit of /auth
(RATE_LIMIT_AUTH_PER_IP), not by Redis's memory: each allowed start keeps one flow for 10
minutes, each refused one keeps nothing, and another address still starts its sign-in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.conftest import fresh_deployment
from tests.factories import Account
from tests.oidc_provider import OidcProvider, ProviderFactory
from tests.sso.conftest import add_provider, flow_keys, person, start_provider

LIMIT = 5  # the suite's deployments allow a million /auth requests a minute per address


@pytest.fixture(scope="module")
async def sso_settings(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(
        pg_server_url, redis_url, label="ssoflood", outbound_allowed_hosts="127.0.0.1"
    ) as settings:
        yield settings.model_copy(update={"rate_limit_auth_per_ip": LIMIT})


@pytest.fixture(scope="module")
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    return start_provider(oidc_provider_factory, ["flood"], {"alice": person("alice")})


def _documented_429(app: FastAPI) -> set[str]:
    answers = app.openapi()["paths"]["/auth/oidc/{slug}/start"]["get"]["responses"]
    return set(answers["429"]["content"])


async def test_a_flood_of_starts_from_one_address_keeps_only_the_allowed_flows(
    sso_app: FastAPI,
    sso_settings: Settings,
    sso_runtime: Runtime,
    api: httpx.AsyncClient,
    root: Account,
    idp: OidcProvider,
) -> None:
    await add_provider(api, root, idp, slug="flood")
    assert sso_settings.rate_limits_enabled
    limit = sso_settings.rate_limit_auth_per_ip
    before = await flow_keys(sso_runtime)
    flooder = httpx.ASGITransport(app=sso_app, client=("198.51.100.66", 40000))
    async with httpx.AsyncClient(transport=flooder, base_url="http://testserver") as client:
        answers = [await client.get("/auth/oidc/flood/start?next=/ui/") for _ in range(limit)]
        assert [a.status_code for a in answers] == [302] * limit
        excess: list[httpx.Response] = []
        for accept in ["application/json", "text/html", "text/html", "application/json"] * 3:
            excess.append(
                await client.get("/auth/oidc/flood/start?next=/ui/", headers={"Accept": accept})
            )
        token_mode = await client.get(
            f"/auth/oidc/flood/start?mode=token&code_challenge={'a' * 43}"
        )
        # The other browser routes answer a browser the same way, and leave its flow alone.
        callback = await client.get(
            "/auth/oidc/flood/callback?state=s&code=c", headers={"Accept": "text/html"}
        )
        link = await client.post("/auth/oidc/link", data={"password": "x"})
        for page in (callback, link):
            assert page.status_code == 429, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert int(page.headers["retry-after"]) >= 1
            assert "set-cookie" not in page.headers or "Max-Age=0" not in page.headers["set-cookie"]
        linked = await client.post("/auth/oidc/link", json={"link_token": "t", "password": "x"})
        assert (linked.status_code, linked.json()["error"]["code"]) == (429, "rate_limited")

    documented = _documented_429(sso_app)
    for answer in [*excess, token_mode]:
        assert answer.status_code == 429, answer.text
        kind = answer.headers["content-type"].split(";")[0]
        assert kind in documented
        if answer.request.headers.get("accept") == "text/html":
            # A browser's refusal is the sign-in page with the message, as for any other.
            assert kind == "text/html"
            assert "too many auth requests for this client address" in answer.text
            assert 'href="/auth/oidc/flood/start' in answer.text, "the page offers the providers"
        else:  # the JSON error (token mode: the CLI)
            assert answer.json()["error"]["code"] == "rate_limited"
            assert "client address" in answer.json()["error"]["message"]
        assert int(answer.headers["retry-after"]) >= 1
        assert f'"auth";q={limit};w=60' in answer.headers["ratelimit-policy"]
        assert "taskloom_sso_flow" not in answer.headers.get("set-cookie", "")
    assert await flow_keys(sso_runtime) == before + limit, "one flow per allowed start, no more"

    # Another address is counted on its own: its sign-in starts while the first is refused.
    other = httpx.ASGITransport(app=sso_app, client=("198.51.100.67", 40000))
    async with httpx.AsyncClient(transport=other, base_url="http://testserver") as client:
        started = await client.get("/auth/oidc/flood/start?next=/ui/")
    assert started.status_code == 302, started.text
    assert started.headers["location"].startswith(idp.url)
    assert await flow_keys(sso_runtime) == before + limit + 1
