"""Administration pages: connections with their Test button, webhooks with the secret shown
once and their deliveries, feature flags for instance and organization admins."""

from __future__ import annotations

import re
import secrets

import httpx

from taskloom.breakers import BREAKERS
from taskloom.runtime import Runtime
from tests.factories import Account, make_superuser, register
from tests.web.conftest import Browser
from tests.web.support import csrf_of, post_form, sign_in, text_of


async def test_a_connection_is_created_without_echoing_its_credentials_and_tested(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    bad_json = await post_form(
        owner_browser,
        "/ui/admin/connections",
        {"provider": "github", "name": "gh", "credentials": "{token: 1}"},
    )
    assert bad_json.status_code == 422
    assert "<code>credentials</code>: not valid JSON: Expecting property name" in bad_json.text
    created = await post_form(
        owner_browser,
        "/ui/admin/connections",
        {
            "provider": "github",
            "name": "Loopback GitHub",
            "base_url": "http://127.0.0.1:9",
            "credentials": '{"token": "ghp_very_secret_value"}',
        },
    )
    assert created.status_code == 303
    page = await owner_browser.get(created.headers["location"])
    assert "Connection created." in page.text
    assert "Loopback GitHub" in page.text
    assert "ghp_very_secret_value" not in page.text
    (connection,) = (await client.get("/api/connections", headers=owner.headers)).json()
    tested = await post_form(
        owner_browser,
        f"/ui/admin/connections/{connection['id']}/test",
        {},
        from_page="/ui/admin/connections",
    )
    assert tested.status_code == 200
    # Loopback addresses are refused by the outbound guard: the test reports why.
    assert "Test of Loopback GitHub failed" in text_of(tested)
    assert "target_not_allowed" in tested.text


async def test_a_webhook_shows_its_secret_once_and_lists_its_deliveries(
    owner_browser: httpx.AsyncClient,
) -> None:
    missing_events = await post_form(
        owner_browser, "/ui/admin/webhooks", {"url": "https://example.com/hook"}
    )
    assert missing_events.status_code == 422
    assert "events" in text_of(missing_events)
    page = await owner_browser.get("/ui/admin/webhooks")
    response = await owner_browser.post(
        "/ui/admin/webhooks",
        data={
            "url": "https://example.com/hook",
            "events": ["execution.succeeded", "ping"],
            "csrf_token": csrf_of(page),
        },
    )
    assert response.status_code == 201
    secret = re.search(r'id="new-secret" class="code" readonly value="([^"]+)"', response.text)
    assert secret
    link = re.search(r'href="(/ui/admin/webhooks/[0-9a-f-]{36})"', response.text)
    assert link
    detail = await owner_browser.get(link.group(1))
    assert secret.group(1) not in detail.text  # never shown again
    assert "No deliveries yet." in detail.text
    pinged = await post_form(owner_browser, f"{link.group(1)}/test", {}, from_page=link.group(1))
    assert pinged.status_code == 303
    after = await owner_browser.get(pinged.headers["location"])
    assert "Test ping queued" in after.text
    assert "<code>ping</code>" in after.text


async def test_instance_admins_manage_flags_and_org_admins_override_them(
    client: httpx.AsyncClient,
    new_browser: Browser,
    owner_browser: httpx.AsyncClient,
    runtime: Runtime,
) -> None:
    root = await make_superuser(client, runtime)
    admin_browser = await new_browser()
    await sign_in(admin_browser, root.email)
    home = await admin_browser.get("/ui/")
    assert home.headers["location"] == "/ui/admin/flags"  # no organization: straight to flags
    key = f"ui-flag-{secrets.token_hex(3)}"
    invalid = await post_form(admin_browser, "/ui/admin/flags", {"key": "Not A Key"})
    assert invalid.status_code == 422
    created = await post_form(
        admin_browser,
        "/ui/admin/flags",
        {"key": key, "description": "Shiny", "default_enabled": "false", "rollout_percentage": ""},
    )
    assert created.status_code == 303
    assert key in (await admin_browser.get("/ui/admin/flags")).text

    org_page = await owner_browser.get("/ui/admin/flags")
    assert key in org_page.text
    assert f'action="/ui/admin/flags/{key}/delete"' not in org_page.text  # read-only for them
    overridden = await post_form(
        owner_browser,
        f"/ui/admin/flags/{key}/override",
        {"enabled": "true", "reason": "beta customer"},
        from_page="/ui/admin/flags",
    )
    assert overridden.status_code == 303
    after = text_of(await owner_browser.get("/ui/admin/flags"))
    assert "on (org override)" in after
    assert "beta customer" in after
    refused = await post_form(
        owner_browser, f"/ui/admin/flags/{key}/delete", {}, from_page="/ui/admin/flags"
    )
    assert refused.status_code == 403
    assert "only instance administrators" in text_of(refused)
    deleted = await post_form(
        admin_browser, f"/ui/admin/flags/{key}/delete", {}, from_page="/ui/admin/flags"
    )
    assert deleted.status_code == 303
    assert key not in (await owner_browser.get("/ui/admin/flags")).text


async def test_the_health_page_shows_an_organization_admin_only_their_own_breakers(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    other = await register(client, label="elsewhere", organization_name="Elsewhere")
    ids = {}
    for account, name in ((owner, "own"), (other, "theirs")):
        created = await client.post(
            "/api/connections",
            json={
                "provider": "github",
                "name": f"breaker-{name}",
                "base_url": "https://github.example.test",
                "credentials": {"token": "ghp_breaker_test"},
            },
            headers=account.headers,
        )
        assert created.status_code == 201, created.text
        ids[name] = created.json()["id"]
    names = [f"tool:{ids['own']}", f"tool:{ids['theirs']}"]
    for name in names:
        await BREAKERS.get(name, failure_threshold=1, reset_seconds=60).record_failure()
    try:
        page = await owner_browser.get("/ui/admin/health")
        assert page.status_code == 200
        assert names[0] in page.text
        assert ids["theirs"] not in page.text
    finally:
        for name in names:
            BREAKERS.remove(name)
