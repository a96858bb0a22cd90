"""Access tokens (short JWTs, `typ=access`), opaque refresh tokens and API keys.

Refresh tokens and API keys are random strings shown once; only their SHA-256 is stored. A
JWT's role claim is never trusted: the role is read from the database (or from a principal
the database gave and Redis vouches for: taskloom/auth/principal_cache.py).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from taskloom.config import Settings
from taskloom.errors import Unauthorized

ALGORITHM = "HS256"
REFRESH_PREFIX = "tlr_"
API_KEY_PREFIX = "tlk_"


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    org_id: uuid.UUID | None
    expires_at: float = 0.0  # the token's `exp` (Unix time)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issue_access_token(
    *, settings: Settings, user_id: uuid.UUID, session_id: uuid.UUID, org_id: uuid.UUID | None
) -> str:
    now = datetime.now(UTC)
    claims = {
        "iss": settings.jwt_issuer,
        "sub": str(user_id),
        "sid": str(session_id),
        "org": str(org_id) if org_id else None,
        "typ": "access",
        "iat": now,
        "exp": now + timedelta(seconds=settings.access_token_ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm=ALGORITHM)


def decode_access_token(*, settings: Settings, token: str) -> AccessClaims:
    """Verify signature, expiry, issuer and type; anything else is a 401."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "sid", "typ", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("access token expired", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
    if claims.get("typ") != "access":
        raise Unauthorized("not an access token", code="invalid_token")
    try:
        org = claims.get("org")
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            session_id=uuid.UUID(claims["sid"]),
            org_id=uuid.UUID(org) if org else None,
            expires_at=float(claims["exp"]),
        )
    except (ValueError, TypeError) as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NewApiKey:
    plaintext: str
    prefix: str
    key_hash: str


def new_api_key() -> NewApiKey:
    prefix = secrets.token_hex(6)
    plaintext = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(plaintext=plaintext, prefix=prefix, key_hash=sha256_hex(plaintext))
