"""/api/connections: admins manage an organization's connections; credentials go in encrypted
and never come out."""

from __future__ import annotations

import httpx

from tests.factories import Account, add_member, register
from tests.fakes.hostile import HostileServer
from tests.fakes.tool_apis import FakeGitHub
from tests.tools.conftest import connect


async def test_an_admin_creates_a_connection_whose_token_never_comes_back(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(
        tools_api,
        admin,
        "github",
        fake_github.base_url,
        {"token": fake_github.token},
        config={"owner": "acme", "repo": "app"},
    )
    assert created["credential_fields"] == ["token"]
    assert created["effective_base_url"] == fake_github.base_url
    listed = await tools_api.get("/api/connections", headers=admin.headers)
    one = await tools_api.get(f"/api/connections/{created['id']}", headers=admin.headers)
    for response in (listed, one):
        assert response.status_code == 200
        assert fake_github.token not in response.text
    assert [c["name"] for c in listed.json()] == ["github"]
    tested = await tools_api.post(f"/api/connections/{created['id']}/test", headers=admin.headers)
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True
    assert tested.json()["details"] == {"account": fake_github.user["login"]}


async def test_testing_a_connection_with_a_bad_token_reports_the_failure(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "wrong"})
    tested = await tools_api.post(f"/api/connections/{created['id']}/test", headers=admin.headers)
    assert tested.status_code == 200
    result = tested.json()
    assert result["ok"] is False
    assert result["error"]["code"] == "github_http_401"
    assert "wrong" not in tested.text


async def test_credentials_are_validated_per_provider_without_echoing_them(
    tools_api: httpx.AsyncClient, admin: Account
) -> None:
    response = await tools_api.post(
        "/api/connections",
        json={
            "provider": "github",
            "name": "gh",
            "credentials": {"tokn": "ghp_secretvalue"},
        },
        headers=admin.headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("body.credentials.")
    assert "ghp_secretvalue" not in response.text


async def test_base_urls_with_credentials_or_other_schemes_are_refused(
    tools_api: httpx.AsyncClient, admin: Account
) -> None:
    for url in ("https://user:pw@api.github.com", "ftp://files.example", "https://x.test/?a=1"):
        response = await tools_api.post(
            "/api/connections",
            json={
                "provider": "github",
                "name": "gh",
                "base_url": url,
                "credentials": {"token": "t"},
            },
            headers=admin.headers,
        )
        assert response.status_code == 422, url
        assert "pw" not in response.text


async def test_names_are_unique_per_organization(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": "t"}, name="gh")
    again = await tools_api.post(
        "/api/connections",
        json={"provider": "github", "name": "gh", "credentials": {"token": "t"}},
        headers=admin.headers,
    )
    assert again.status_code == 409
    other = await register(tools_api, label="other", organization_name="Other Org")
    await connect(tools_api, other, "github", fake_github.base_url, {"token": "t"}, name="gh")


async def test_updating_credentials_replaces_them_and_is_audited_without_values(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "old-tok"})
    response = await tools_api.patch(
        f"/api/connections/{created['id']}",
        json={"credentials": {"token": fake_github.token}, "enabled": False},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is False
    tested = await tools_api.post(f"/api/connections/{created['id']}/test", headers=admin.headers)
    assert tested.json()["ok"] is True  # the new token is the one used
    logs = await tools_api.get(
        "/api/audit-logs", params={"resource_type": "connection"}, headers=admin.headers
    )
    assert logs.status_code == 200, logs.text
    actions = [row["action"] for row in logs.json()["items"]]
    assert {"connection.create", "connection.update", "connection.test"} <= set(actions)
    assert "old-tok" not in logs.text
    assert fake_github.token not in logs.text


async def test_members_cannot_see_or_manage_connections(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "t"})
    member = await add_member(tools_api, admin, role="member")
    assert (await tools_api.get("/api/connections", headers=member.headers)).status_code == 403
    deleted = await tools_api.delete(f"/api/connections/{created['id']}", headers=member.headers)
    assert deleted.status_code == 403


async def test_another_organizations_connection_is_not_found(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "t"})
    other = await register(tools_api, label="other", organization_name="Other Org")
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test")):
        response = await tools_api.request(
            method,
            f"/api/connections/{created['id']}{suffix}",
            json={} if method == "PATCH" else None,
            headers=other.headers,
        )
        assert response.status_code == 404, (method, suffix)


async def test_a_deleted_connection_is_gone(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "t"})
    deleted = await tools_api.delete(f"/api/connections/{created['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    gone = await tools_api.get(f"/api/connections/{created['id']}", headers=admin.headers)
    assert gone.status_code == 404


async def test_a_connection_to_a_private_address_is_refused_unless_allow_listed(
    client: httpx.AsyncClient, fake_github: FakeGitHub
) -> None:
    """The session app has no OUTBOUND_ALLOWED_HOSTS: 127.0.0.1 is off limits."""
    owner = await register(client, label="ssrf", organization_name="SSRF Org")
    created = await connect(client, owner, "github", fake_github.base_url, {"token": "t"})
    tested = await client.post(f"/api/connections/{created['id']}/test", headers=owner.headers)
    assert tested.status_code == 200
    assert tested.json()["ok"] is False
    assert "loopback" in tested.json()["error"]["message"]
    assert fake_github.requests == []


async def test_moving_a_connection_to_another_base_url_needs_its_credentials_again(
    tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    """Otherwise an admin could point the stored token at a server of their own and read it."""
    created = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "stored"})
    path = f"/api/connections/{created['id']}"
    with HostileServer("ok") as attacker:
        for base_url in (attacker.url, None):  # another server; the provider's default
            moved = await tools_api.patch(path, json={"base_url": base_url}, headers=admin.headers)
            assert moved.status_code == 422, moved.text
            error = moved.json()["error"]
            assert error["code"] == "credentials_required_for_new_base_url"
            assert error["details"]["errors"][0]["loc"] == ["body", "credentials"]
        kept = await tools_api.get(path, headers=admin.headers)
        assert kept.json()["base_url"] == fake_github.base_url
        await tools_api.post(f"{path}/test", headers=admin.headers)
        assert attacker.requests == 0
        assert fake_github.requests[-1].headers["authorization"] == "Bearer stored"

        # The same destination (however written) and other fields need nothing new.
        same = await tools_api.patch(
            path, json={"base_url": fake_github.base_url + "/", "name": "gh"}, headers=admin.headers
        )
        assert same.status_code == 200, same.text
        # With the credentials given again, the move is allowed and uses only those.
        moved = await tools_api.patch(
            path,
            json={"base_url": attacker.url, "credentials": {"token": "for-the-new-server"}},
            headers=admin.headers,
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["effective_base_url"] == attacker.url


async def test_moving_an_mcp_connection_to_another_server_needs_its_credentials_again(
    tools_api: httpx.AsyncClient, admin: Account
) -> None:
    created = await connect(
        tools_api, admin, "mcp", "http://127.0.0.1:9/mcp", {"bearer_token": "stored"}
    )
    moved = await tools_api.patch(
        f"/api/connections/{created['id']}",
        json={"base_url": "http://127.0.0.1:10/mcp"},
        headers=admin.headers,
    )
    assert moved.status_code == 422, moved.text
    assert moved.json()["error"]["code"] == "credentials_required_for_new_base_url"
