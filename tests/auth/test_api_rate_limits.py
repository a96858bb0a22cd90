"""The API's rate limits per API key and per session (reads, writes, execute) and per client IP
on /auth/*: counted in Redis, answered with the RateLimit-Policy / RateLimit fields of
draft-ietf-httpapi-ratelimit-headers, 429 + Retry-After past them, before any database work."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import http_sfv
import httpx
import pytest
from fastapi import FastAPI

from taskloom.app import create_app
from taskloom.auth.api_limits import EXECUTE_ROUTES
from taskloom.auth.ratelimit import Rate, take
from taskloom.executions import routes as api_routes
from taskloom.runtime import Runtime
from taskloom.web import cookies
from taskloom.web.pages import executions as ui_executions
from taskloom.web.pages import workflows as ui_workflows
from tests.factories import Account, register
from tests.web.support import set_ui_cookie

# Small quotas over an hour: no request is given back during a test.
LIMITS = {
    "rate_limit_window_seconds": 3600,
    "rate_limit_reads": 5,
    "rate_limit_writes": 3,
    "rate_limit_execute": 2,
    "rate_limit_auth_per_ip": 4,
}


STEP = {"id": "t", "type": "transform", "args": {"value": "{{ input.x }}"}}


def _limited_app(runtime: Runtime, **limits: Any) -> FastAPI:
    settings = runtime.settings.model_copy(update={**LIMITS, **limits})
    return create_app(runtime=dataclasses.replace(runtime, settings=settings))


@pytest.fixture
async def limited_app(runtime: Runtime) -> AsyncIterator[FastAPI]:
    app = _limited_app(runtime)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def api(limited_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(limited_app, "192.0.2.10") as c:
        yield c


async def _api_key(client: httpx.AsyncClient, owner: Account, name: str) -> str:
    created = await client.post("/auth/api-keys", json={"name": name}, headers=owner.headers)
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _parsed(response: httpx.Response) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Both fields parsed as structured-field Lists (RFC 9651), each member checked against
    the draft: a String naming the policy, Integer parameters q (>= 0), w (> 0), r (>= 0),
    t (>= 0). Returns {name: params} of each field."""
    fields: list[dict[str, dict[str, Any]]] = []
    for name in ("ratelimit-policy", "ratelimit"):
        parsed = http_sfv.List()
        parsed.parse(response.headers[name].encode())  # raises on any syntax error
        members: dict[str, dict[str, Any]] = {}
        for item in parsed:
            assert isinstance(item.value, str), response.headers[name]
            members[item.value] = dict(item.params)
        fields.append(members)
    policies, limits = fields
    assert policies.keys() == limits.keys()
    for params in policies.values():
        assert type(params["q"]) is int
        assert params["q"] >= 0
        assert type(params["w"]) is int
        assert params["w"] > 0
    for params in limits.values():
        assert type(params["r"]) is int
        assert params["r"] >= 0
        assert type(params["t"]) is int
        assert params["t"] >= 0
    return policies, limits


