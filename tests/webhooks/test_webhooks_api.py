"""/api/webhooks: admins only, the secret shown once, URLs vetted (no private targets unless
allowed, https in production, no credentials), other organizations' endpoints invisible."""

from __future__ import annotations

import httpx
import pytest

from taskloom.errors import ValidationFailed
from taskloom.webhooks.service import check_url
from tests.factories import Account, add_member, production_settings, register


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="hooks", organization_name="Hooks Org")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
async def test_private_and_loopback_targets_are_refused_by_default(
    client: httpx.AsyncClient, owner: Account, url: str
) -> None:
    response = await client.post(
        "/api/webhooks", json={"url": url, "events": ["ping"]}, headers=owner.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("body.url: refusing to connect")
    assert "OUTBOUND_ALLOWED_HOSTS" in response.json()["error"]["message"]


async def test_urls_with_credentials_or_other_schemes_are_refused(
    client: httpx.AsyncClient, owner: Account
) -> None:
    for url in ("https://user:pw@example.com/h", "ftp://example.com/h", "not a url"):
        response = await client.post(
            "/api/webhooks", json={"url": url, "events": ["ping"]}, headers=owner.headers
        )
        assert response.status_code == 422, url
        assert "pw" not in response.text


async def test_production_requires_https() -> None:
    settings = production_settings(outbound_allowed_hosts="127.0.0.1")
    with pytest.raises(ValidationFailed, match="must use https in production"):
        await check_url(settings, "http://127.0.0.1/hook")
    assert await check_url(settings, "https://127.0.0.1/hook") == "https://127.0.0.1/hook"


async def test_unknown_events_and_fields_are_rejected(
    client: httpx.AsyncClient, owner: Account
) -> None:
    for body in (
        {"url": "https://example.com/h", "events": ["execution.exploded"]},
        {"url": "https://example.com/h", "events": []},
        {"url": "https://example.com/h", "events": ["ping"], "secret": "mine"},
    ):
        response = await client.post("/api/webhooks", json=body, headers=owner.headers)
        assert response.status_code == 422, body


async def test_members_cannot_manage_webhooks_and_other_orgs_see_nothing(
    client: httpx.AsyncClient, owner: Account
) -> None:
    member = await add_member(client, owner, role="member")
    refused = await client.post(
        "/api/webhooks",
        json={"url": "https://example.com/h", "events": ["ping"]},
        headers=member.headers,
    )
    assert refused.status_code == 403
    created = await client.post(
        "/api/webhooks",
        json={"url": "https://example.com/h", "events": ["ping"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["id"]
    stranger = await register(client, label="stranger", organization_name="Elsewhere")
    for method, path in (
        ("GET", f"/api/webhooks/{hook_id}"),
        ("PATCH", f"/api/webhooks/{hook_id}"),
        ("DELETE", f"/api/webhooks/{hook_id}"),
        ("POST", f"/api/webhooks/{hook_id}/test"),
        ("POST", f"/api/webhooks/{hook_id}/rotate-secret"),
        ("GET", f"/api/webhooks/{hook_id}/deliveries"),
    ):
        response = await client.request(
            method, path, json={} if method in ("PATCH", "POST") else None, headers=stranger.headers
        )
        assert response.status_code == 404, (method, path)
    assert (await client.get("/api/webhooks", headers=stranger.headers)).json() == []


async def test_the_secret_is_shown_once_and_exported_never(
    client: httpx.AsyncClient, owner: Account
) -> None:
    created = await client.post(
        "/api/webhooks",
        json={"url": "https://example.com/h", "events": ["ping"], "description": "CI"},
        headers=owner.headers,
    )
    secret = created.json()["secret"]
    hook_id = created.json()["id"]
    for response in (
        await client.get("/api/webhooks", headers=owner.headers),
        await client.get(f"/api/webhooks/{hook_id}", headers=owner.headers),
        await client.patch(
            f"/api/webhooks/{hook_id}", json={"enabled": False}, headers=owner.headers
        ),
        await client.get("/api/user/data-export", headers=owner.headers),
        await client.get("/api/audit-logs", headers=owner.headers),
    ):
        assert response.status_code == 200, response.text
        assert secret not in response.text
    export = (await client.get("/api/user/data-export", headers=owner.headers)).json()
    [endpoint] = export["tables"]["webhook_endpoints"]
    assert endpoint["url"] == "https://example.com/h"
    assert endpoint["encrypted_secret"] == "[redacted]"
