"""/ui/password: change your password in the browser, with CSRF, the current password and the
new one twice; other browsers are signed out, this one stays."""

from __future__ import annotations

import httpx

from tests.factories import PASSWORD, Account
from tests.web.conftest import Browser
from tests.web.support import post_form, sign_in, text_of

NEW_PASSWORD = "another long passphrase"


async def test_changing_the_password_in_the_ui_signs_out_the_other_browsers(
    new_browser: Browser, owner: Account, owner_browser: httpx.AsyncClient
) -> None:
    other = await new_browser()
    await sign_in(other, owner.email)

    mismatch = await post_form(
        owner_browser,
        "/ui/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": "x"},
    )
    assert mismatch.status_code == 422
    assert "the two new passwords differ" in text_of(mismatch)

    wrong = await post_form(
        owner_browser,
        "/ui/password",
        {
            "current_password": "nope",
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert wrong.status_code == 400
    assert "the current password is not correct" in text_of(wrong)

    done = await post_form(
        owner_browser,
        "/ui/password",
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/password?notice=password-changed"
    shown = await owner_browser.get(done.headers["location"])
    assert shown.status_code == 200
    assert "Password changed" in text_of(shown)

    # The other browser is sent to the sign-in page; the new password signs in.
    gone = await other.get("/ui/workflows")
    assert gone.status_code in (302, 303, 307)
    assert gone.headers["location"].startswith("/ui/login")
    refused = await post_form(other, "/ui/login", {"email": owner.email, "password": PASSWORD})
    assert refused.status_code == 401
    await sign_in(other, owner.email, NEW_PASSWORD)


async def test_the_password_form_needs_its_csrf_token(owner_browser: httpx.AsyncClient) -> None:
    response = await owner_browser.post(
        "/ui/password",
        data={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 403
