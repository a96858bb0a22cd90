"""CSRF tokens for the UI's forms. SameSite=Lax cookies already stay home on cross-site posts;
the token is the second, independent defence (and the only one in browsers without SameSite).

A signed-in form's token is an HMAC (keyed with JWT_SECRET) of the session id, so it is bound
to this browser's session and survives token refreshes. Before sign-in (the sign-in and
registration forms, against login CSRF) it is an HMAC of a random nonce kept in an HttpOnly
cookie (a signed double-submit cookie). Either way the token cannot be computed without the
server's key, and a token taken from another session does not fit this one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from taskloom.config import Settings

FIELD = "csrf_token"
_NONCE_BYTES = 24


class CsrfRejected(Exception):
    """A state-changing form arrived without a valid token (rendered as a 403 page)."""


def new_nonce() -> str:
    return secrets.token_urlsafe(_NONCE_BYTES)


def is_nonce(value: str | None) -> bool:
    return value is not None and 20 <= len(value) <= 64 and value.isascii()


def token_for(settings: Settings, *, session_id: uuid.UUID | None, nonce: str | None) -> str:
    if session_id is not None:
        base = f"session|{session_id}"
    elif nonce is not None:
        base = f"nonce|{nonce}"
    else:
        raise ValueError("a CSRF token needs a session id or a nonce")
    key = hashlib.sha256(b"taskloom.ui.csrf|" + settings.jwt_secret.get_secret_value().encode())
    return hmac.new(key.digest(), base.encode(), hashlib.sha256).hexdigest()


def check(expected: str, submitted: object) -> None:
    """Raise CsrfRejected unless `submitted` is `expected` (compared in constant time)."""
    if not isinstance(submitted, str) or not hmac.compare_digest(
        submitted.encode(), expected.encode()
    ):
        raise CsrfRejected
