"""Each bad input of issue 23 is refused with its error code, an `auth.sso_failed` audit row,
and no session: wrong issuer or audience, expired ID token, nonce replay, bad state, unverified
e-mail, a disabled provider (at the start, and between the start and the callback), a callback
without a started flow, and an error from the provider."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from taskloom.runtime import Runtime
from tests.factories import Account
from tests.oidc_provider import OidcProvider, ProviderFactory, sign_in_at_provider
from tests.sso.conftest import (
    BASE,
    Browser,
    add_provider,
    audit_rows,
    callback,
    person,
    session_count,
    sign_in_with,
    start_provider,
    to_callback,
)

SLUGS = ["bad", "otherhost", "entra", "domains"]
USERS = {
    "alice": person("alice"),
    "unverified": person("unverified", email_verified=False),
    "entra": person("entra", email_verified=None, xms_edov=True),
    "listed": person("listed", email_verified=None, email="listed@trusted.example"),
}


@pytest.fixture(scope="module")
def idp(oidc_provider_factory: ProviderFactory) -> OidcProvider:
    return start_provider(oidc_provider_factory, SLUGS, USERS)


@pytest.fixture
async def bad(api: httpx.AsyncClient, root: Account, idp: OidcProvider) -> dict[str, Any]:
    found = await api.get("/api/admin/sso/providers/bad", headers=root.headers)
    if found.status_code == 200:
        if not found.json()["enabled"]:
            await api.patch(
                "/api/admin/sso/providers/bad", json={"enabled": True}, headers=root.headers
            )
        return dict(found.json())
    return await add_provider(api, root, idp, slug="bad")


async def _refused(
    runtime: Runtime,
    slug: str,
    code: str,
    act: Callable[[], Awaitable[httpx.Response]],
    *,
    status: int = 400,
) -> httpx.Response:
    """Run `act`; assert the refusal's status and message, its audit row, and no new session."""
    audited = len(await audit_rows(runtime, "auth.sso_failed", provider=slug, reason=code))
    sessions = await session_count(runtime)
    answer = await act()
    assert answer.status_code == status, answer.text
    if answer.headers.get("content-type", "").startswith("application/json"):
        assert answer.json()["error"]["code"] == code
    else:
        assert "Sign in" in answer.text
        assert 'role="alert"' in answer.text
    rows = await audit_rows(runtime, "auth.sso_failed", provider=slug, reason=code)
    assert len(rows) == audited + 1
    assert rows[-1].success is False
    assert await session_count(runtime) == sessions, "nobody was signed in"
    return answer


def _json(browser: Browser, url: httpx.URL) -> Callable[[], Awaitable[httpx.Response]]:
    async def call() -> httpx.Response:
        return await browser.app.get(
            str(url).removeprefix(BASE), headers={"Accept": "application/json"}
        )

    return call


