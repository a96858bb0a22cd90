"""The single sign-on pages: instance administrators manage providers and their group mappings
at /ui/admin/sso (through sso/providers.py, as the API does), and an organization's owners
require single sign-on on the members page (through sso/required.py, as PATCH /api/org does)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskloom.runtime import Runtime
from taskloom.sso import providers
from tests.factories import Account, add_member, make_superuser
from tests.sso.required_support import SsoSeed, session_row
from tests.web.conftest import Browser
from tests.web.support import browser_for, post_form, sign_in, text_of

SECRET = "ui-client-secret-" + secrets.token_hex(8)
NEW_SECRET = "ui-client-secret-" + secrets.token_hex(8)


@pytest.fixture
async def sso(runtime: Runtime) -> AsyncIterator[SsoSeed]:
    seed = SsoSeed(runtime)
    yield seed
    await seed.cleanup()


@pytest.fixture
async def slug(runtime: Runtime) -> AsyncIterator[str]:
    """A provider slug for the test; whatever the test left under it is removed."""
    made = f"ui-{secrets.token_hex(4)}"
    yield made
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(text("delete from sso_providers where slug = :s"), {"s": made})


async def _provider(runtime: Runtime, slug: str) -> dict[str, Any] | None:
    async with runtime.database.system_engine.connect() as conn:
        row = (
            await conn.execute(text("select * from sso_providers where slug = :s"), {"s": slug})
        ).first()
        return dict(row._mapping) if row else None


def _secret_of(runtime: Runtime, row: dict[str, Any]) -> str:
    sealed = runtime.cipher.decrypt(
        row["secret_key_id"],
        row["secret_encrypted"],
        bound_to=f"sso_providers:{row['id']}:client_secret",
    )
    return str(sealed["client_secret"])


async def _mappings(runtime: Runtime, provider_id: uuid.UUID) -> list[dict[str, Any]]:
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(
            text("select group_name, org_id, role from sso_group_mappings where provider_id = :p"),
            {"p": provider_id},
        )
        return [dict(r._mapping) for r in rows]


async def _audit(runtime: Runtime, resource_id: str, *actions: str) -> list[dict[str, Any]]:
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select action, org_id, actor_user_id, details from audit_logs "
                "where resource_id = :r and action = any(:a) order by created_at, seq"
            ),
            {"r": resource_id, "a": list(actions)},
        )
        return [dict(r._mapping) for r in rows]


async def _org(runtime: Runtime, org_id: uuid.UUID) -> dict[str, Any]:
    async with runtime.database.system_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "select sso_required, sso_break_glass_user_id from organizations where id = :o"
                ),
                {"o": org_id},
            )
        ).one()
        return dict(row._mapping)


def _provider_form(slug: str, **changes: str) -> dict[str, str]:
    return {
        "slug": slug,
        "display_name": "Acme IdP",
        "issuer": "https://idp.example.test/realms/acme",
        "client_id": "taskloom",
        "client_secret": SECRET,
        "scopes": "openid email profile groups",
        "groups_claim": "groups",
        "email_verified_claim": "",
        "verified_email_domains": "acme.example, Corp.Example",
        "algorithms": "",
        "enabled": "true",
        **changes,
    }


async def test_an_instance_admin_adds_edits_disables_maps_and_deletes_a_provider(
    client: httpx.AsyncClient,
    new_browser: Browser,
    runtime: Runtime,
    owner: Account,
    sso: SsoSeed,
    slug: str,
) -> None:
    root = await make_superuser(client, runtime)
    browser = await new_browser()
    await sign_in(browser, root.email)
    listing = await browser.get("/ui/admin/sso")
    assert listing.status_code == 200
    assert 'href="/ui/admin/sso"' in listing.text  # in the administration menu
    assert 'name="slug"' in listing.text
    assert 'name="client_secret" type="password"' in listing.text

    # Refusals come back on the form, with what was typed (but never the secret).
    no_openid = await post_form(browser, "/ui/admin/sso", _provider_form(slug, scopes="email"))
    assert no_openid.status_code == 422
    assert 'must include "openid"' in text_of(no_openid)
    assert SECRET not in no_openid.text
    assert 'value="Acme IdP"' in no_openid.text
    plain_http = await post_form(
        browser, "/ui/admin/sso", _provider_form(slug, issuer="http://idp.example.test")
    )
    assert plain_http.status_code == 422
    assert "must use https" in text_of(plain_http)
    assert await _provider(runtime, slug) is None

    created = await post_form(browser, "/ui/admin/sso", _provider_form(slug))
    assert created.status_code == 303, created.text
    assert created.headers["location"] == f"/ui/admin/sso/{slug}?notice=sso-provider-created"
    row = await _provider(runtime, slug)
    assert row is not None
    assert (row["display_name"], row["client_id"], row["enabled"], row["jit"]) == (
        "Acme IdP",
        "taskloom",
        True,
        False,
    )
    assert row["scopes"] == ["openid", "email", "profile", "groups"]
    assert row["verified_email_domains"] == ["acme.example", "corp.example"]
    assert row["email_verified_claim"] == "email_verified"
    assert row["algorithms"] == ["RS256", "ES256", "PS256"]
    assert SECRET.encode() not in row["secret_encrypted"]
    assert _secret_of(runtime, row) == SECRET
    [audited] = await _audit(runtime, slug, "sso_provider.create")
    assert audited["org_id"] is None
    assert audited["actor_user_id"] == root.user_id

    callback = providers.redirect_uri(runtime.settings, "http://testserver/", slug)
    page = await browser.get(created.headers["location"])
    assert "Provider added." in page.text
    assert 'name="slug"' not in page.text  # the slug is part of the redirect URI: kept
    assert callback in page.text
    listing = await browser.get("/ui/admin/sso")
    assert callback in listing.text
    assert f'href="/ui/admin/sso/{slug}"' in listing.text

    # Edit: an empty secret keeps the stored one.
    edited = await post_form(
        browser,
        f"/ui/admin/sso/{slug}",
        _provider_form(slug, display_name="Acme SSO", client_secret="", jit="true"),
    )
    assert edited.status_code == 303, edited.text
    row = await _provider(runtime, slug)
    assert row is not None
    assert (row["display_name"], row["jit"], _secret_of(runtime, row)) == ("Acme SSO", True, SECRET)
    bad_edit = await post_form(
        browser,
        f"/ui/admin/sso/{slug}",
        _provider_form(slug, client_secret=NEW_SECRET, algorithms="HS256"),
    )
    assert bad_edit.status_code == 422
    assert "not allowed: HS256" in text_of(bad_edit)
    assert NEW_SECRET not in bad_edit.text
    replaced = await post_form(
        browser, f"/ui/admin/sso/{slug}", _provider_form(slug, client_secret=NEW_SECRET)
    )
    assert replaced.status_code == 303
    row = await _provider(runtime, slug)
    assert row is not None
    assert _secret_of(runtime, row) == NEW_SECRET
    updates = await _audit(runtime, slug, "sso_provider.update")
    assert [u["details"]["changes"].get("client_secret") for u in updates] == [None, "replaced"]
    assert updates[0]["details"]["changes"]["display_name"] == {
        "from": "Acme IdP",
        "to": "Acme SSO",
    }

    # Group mappings: an unknown organization and an owner role are refused on the form.
    mappings_path = f"/ui/admin/sso/{slug}/mappings"
    provider_page = f"/ui/admin/sso/{slug}"
    unknown = await post_form(
        browser,
        mappings_path,
        {"group": "platform-admins", "org_id": str(uuid.uuid4()), "role": "admin"},
        from_page=provider_page,
    )
    assert unknown.status_code == 422
    assert "org_id : no such organization" in text_of(unknown)
    not_an_id = await post_form(
        browser,
        mappings_path,
        {"group": "platform-admins", "org_id": "acme", "role": "admin"},
        from_page=provider_page,
    )
    assert not_an_id.status_code == 422
    assert "org_id" in text_of(not_an_id)
    owner_role = await post_form(
        browser,
        mappings_path,
        {"group": "platform-admins", "org_id": str(owner.org_id), "role": "owner"},
        from_page=provider_page,
    )
    assert owner_role.status_code == 422
    assert "a group never grants owner" in text_of(owner_role)
    assert await _mappings(runtime, row["id"]) == []
    mapped = await post_form(
        browser,
        mappings_path,
        {"group": "platform-admins", "org_id": str(owner.org_id), "role": "admin"},
        from_page=provider_page,
    )
    assert mapped.status_code == 303, mapped.text
    assert await _mappings(runtime, row["id"]) == [
        {"group_name": "platform-admins", "org_id": owner.org_id, "role": "admin"}
    ]
    shown = await browser.get(provider_page)
    assert "UI Org" in text_of(shown)  # the organization's name, not only its id
    listing = await browser.get("/ui/admin/sso")
    assert "<td>1</td>" in listing.text  # the mappings count
    async with runtime.database.system_engine.connect() as conn:
        mapping_id = await conn.scalar(
            text("select id from sso_group_mappings where provider_id = :p"), {"p": row["id"]}
        )
    [mapping_audit] = await _audit(runtime, str(mapping_id), "sso_mapping.create")
    assert mapping_audit["org_id"] == owner.org_id
    unmapped = await post_form(
        browser, f"{mappings_path}/{mapping_id}/delete", {}, from_page=provider_page
    )
    assert unmapped.status_code == 303
    assert await _mappings(runtime, row["id"]) == []
    assert await _audit(runtime, str(mapping_id), "sso_mapping.delete")

    # Disabling signs out at once the sessions the provider started.
    person = await add_member(client, owner, "member")
    session_id = await sso.sso_session(person, row["id"])
    disabled = await post_form(
        browser, f"{provider_page}/enabled", {"enabled": "false"}, from_page=provider_page
    )
    assert disabled.status_code == 303
    row = await _provider(runtime, slug)
    assert row is not None
    assert row["enabled"] is False
    assert (await session_row(runtime, session_id))["revoked_reason"] == "sso_provider_disabled"
    assert (await client.get("/api/org", headers=person.headers)).status_code == 401
    last = (await _audit(runtime, slug, "sso_provider.update"))[-1]
    assert last["details"]["sessions_ended"] == 1

    # Deleting needs the slug typed again.
    unconfirmed = await post_form(
        browser, f"{provider_page}/delete", {"confirm": "yes"}, from_page=provider_page
    )
    assert unconfirmed.status_code == 422
    assert f"type {slug} to confirm" in text_of(unconfirmed)
    assert await _provider(runtime, slug) is not None
    deleted = await post_form(
        browser, f"{provider_page}/delete", {"confirm": slug}, from_page=provider_page
    )
    assert deleted.status_code == 303
    assert await _provider(runtime, slug) is None
    assert await _audit(runtime, slug, "sso_provider.delete")
    after = await browser.get(deleted.headers["location"])
    assert "Provider deleted" in after.text
    assert (await browser.get(provider_page)).status_code == 404

    for seen in (listing, page, shown, after, unknown):
        assert SECRET not in seen.text
        assert NEW_SECRET not in seen.text


async def test_a_person_who_is_not_an_instance_admin_is_refused_the_sso_pages(
    owner_browser: httpx.AsyncClient, slug: str, runtime: Runtime
) -> None:
    page = await owner_browser.get("/ui/admin/sso")
    assert page.status_code == 403
    assert "only instance administrators" in text_of(page)
    members = await owner_browser.get("/ui/admin/members")
    assert 'href="/ui/admin/sso"' not in members.text  # no menu entry either
    forged = await post_form(
        owner_browser, "/ui/admin/sso", _provider_form(slug), from_page="/ui/admin/members"
    )
    assert forged.status_code == 403
    assert await _provider(runtime, slug) is None


async def test_an_owner_requires_single_sign_on_and_names_the_break_glass_owner(
    client: httpx.AsyncClient,
    new_browser: Browser,
    owner: Account,
    owner_browser: httpx.AsyncClient,
    runtime: Runtime,
    sso: SsoSeed,
) -> None:
    admin = await add_member(client, owner, "admin")
    admin_browser = await browser_for(new_browser, admin)

    # An admin sees the setting, read-only, and a forged form changes nothing.
    seen = await admin_browser.get("/ui/admin/members")
    assert "Single sign-on not required" in text_of(seen)
    assert "Only owners change this setting." in seen.text
    assert 'action="/ui/admin/members/sso"' not in seen.text
    forged = await post_form(
        admin_browser,
        "/ui/admin/members/sso",
        {"sso_required": "true", "break_glass_user_id": str(admin.user_id)},
        from_page="/ui/admin/members",
    )
    assert forged.status_code == 403
    assert "changed by owners only" in text_of(forged)
    assert await _org(runtime, owner.org_id) == {
        "sso_required": False,
        "sso_break_glass_user_id": None,
    }

    members = await owner_browser.get("/ui/admin/members")
    assert "Require single sign-on for this organization" in members.text
    assert f'<option value="{owner.user_id}"' in members.text
    assert f'<option value="{admin.user_id}"' not in members.text  # owners only

    # No provider maps into the organization yet: nobody could sign in.
    form = {"sso_required": "true", "break_glass_user_id": str(owner.user_id)}
    refused = await post_form(
        owner_browser, "/ui/admin/members/sso", form, from_page="/ui/admin/members"
    )
    assert refused.status_code == 409
    assert "no enabled single sign-on provider has a group mapping" in text_of(refused)
    assert (await _org(runtime, owner.org_id))["sso_required"] is False

    await sso.mapped_provider(owner.org_id)
    not_owner = await post_form(
        owner_browser,
        "/ui/admin/members/sso",
        {"sso_required": "true", "break_glass_user_id": str(admin.user_id)},
        from_page="/ui/admin/members",
    )
    assert not_owner.status_code == 422
    assert "the break-glass user must be an owner" in text_of(not_owner)
    assert (await _org(runtime, owner.org_id))["sso_required"] is False

    saved = await post_form(
        owner_browser, "/ui/admin/members/sso", form, from_page="/ui/admin/members"
    )
    assert saved.status_code == 303, saved.text
    assert await _org(runtime, owner.org_id) == {
        "sso_required": True,
        "sso_break_glass_user_id": owner.user_id,
    }
    [audited] = await _audit(runtime, str(owner.org_id), "org.sso_required")
    assert audited["org_id"] == owner.org_id
    assert audited["actor_user_id"] == owner.user_id
    assert audited["details"]["sso_required"] is True
    assert audited["details"]["break_glass_user_id"] == str(owner.user_id)
    assert audited["details"]["sessions_revoked"] >= 1  # the admin's password sessions

    # The break-glass owner's own password session was kept.
    after = await owner_browser.get(saved.headers["location"])
    assert after.status_code == 200
    assert "Single sign-on setting saved." in after.text
    assert (
        'id="sso-required" name="sso_required" type="checkbox" value="true" checked' in after.text
    )
    assert f'<option value="{owner.user_id}" selected' in after.text
