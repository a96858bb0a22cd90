"""A provider that does not answer (its process stopped, its port closed) refuses the sign-in
with `sso_provider_unreachable` (502: the JSON error for the API, the sign-in page for a
browser) at the start and at the callback, leaves nothing half-done (no flow kept, no session,
no account), and nothing of the failure is remembered: once the provider is back, the same
sign-in succeeds."""

from __future__ import annotations

from typing import Any

import httpx

from taskloom.runtime import Runtime
from tests.factories import Account
from tests.oidc_provider import ProviderFactory
from tests.sso.conftest import (
    BASE,
    add_provider,
    audit_rows,
    flow_keys,
    person,
    session_count,
    sign_in_with,
    start_provider,
    to_callback,
    user_exists,
)

USERS = {"alice": person("alice"), "frank": person("frank")}
UNREACHABLE = "sso_provider_unreachable"
MESSAGE = "The sign-in provider could not be reached; try again."


def _assert_json_refusal(answer: httpx.Response) -> None:
    assert answer.status_code == 502, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]["code"] == UNREACHABLE
    assert answer.json()["error"]["message"] == MESSAGE


def _assert_page_refusal(answer: httpx.Response) -> None:
    assert answer.status_code == 502, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in answer.text
    assert "The sign-in provider could not be reached" in answer.text
    assert answer.headers["cache-control"] == "no-store"


def _flow_cookie_set(answer: httpx.Response) -> bool:
    return any(
        value.startswith("taskloom_sso_flow=") and "Max-Age=0" not in value
        for value in answer.headers.get_list("set-cookie")
    )


async def test_a_provider_that_does_not_answer_refuses_the_start_and_is_used_again_once_back(
    oidc_provider_factory: ProviderFactory,
    api: httpx.AsyncClient,
    root: Account,
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    idp = start_provider(oidc_provider_factory, ["down"], USERS)
    idp.stop()  # its issuer is now a closed port on this host; nothing of it was cached
    await add_provider(api, root, idp, slug="down")
    flows, sessions = await flow_keys(sso_runtime), await session_count(sso_runtime)
    browser = await new_browser()

    as_api = await browser.app.get(
        "/auth/oidc/down/start?next=/ui/", headers={"Accept": "application/json"}
    )
    _assert_json_refusal(as_api)
    as_cli = await browser.app.get(f"/auth/oidc/down/start?mode=token&code_challenge={'a' * 43}")
    _assert_json_refusal(as_cli)
    as_page = await browser.app.get(
        "/auth/oidc/down/start?next=/ui/", headers={"Accept": "text/html"}
    )
    _assert_page_refusal(as_page)
    assert 'href="/auth/oidc/down/start?next=/ui/"' in as_page.text, "it offers to try again"

    assert not any(_flow_cookie_set(a) for a in (as_api, as_cli, as_page))
    assert await flow_keys(sso_runtime) == flows, "a refused start keeps no flow"
    assert await session_count(sso_runtime) == sessions
    audited = await audit_rows(sso_runtime, "auth.sso_failed", provider="down", reason=UNREACHABLE)
    assert len(audited) == 3

    idp.start()  # the same issuer answers again
    signed_in = await sign_in_with(browser, "down", "alice")
    assert signed_in.status_code == 303, signed_in.text
    assert await session_count(sso_runtime) == sessions + 1
    assert await flow_keys(sso_runtime) == flows, "the callback took its flow"


async def test_a_token_endpoint_that_does_not_answer_refuses_the_callback_leaving_nothing(
    oidc_provider_factory: ProviderFactory,
    api: httpx.AsyncClient,
    root: Account,
    new_browser: Any,
    sso_runtime: Runtime,
) -> None:
    idp = start_provider(oidc_provider_factory, ["gone"], USERS)
    await add_provider(api, root, idp, slug="gone")
    flows, sessions = await flow_keys(sso_runtime), await session_count(sso_runtime)
    api_browser, page_browser = await new_browser(), await new_browser()
    api_url = await to_callback(api_browser, "gone", "frank")
    page_url = await to_callback(page_browser, "gone", "frank")
    assert await flow_keys(sso_runtime) == flows + 2
    idp.stop()  # between the provider's answer and the code's exchange

    as_api = await api_browser.app.get(
        str(api_url).removeprefix(BASE), headers={"Accept": "application/json"}
    )
    _assert_json_refusal(as_api)
    as_page = await page_browser.app.get(str(page_url).removeprefix(BASE))
    _assert_page_refusal(as_page)

    for answer in (as_api, as_page):
        cleared = [c for c in answer.headers.get_list("set-cookie") if "taskloom_sso_flow" in c]
        assert len(cleared) == 1
        assert "Max-Age=0" in cleared[0], "the flow cookie is dropped"
        assert "taskloom_access" not in answer.headers.get("set-cookie", "")
    assert await flow_keys(sso_runtime) == flows, "each flow was taken once, none is left"
    assert await session_count(sso_runtime) == sessions, "nobody was signed in"
    assert not await user_exists(sso_runtime, "frank@corp.example"), "no account was made"
    audited = await audit_rows(sso_runtime, "auth.sso_failed", provider="gone", reason=UNREACHABLE)
    assert len(audited) == 2

    idp.start()  # back on the same port, with a new signing key
    signed_in = await sign_in_with(await new_browser(), "gone", "frank")
    assert signed_in.status_code == 303, signed_in.text
    assert await user_exists(sso_runtime, "frank@corp.example")
    assert await session_count(sso_runtime) == sessions + 1