async def test_a_burst_from_one_api_key_is_refused_past_its_limit_while_another_key_passes(
    client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register(client, label="burst", organization_name="Burst Org")
    noisy, quiet = await _api_key(client, owner, "noisy"), await _api_key(client, owner, "quiet")
    for _ in range(5):
        assert (await api.get("/api/workflows", headers=_bearer(noisy))).status_code == 200
    refused = await api.get("/api/workflows", headers=_bearer(noisy))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = int(refused.headers["retry-after"])
    assert 0 < retry_after <= 3600 / 5 + 1
    _, limits = _parsed(refused)
    assert limits["reads"] == {"r": 0, "t": retry_after}  # t never ends before Retry-After
    passed = await api.get("/api/workflows", headers=_bearer(quiet))
    assert passed.status_code == 200
    # Reads and writes are counted apart: the noisy key may still write.
    written = await api.post(
        "/api/workflows",
        json={"name": "still", "definition": {"steps": [STEP]}},
        headers=_bearer(noisy),
    )
    assert written.status_code != 429, written.text


async def test_headers_follow_the_draft_structured_field_syntax_and_count_down(
    client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register(client, label="fields", organization_name="Fields Org")
    seen = []
    for _ in range(3):
        response = await api.get("/api/workflows", headers=owner.headers)
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"reads";q=5;w=3600'
        policies, limits = _parsed(response)
        assert policies == {"reads": {"q": 5, "w": 3600}}
        seen.append(limits["reads"])
    assert [s["r"] for s in seen] == [4, 3, 2]
    # t: seconds until the quota is whole again, 720 s (3600/5) per request taken.
    assert [s["t"] for s in seen] == [720, 1440, 2160]


async def test_execute_has_its_own_class_and_a_refused_execute_starts_nothing(
    client: httpx.AsyncClient, api: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="exec", organization_name="Exec Org")
    created = await client.post(
        "/api/workflows",
        json={"name": "wf", "definition": {"steps": [STEP]}},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    url = f"/api/workflows/{created.json()['id']}/execute"
    for _ in range(2):
        accepted = await api.post(url, json={"input": {}}, headers=owner.headers)
        assert accepted.status_code == 202, accepted.text
        assert _parsed(accepted)[0] == {"execute": {"q": 2, "w": 3600}}
    refused = await api.post(url, json={"input": {}}, headers=owner.headers)
    assert refused.status_code == 429
    assert "retry-after" in refused.headers
    listed = await client.get("/api/executions", headers=owner.headers)
    assert len(listed.json()["items"]) == 2
    assert (await api.get("/api/workflows", headers=owner.headers)).status_code == 200


def test_every_execute_route_exists() -> None:
    routers = (api_routes.router, ui_workflows.router, ui_executions.router)
    paths = {getattr(route, "path", None) for router in routers for route in router.routes}
    assert paths >= EXECUTE_ROUTES


async def test_the_limit_is_counted_before_the_database_is_asked_about_the_key(
    api: httpx.AsyncClient,
) -> None:
    """An unknown key is refused with 401 by the database lookup, until its burst is spent:
    then 429, so a limited request no longer reaches the database."""
    forged = _bearer("tlk_" + "0" * 12 + "_" + uuid.uuid4().hex)
    for _ in range(5):
        assert (await api.get("/api/workflows", headers=forged)).status_code == 401
    assert (await api.get("/api/workflows", headers=forged)).status_code == 429


async def test_the_web_ui_shares_its_session_limit_with_the_session_bearer_requests(
    client: httpx.AsyncClient, limited_app: FastAPI
) -> None:
    owner = await register(client, label="uiquota", organization_name="UI Quota Org")
    async with _client(limited_app, "192.0.2.11") as browser:
        set_ui_cookie(browser, cookies.ACCESS_COOKIE, owner.access_token)
        set_ui_cookie(browser, cookies.REFRESH_COOKIE, owner.refresh_token)
        for _ in range(3):
            assert (await browser.get("/api/workflows", headers=owner.headers)).status_code == 200
        page = await browser.get("/ui/workflows")
        assert page.status_code == 200
        assert _parsed(page)[1]["reads"]["r"] == 1
        assert (await browser.get("/api/workflows", headers=owner.headers)).status_code == 200
        refused = await browser.get("/ui/workflows")
        assert refused.status_code == 429
        assert "retry-after" in refused.headers
        refused_api = await browser.get("/api/workflows", headers=owner.headers)
        assert refused_api.status_code == 429


async def test_auth_routes_are_limited_per_client_ip(limited_app: FastAPI) -> None:
    async with _client(limited_app, "192.0.2.12") as one, _client(limited_app, "192.0.2.13") as two:
        for _ in range(4):
            answer = await one.post("/auth/refresh", json={"refresh_token": "tlr_nothing"})
            assert answer.status_code == 401
            assert _parsed(answer)[0] == {"auth": {"q": 4, "w": 3600}}
        refused = await one.post("/auth/refresh", json={"refresh_token": "tlr_nothing"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "retry-after" in refused.headers
        other = await two.post("/auth/refresh", json={"refresh_token": "tlr_nothing"})
        assert other.status_code == 401


async def test_an_authenticated_auth_route_names_both_of_its_policies(
    client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register(client, label="both", organization_name="Both Org")
    me = await api.get("/auth/me", headers=owner.headers)
    assert me.status_code == 200
    policies, limits = _parsed(me)
    assert policies == {"auth": {"q": 4, "w": 3600}, "reads": {"q": 5, "w": 3600}}
    assert limits["reads"]["r"] == 4


async def test_limits_can_be_turned_off(client: httpx.AsyncClient, runtime: Runtime) -> None:
    owner = await register(client, label="off", organization_name="Off Org")
    app = _limited_app(runtime, rate_limits_enabled=False, rate_limit_reads=1)
    async with app.router.lifespan_context(app), _client(app, "192.0.2.14") as c:
        for _ in range(3):
            response = await c.get("/api/workflows", headers=owner.headers)
            assert response.status_code == 200
            assert "ratelimit" not in response.headers


async def test_a_quota_beyond_a_request_per_microsecond_still_counts(runtime: Runtime) -> None:
    """Benchmarks set 10^8 a minute (0.6 us a request): the script must not write a zero TTL."""
    rate = Rate(name="reads", quota=10**9, window_seconds=60)
    key = runtime.keys("ratelimit", "test", uuid.uuid4().hex)
    for _ in range(3):
        allowance = await take(redis=runtime.redis, key=key, rate=rate)
        assert allowance.allowed
        assert allowance.remaining > 0