async def test_an_issuer_that_announces_another_name_is_refused(
    oidc_provider_factory: ProviderFactory,
    api: httpx.AsyncClient,
    root: Account,
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    elsewhere = start_provider(oidc_provider_factory, ["otherhost"], USERS, issuer_host="localhost")
    await add_provider(api, root, elsewhere, slug="otherhost")  # configured as 127.0.0.1
    browser = await new_browser()

    async def start() -> httpx.Response:
        return await browser.app.get(
            "/auth/oidc/otherhost/start", headers={"Accept": "application/json"}
        )

    await _refused(sso_runtime, "otherhost", "sso_wrong_issuer", start)


# A misbehaving or compromised provider (or a token substituted on the way): the real provider's
# next ID token is changed and signed again with its own key (tests/oidc/provider/server.mjs).
TAMPERED = {
    "from another issuer": ({"iss": "https://evil.example"}, "sso_wrong_issuer"),
    "for another audience": ({"aud": "someone-else"}, "sso_wrong_audience"),
    "for several audiences, another azp": (
        {"aud": ["taskloom", "someone-else"], "azp": "someone-else"},
        "sso_wrong_audience",
    ),
    "expired past the 60 s leeway": ({"exp": int(time.time()) - 120}, "sso_token_expired"),
    "without the flow's nonce": ({"nonce": None}, "sso_nonce_mismatch"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
async def test_a_tampered_id_token_is_refused(
    case: str, bad: dict[str, Any], idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    claims, code = TAMPERED[case]
    browser = await new_browser()
    url = await to_callback(browser, "bad", "alice")
    idp.tamper_next(**claims)
    await _refused(sso_runtime, "bad", code, _json(browser, url))


async def test_a_replayed_nonce_is_refused(
    bad: dict[str, Any], idp: OidcProvider, new_browser: Any, sso_runtime: Runtime
) -> None:
    first = await new_browser()
    started = await first.app.get("/auth/oidc/bad/start?next=/ui/")
    earlier_nonce = httpx.URL(started.headers["location"]).params["nonce"]
    url = await sign_in_at_provider(
        first.idp, started.headers["location"], "alice", "alice-password", callback("bad")
    )
    assert (await first.app.get(str(url).removeprefix(BASE))).status_code == 303, "signed in"

    browser = await new_browser()
    url = await to_callback(browser, "bad", "alice")
    idp.tamper_next(nonce=earlier_nonce)
    await _refused(sso_runtime, "bad", "sso_nonce_mismatch", _json(browser, url))


async def test_a_state_that_is_not_this_browsers_is_refused(
    bad: dict[str, Any], new_browser: Any, sso_runtime: Runtime
) -> None:
    browser = await new_browser()
    url = await to_callback(browser, "bad", "alice")
    forged = url.copy_set_param("state", "forged-state")
    await _refused(sso_runtime, "bad", "sso_bad_state", _json(browser, forged))


async def test_a_callback_without_a_started_flow_is_refused(
    bad: dict[str, Any], new_browser: Any, sso_runtime: Runtime
) -> None:
    victim = await new_browser()
    url = await to_callback(victim, "bad", "alice")
    attacker = await new_browser()  # the answer lands in a browser that started nothing
    answer = await _refused(
        sso_runtime,
        "bad",
        "sso_flow_not_started",
        lambda: attacker.app.get(str(url).removeprefix(BASE)),
    )
    assert "not started in this browser" in answer.text


async def test_a_callback_used_twice_is_refused_the_second_time(
    bad: dict[str, Any], new_browser: Any, sso_runtime: Runtime
) -> None:
    browser = await new_browser()
    url = await to_callback(browser, "bad", "alice")
    cookie = browser.app.cookies.get("taskloom_sso_flow")
    assert (await browser.app.get(str(url).removeprefix(BASE))).status_code == 303
    browser.app.cookies.set("taskloom_sso_flow", str(cookie), path="/auth/oidc")
    await _refused(sso_runtime, "bad", "sso_flow_expired", _json(browser, url))


async def test_an_unverified_email_is_refused(
    bad: dict[str, Any], new_browser: Any, sso_runtime: Runtime
) -> None:
    browser = await new_browser()
    url = await to_callback(browser, "bad", "unverified")
    await _refused(sso_runtime, "bad", "sso_email_unverified", _json(browser, url), status=403)


async def test_entra_vouches_with_xms_edov_when_the_provider_names_it(
    api: httpx.AsyncClient,
    root: Account,
    idp: OidcProvider,
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    await add_provider(api, root, idp, slug="entra", email_verified_claim="xms_edov")
    browser = await new_browser()
    assert (await sign_in_with(browser, "entra", "entra")).status_code == 303
    # Without the setting the same claims are not enough.
    browser = await new_browser()
    url = await to_callback(browser, "bad", "entra")
    await _refused(sso_runtime, "bad", "sso_email_unverified", _json(browser, url), status=403)


async def test_a_listed_domain_counts_as_verified(
    api: httpx.AsyncClient, root: Account, idp: OidcProvider, new_browser: Any
) -> None:
    await add_provider(api, root, idp, slug="domains", verified_email_domains=["trusted.example"])
    browser = await new_browser()
    assert (await sign_in_with(browser, "domains", "listed")).status_code == 303


async def test_a_disabled_provider_is_refused_at_the_start(
    api: httpx.AsyncClient,
    root: Account,
    bad: dict[str, Any],
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    await api.patch("/api/admin/sso/providers/bad", json={"enabled": False}, headers=root.headers)
    browser = await new_browser()
    await _refused(
        sso_runtime,
        "bad",
        "sso_provider_disabled",
        lambda: browser.app.get("/auth/oidc/bad/start"),
        status=403,
    )
    page = await api.get("/ui/login")
    assert "/auth/oidc/bad/start" not in page.text


async def test_a_provider_disabled_after_the_start_is_refused_at_the_callback(
    api: httpx.AsyncClient,
    root: Account,
    bad: dict[str, Any],
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    browser = await new_browser()
    url = await to_callback(browser, "bad", "alice")
    await api.patch("/api/admin/sso/providers/bad", json={"enabled": False}, headers=root.headers)
    await _refused(sso_runtime, "bad", "sso_provider_disabled", _json(browser, url), status=403)


async def test_an_error_from_the_provider_is_refused(
    bad: dict[str, Any], new_browser: Any, sso_runtime: Runtime
) -> None:
    browser = await new_browser()
    started = await browser.app.get("/auth/oidc/bad/start")
    state = httpx.URL(started.headers["location"]).params["state"]
    await _refused(
        sso_runtime,
        "bad",
        "sso_provider_error",
        lambda: browser.app.get(f"/auth/oidc/bad/callback?error=access_denied&state={state}"),
    )
