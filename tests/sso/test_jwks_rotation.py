"""The provider's key set is kept 10 minutes: a sign-in after the provider rotated its signing
key refetches it once and succeeds; an ID token under a key the provider does not publish is
refused (`sso_invalid_id_token`) after one refetch, and the same unknown key id refetches
nothing more (counted at the provider's JWKS endpoint)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from taskloom.runtime import Runtime
from tests.factories import Account
from tests.oidc_provider import OidcProvider, ProviderFactory
from tests.sso.conftest import (
    BASE,
    add_provider,
    audit_rows,
    person,
    session_count,
    sign_in_with,
    start_provider,
    to_callback,
)


@pytest.fixture(scope="module")
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    return start_provider(oidc_provider_factory, ["rot"], {"alice": person("alice")})


@pytest.fixture
async def rot(api: httpx.AsyncClient, root: Account, idp: OidcProvider) -> dict[str, Any]:
    found = await api.get("/api/admin/sso/providers/rot", headers=root.headers)
    if found.status_code == 200:
        return dict(found.json())
    return await add_provider(api, root, idp, slug="rot")


def _published_kids(idp: OidcProvider) -> set[str]:
    keys = httpx.get(idp.discovery()["jwks_uri"]).json()["keys"]
    return {str(k["kid"]) for k in keys}


async def _signs_in(new_browser: Any) -> None:
    answer = await sign_in_with(await new_browser(), "rot", "alice")
    assert answer.status_code == 303, answer.text


async def test_a_rotated_signing_key_is_fetched_once_and_the_sign_in_succeeds(
    rot: dict[str, Any], idp: OidcProvider, new_browser: Any
) -> None:
    await _signs_in(new_browser)  # the key set is fetched (or was, by an earlier test)
    fetched = idp.jwks_requests()
    assert fetched >= 1
    await _signs_in(new_browser)
    assert idp.jwks_requests() == fetched, "a known key is taken from the cache"

    kid = idp.rotate_key()
    assert _published_kids(idp) == {kid}, "the old key is withdrawn"
    fetched = idp.jwks_requests()  # our own look at it above counted too
    browser = await new_browser()
    url = await to_callback(browser, "rot", "alice")
    answer = await browser.app.get(str(url).removeprefix(BASE))
    assert answer.status_code == 303, answer.text
    assert idp.jwks_requests() == fetched + 1, "the new kid refetched the set once"

    await _signs_in(new_browser)
    await _signs_in(new_browser)
    assert idp.jwks_requests() == fetched + 1


async def test_an_id_token_under_an_unpublished_key_is_refused_after_one_refetch_only(
    rot: dict[str, Any], idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    await _signs_in(new_browser)  # the current key set is in the cache
    fetched, sessions = idp.jwks_requests(), await session_count(sso_runtime)

    for attempt in range(3):
        stranger = idp.sign_next_with_stranger_key()
        assert stranger not in _published_kids(idp)
        fetched += 1  # the look above
        browser = await new_browser()
        url = await to_callback(browser, "rot", "alice")
        answer = await browser.app.get(
            str(url).removeprefix(BASE), headers={"Accept": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "sso_invalid_id_token"
        # One refetch for the unknown kid, at the first attempt; none at the next ones.
        assert idp.jwks_requests() == fetched + 1, f"attempt {attempt + 1}"

    assert await session_count(sso_runtime) == sessions, "nobody was signed in"
    refused = await audit_rows(
        sso_runtime, "auth.sso_failed", provider="rot", reason="sso_invalid_id_token"
    )
    assert len(refused) >= 3
    # Sign-ins under the published key go on, from the cache.
    await _signs_in(new_browser)
    assert idp.jwks_requests() == fetched + 1
