"""The UI's cookies. All are HttpOnly (no script reads them), SameSite=Lax (not sent on
cross-site form posts), Path=/ui (never sent to /api or /auth, which do not read cookies
anyway) and Secure in production.

- `taskloom_access`: the access token (a JWT, 15 min by default);
- `taskloom_refresh`: the refresh token, rotated when the access token has expired;
- `taskloom_csrf`: a random nonce before sign-in, the base of the sign-in forms' CSRF token.

Handlers do not write cookies themselves: they queue them on the request, and the UI's route
class (web/errors.py) applies them to whatever response goes out, error pages included: a
rotated refresh token must reach the browser even when the page then fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from taskloom.auth.service import TokenPair

ACCESS_COOKIE = "taskloom_access"
REFRESH_COOKIE = "taskloom_refresh"
CSRF_COOKIE = "taskloom_csrf"
COOKIE_PATH = "/ui"


@dataclass(frozen=True)
class _Cookie:
    name: str
    value: str | None  # None: delete
    max_age: int | None = None


def _queue(request: Request, cookie: _Cookie) -> None:
    queued: list[_Cookie] = getattr(request.state, "ui_cookies", [])
    queued = [c for c in queued if c.name != cookie.name] + [cookie]
    request.state.ui_cookies = queued


def queue_tokens(request: Request, pair: TokenPair) -> None:
    _queue(request, _Cookie(ACCESS_COOKIE, pair.access_token, pair.expires_in))
    _queue(request, _Cookie(REFRESH_COOKIE, pair.refresh_token, pair.refresh_expires_in))


def queue_access_token(request: Request, token: str, max_age: int) -> None:
    _queue(request, _Cookie(ACCESS_COOKIE, token, max_age))


def queue_nonce(request: Request, nonce: str | None) -> None:
    """A new pre-sign-in nonce (a browser-session cookie), or None to drop it."""
    _queue(request, _Cookie(CSRF_COOKIE, nonce))


def queue_signed_out(request: Request) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        _queue(request, _Cookie(name, None))


def apply_queued(request: Request, response: Response, *, secure: bool) -> None:
    for cookie in getattr(request.state, "ui_cookies", []):
        if cookie.value is None:
            response.delete_cookie(
                cookie.name, path=COOKIE_PATH, secure=secure, httponly=True, samesite="lax"
            )
        else:
            response.set_cookie(
                cookie.name,
                cookie.value,
                max_age=cookie.max_age,
                path=COOKIE_PATH,
                secure=secure,
                httponly=True,
                samesite="lax",
            )
