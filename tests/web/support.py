"""Driving the UI's forms with httpx, as a browser without JavaScript would."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable

import httpx

from tests.factories import PASSWORD, Account

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, f"no CSRF token in {page.request.url}:\n{page.text[:500]}"
    return html.unescape(found.group(1))


async def post_form(
    client: httpx.AsyncClient, path: str, data: dict[str, str], *, from_page: str | None = None
) -> httpx.Response:
    """Post `data` with the CSRF token of `from_page` (default: the page posted to)."""
    page = await client.get(from_page or path)
    assert page.status_code == 200, page.text
    return await client.post(path, data={**data, "csrf_token": csrf_of(page)})


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    response = await post_form(client, "/ui/login", {"email": email, "password": password})
    assert response.status_code == 303, response.text
    return response


async def browser_for(
    new_browser: Callable[[], Awaitable[httpx.AsyncClient]], account: Account
) -> httpx.AsyncClient:
    """A new browser signed in to the account's organization (sign-in picks the person's first
    one, which for people made by `add_member` is their own)."""
    browser = await new_browser()
    await sign_in(browser, account.email)
    switched = await post_form(
        browser, "/ui/switch-org", {"org_id": str(account.org_id)}, from_page="/ui/privacy"
    )
    assert switched.status_code == 303, switched.text
    return browser


def text_of(page: httpx.Response) -> str:
    """The page's text without tags, whitespace collapsed (for assertions on what people read)."""
    without_tags = re.sub(r"<[^>]+>", " ", page.text)
    return re.sub(r"\s+", " ", html.unescape(without_tags))


def set_ui_cookie(client: httpx.AsyncClient, name: str, value: str) -> None:
    """Replace (or add) one of the UI's cookies in the client's jar, as a browser holds it."""
    domain = next((c.domain for c in client.cookies.jar if c.path == "/ui"), "testserver.local")
    client.cookies.delete(name)
    client.cookies.set(name, value, domain=domain, path="/ui")
